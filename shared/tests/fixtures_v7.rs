//! Golden frames of what protocol version 7 added (`fixtures/v7/*.hex`): another host's job
//! change in `events`. It was appended to `ClientReply`, so its wire number (and every older
//! reply's) must never move; a version 6 client never receives it.

use shared::ids::JobId;
use shared::protocol::client::{ClientReply, Event};
use shared::protocol::codec::{decode_body, encode_frame};

mod common;

#[test]
fn a_version_7_hosted_event_decodes_and_encodes_the_same_bytes() {
    let frame = common::fixture("v7", "client_reply_hosted_event");
    let reply = ClientReply::HostedEvent {
        host: "a".into(),
        event: Event {
            job: JobId::parse("0123abcd").expect("valid id"),
            task: None,
            state: "cancelled".into(),
            at_ms: 1_764_000_000_000,
            by: None,
        },
    };
    assert_eq!(decode_body::<ClientReply>(&frame[4..]).expect("v7"), reply);
    assert_eq!(encode_frame(&reply).expect("encode"), frame);
}
