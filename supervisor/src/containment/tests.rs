//! Cgroup tests on the real hierarchy (root, cgroup v2); see [`super::test_cgroup`] for when
//! they skip.

use super::*;
use std::time::Duration;

/// Starts `sleep 60` and moves it into `cgroup`.
fn sleeper_in(cgroup: &JobCgroup) -> std::process::Child {
    let child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("spawn sleep");
    std::fs::write(cgroup.path.join("cgroup.procs"), child.id().to_string())
        .expect("move the sleeper into the cgroup");
    child
}

#[tokio::test]
async fn wait_empty_sees_the_cgroup_empty_after_a_kill() {
    let Some(scratch) = test_cgroup("wait") else {
        return;
    };
    let cgroup = scratch.cgroup();
    assert!(cgroup.wait_empty(Duration::ZERO).await, "empty at first");
    let mut child = sleeper_in(cgroup);
    assert!(cgroup.is_populated());
    assert!(
        !cgroup.wait_empty(Duration::from_millis(50)).await,
        "a populated cgroup is not empty at the deadline"
    );
    cgroup.kill();
    assert!(
        cgroup.wait_empty(EMPTY_TIMEOUT).await,
        "inotify reports populated 0 after cgroup.kill"
    );
    child.wait().expect("reap");
}

#[tokio::test]
async fn create_job_refuses_a_populated_leftover() {
    let Some(scratch) = test_cgroup("leftover") else {
        return;
    };
    let containment = Containment::Cgroup {
        base: scratch.path().to_path_buf(),
        controllers: BTreeSet::new(),
        job_prefix: "job-".to_owned(),
    };
    let id = JobId::parse("0123abcd").expect("job id");
    let limits = Limits::default();
    let first = containment
        .create_job(&id, &limits)
        .expect("create")
        .expect("cgroup mode");
    // An empty leftover is taken again.
    let again = containment
        .create_job(&id, &limits)
        .expect("an empty leftover is reused")
        .expect("cgroup mode");
    assert_eq!(again.path, first.path);
    let mut child = sleeper_in(&first);
    let err = containment
        .create_job(&id, &limits)
        .expect_err("a populated leftover is refused");
    assert!(
        format!("{err:#}").contains("still holds processes"),
        "{err:#}"
    );
    assert!(first.kill_and_remove().await, "killed and removed");
    child.wait().expect("reap");
}

/// The cgroup-mode check of a reported `TaskSpawned` pid: a process in the job's cgroup is
/// inside it, one elsewhere (this test process) is not.
#[test]
fn cgroup_of_tells_a_process_inside_the_job_from_one_outside() {
    let Some(scratch) = test_cgroup("of") else {
        return;
    };
    let cgroup = scratch.cgroup();
    let mut child = sleeper_in(cgroup);
    let pid = i32::try_from(child.id()).expect("pid");
    let inside = cgroup_of(pid).expect("the sleeper's cgroup");
    assert!(cgroup.contains(&inside), "{}", inside.display());
    let me = i32::try_from(std::process::id()).expect("pid");
    let outside = cgroup_of(me).expect("our cgroup");
    assert!(!cgroup.contains(&outside), "{}", outside.display());
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_board_hosts_job_cgroups_carry_its_name_as_one_path_component() {
    assert_eq!(super::board_job_prefix("a"), "job-a-");
    assert_eq!(
        super::board_job_prefix("web-1.example"),
        "job-web-1.example-"
    );
    assert_eq!(super::board_job_prefix("../x y"), "job-.._x_y-");
    let session = Containment::Session {
        reason: "test".into(),
    };
    assert!(
        session
            .on_board_as("a")
            .job_cgroup(&JobId::from_random(1))
            .is_none()
    );
    let cgroup = Containment::Cgroup {
        base: "/sys/fs/cgroup/sv".into(),
        controllers: BTreeSet::new(),
        job_prefix: "job-".to_owned(),
    }
    .on_board_as("b");
    let path = cgroup.job_cgroup(&JobId::from_random(0xab)).map(|c| c.path);
    assert_eq!(path, Some("/sys/fs/cgroup/sv/job-b-000000ab".into()));
}
