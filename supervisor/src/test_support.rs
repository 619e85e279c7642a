//! Helpers for the unit tests of this crate.

/// Runs the tests whose names match `filter` in a re-run of this test binary, one at a time,
/// with `env` set (the tests themselves return at once without it), and fails unless they pass.
///
/// For tests that must have a process of their own: a session-mode kill takes every child of
/// the supervisor process that is not a conductor, which other tests' children would be; and a
/// test that needs low descriptor numbers free must not share them.
pub fn run_in_own_process(filter: &str, exact: bool, env: &str) {
    let me = std::env::current_exe().expect("own test binary");
    let mut command = std::process::Command::new(me);
    if exact {
        command.arg("--exact");
    }
    let output = command
        .args([filter, "--test-threads=1"])
        .env(env, "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("re-run the test binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success()
            && stdout.contains("test result: ok")
            && !stdout.contains(" 0 passed"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Whether this process is such a re-run (see [`run_in_own_process`]).
pub fn in_own_process(env: &str) -> bool {
    std::env::var_os(env).is_some()
}
