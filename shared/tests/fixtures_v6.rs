//! Golden frames of what protocol version 6 added (`fixtures/v6/*.hex`): the resume plan's
//! action, which reverts the tasks a lost host's death interrupted and then executes. It was
//! appended to `PlanAction`, so its wire number (and every older action's) must never move; a
//! version 5 peer never receives it.

use shared::ids::JobId;
use shared::protocol::codec::{FrameError, decode_body, encode_frame};
use shared::protocol::conductor::{JobPlan, PlanAction, ToConductor};
use shared::spec::JobSpec;

mod common;

fn start(action: PlanAction) -> ToConductor {
    let spec =
        JobSpec::parse("[[task]]\nname = \"a\"\nrun = \"true\"\n", "j.toml", "j").expect("valid");
    ToConductor::Start(Box::new(JobPlan {
        job_id: JobId::parse("0123abcd").expect("valid id"),
        spec,
        action,
        prior: Vec::new(),
    }))
}

#[test]
fn a_version_6_resume_action_decodes_and_encodes_the_same_bytes() {
    let frame = common::fixture("v6", "plan_action_resume");
    let action = PlanAction::Resume { revert: vec![1] };
    assert_eq!(decode_body::<PlanAction>(&frame[4..]).expect("v6"), action);
    assert_eq!(encode_frame(&action).expect("encode"), frame);
}

#[test]
fn a_resume_plan_is_never_sent_to_a_version_5_peer_and_any_other_keeps_its_layout() {
    let resume = start(PlanAction::Resume { revert: vec![0] });
    assert!(matches!(
        resume.encode(5),
        Err(FrameError::NotInVersion { version: 5, .. })
    ));
    assert!(resume.encode(6).is_ok());
    let execute = start(PlanAction::Execute { from: 0 });
    assert_eq!(
        execute.encode(5).expect("v5"),
        execute.encode(6).expect("v6")
    );
}
