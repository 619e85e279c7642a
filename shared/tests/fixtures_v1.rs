//! Golden frames of protocol version 1 (`fixtures/v1/*.hex`, encoded by the version 1 code):
//! this build must still read them, and write the same bytes when it speaks version 1, so a
//! conductor or CLI of the previous release keeps working (ARCHITECTURE.md, Protocol).

use shared::ids::JobId;
use shared::protocol::client::{ClientReply, ClientRequest};
use shared::protocol::codec::{decode_body, read_frame};
use shared::protocol::conductor::{
    ConductorHello, FromConductor, JobEvent, JobPlan, Phase, PlanAction, PriorTask, Report,
    StepOutcome, SupervisorHello, ToConductor,
};
use shared::protocol::{MIN_PROTOCOL_VERSION, negotiate};
use shared::spec::JobSpec;
use shared::state::{ExecOutcome, TaskState};

mod common;

/// The frame (header included) stored in `fixtures/v1/NAME.hex`.
fn fixture(name: &str) -> Vec<u8> {
    common::fixture("v1", name)
}

fn body(frame: &[u8]) -> &[u8] {
    let len = u32::from_be_bytes(frame[..4].try_into().expect("header")) as usize;
    assert_eq!(frame.len(), 4 + len, "one whole frame");
    &frame[4..]
}

fn job() -> JobId {
    JobId::parse("0123abcd").expect("valid id")
}

/// The job file the version 1 fixtures were made from.
fn spec() -> JobSpec {
    JobSpec::parse(
        "name = \"deploy\"\ntimeout = \"10m\"\ncancel_timeout = \"20s\"\n[env]\nREGION = \"eu\"\n[limits]\nnofile = 256\n[[task]]\nname = \"fetch\"\nrun = \"echo hi\"\nrevert = [\"rm\", \"-f\", \"/tmp/x\"]\ntimeout = \"1m\"\nretries = 2\ncwd = \"/tmp\"\nenv = { MODE = \"fast\" }\n[[task]]\nname = \"second\"\nrun = [\"true\"]\n",
        "job.toml",
        "job",
    )
    .expect("valid")
}

fn plan() -> JobPlan {
    JobPlan {
        job_id: job(),
        spec: spec(),
        action: PlanAction::Revert { order: vec![1, 0] },
        prior: vec![
            PriorTask {
                state: TaskState::Success,
                attempts: 1,
                exec_outcome: Some(ExecOutcome::Success),
                result: "v1.2".into(),
            },
            PriorTask::fresh(),
        ],
    }
}

#[tokio::test]
async fn version_1_hellos_still_decode_in_every_version() {
    let hello = fixture("to_conductor_hello");
    let expected = ToConductor::Hello(SupervisorHello {
        protocol_version: 1,
        job_id: job(),
    });
    let mut reader = &hello[..];
    let read: Option<ToConductor> = read_frame(&mut reader).await.expect("current layout");
    assert_eq!(read.as_ref(), Some(&expected));
    assert_eq!(ToConductor::decode_v1(body(&hello)).expect("v1"), expected);
    assert_eq!(expected.encode(1).expect("encode"), hello);

    let hello = fixture("from_conductor_hello");
    let decoded: FromConductor = decode_body(body(&hello)).expect("decode");
    assert_eq!(
        decoded,
        FromConductor::Hello(ConductorHello {
            protocol_version: 1,
            job_id: job(),
            pid: 4242,
            has_plan: true,
        })
    );

    let hello = fixture("client_request_hello");
    let request = ClientRequest::Hello {
        protocol_version: 1,
    };
    assert_eq!(
        decode_body::<ClientRequest>(body(&hello)).expect("v2"),
        request
    );
    assert_eq!(ClientRequest::decode_v1(body(&hello)).expect("v1"), request);
    let reply = fixture("client_reply_hello");
    assert_eq!(
        decode_body::<ClientReply>(body(&reply)).expect("decode"),
        ClientReply::Hello {
            protocol_version: 1
        }
    );
    assert_eq!(negotiate(1), Some(MIN_PROTOCOL_VERSION));
}

#[test]
fn a_version_1_plan_decodes_and_encodes_the_same_bytes() {
    let start = fixture("to_conductor_start");
    let expected = ToConductor::Start(Box::new(plan()));
    assert_eq!(ToConductor::decode_v1(body(&start)).expect("v1"), expected);
    assert_eq!(ToConductor::decoder(1)(body(&start)).expect("v1"), expected);
    assert_eq!(expected.encode(1).expect("encode"), start);
    // Version 2 carries the revert timeouts, so its plan is another layout.
    assert_ne!(expected.encode(2).expect("encode"), start);
}

#[test]
fn a_version_1_submit_decodes_and_encodes_the_same_bytes() {
    let submit = fixture("client_request_submit");
    let expected = ClientRequest::Submit {
        spec: Box::new(spec()),
        source: "/srv/jobs/deploy.toml".into(),
    };
    assert_eq!(
        ClientRequest::decoder(1)(body(&submit)).expect("v1"),
        expected
    );
    assert_eq!(expected.encode(1).expect("encode"), submit);
}

#[test]
fn version_1_reports_have_the_same_layout() {
    let report = fixture("from_conductor_report");
    assert_eq!(
        decode_body::<FromConductor>(body(&report)).expect("decode"),
        FromConductor::Report(Report {
            seq: 7,
            event: JobEvent::TaskFinished {
                task: 1,
                phase: Phase::Revert,
                outcome: StepOutcome::Failure {
                    reason: "exited with status 3".into(),
                    cancelled: false,
                    result: "partial".into(),
                },
            },
        })
    );
}
