//! Golden frames of the messages protocol version 5 added (`fixtures/v5/*.hex`): the fence a
//! supervisor on a job board delegates to its conductor, and the report of a conductor that
//! fenced itself. Both were appended to their enums, so their wire numbers (and every older
//! message's) must never move (ARCHITECTURE.md, The job board).

use shared::protocol::codec::{decode_body, encode_frame};
use shared::protocol::conductor::{FromConductor, JobEvent, Report, ToConductor};

mod common;

/// The frame (header included) stored in `fixtures/v5/NAME.hex`.
fn fixture(name: &str) -> Vec<u8> {
    common::fixture("v5", name)
}

#[test]
fn a_version_5_fence_decodes_and_encodes_the_same_bytes() {
    let frame = fixture("to_conductor_fence");
    let fence = ToConductor::Fence { run_for_ms: 7000 };
    assert_eq!(ToConductor::decoder(5)(&frame[4..]).expect("v5"), fence);
    assert_eq!(fence.encode(5).expect("encode"), frame);
}

#[test]
fn a_version_5_fenced_report_decodes_and_encodes_the_same_bytes() {
    let frame = fixture("from_conductor_report_fenced");
    let report = FromConductor::Report(Report {
        seq: 3,
        event: JobEvent::Fenced {
            reason: "fenced: supervisor silent".into(),
        },
    });
    assert_eq!(
        decode_body::<FromConductor>(&frame[4..]).expect("v5"),
        report
    );
    assert_eq!(encode_frame(&report).expect("encode"), frame);
}
