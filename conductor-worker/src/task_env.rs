//! The environment a task process starts with. The conductor inherits the daemon's whole
//! environment (`SUPERVISOR_*`, `RUST_LOG`, systemd's variables, any secret the daemon was given);
//! none of it reaches a task unless listed here (ARCHITECTURE.md, Security):
//!
//! 1. from the conductor's environment, only [`ALLOWED`] and the `LC_*` variables;
//! 2. the login of the user the task runs as (HOME, USER, LOGNAME, SHELL from its password
//!    entry); with `[limits] user`, PATH is [`USER_PATH`] (or [`ROOT_PATH`] for root) instead of
//!    the conductor's;
//! 3. the job's `inherit_env` names, from the conductor's environment;
//! 4. the job's `[env]`, then the task's `env`;
//! 5. what the conductor sets for the step (`JOB_ID`, `TASK_NAME`, in a revert `TASK_RESULT` and
//!    `TASK_OUTCOME`), and the results of every task the task runs after, directly or not, as
//!    `RESULT_<NAME>` ([`result_vars`]; in a linear job every earlier task).
//!
//! Each later source overrides the earlier ones.

use crate::limits::Login;
use std::collections::BTreeMap;
use std::ffi::OsString;

/// The variables a task gets from the conductor's environment by default (and every `LC_*`).
pub const ALLOWED: [&str; 4] = ["PATH", "LANG", "TZ", "TERM"];

/// PATH of a task switched to a user other than root (`[limits] user`).
pub const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// PATH of a task switched to root.
pub const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whether the conductor's variable `name` passes to tasks by default.
#[must_use]
pub fn is_allowed(name: &str) -> bool {
    ALLOWED.contains(&name) || name.starts_with("LC_")
}

/// What builds a task's environment, besides the step's own variables.
pub struct EnvSources<'a> {
    /// The conductor's environment (`std::env::vars_os()`); variables that are not UTF-8 are
    /// left out.
    pub conductor: Vec<(OsString, OsString)>,
    /// The login of the user the task runs as, when known.
    pub login: Option<&'a Login>,
    /// Whether the task switches to another user (`[limits] user`).
    pub switches_user: bool,
    /// The job's `inherit_env`.
    pub inherit: &'a [String],
    /// The job's `[env]`.
    pub job: &'a BTreeMap<String, String>,
    /// The task's `env`.
    pub task: &'a BTreeMap<String, String>,
}

/// The task's environment, without the step's variables (the conductor adds those per step).
#[must_use]
pub fn task_env(sources: &EnvSources<'_>) -> BTreeMap<String, String> {
    let conductor: BTreeMap<String, String> = sources
        .conductor
        .iter()
        .filter_map(|(k, v)| Some((k.to_str()?.to_owned(), v.to_str()?.to_owned())))
        .collect();
    let mut env: BTreeMap<String, String> = conductor
        .iter()
        .filter(|(name, _)| is_allowed(name))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(login) = sources.login {
        env.insert("HOME".into(), login.home.clone());
        env.insert("USER".into(), login.name.clone());
        env.insert("LOGNAME".into(), login.name.clone());
        env.insert("SHELL".into(), login.shell.clone());
    }
    if sources.switches_user {
        let is_root = sources.login.is_some_and(|l| l.name == "root");
        let path = if is_root { ROOT_PATH } else { USER_PATH };
        env.insert("PATH".into(), path.into());
    }
    for name in sources.inherit {
        if let Some(value) = conductor.get(name) {
            env.insert(name.clone(), value.clone());
        }
    }
    env.extend(sources.job.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(sources.task.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// The most bytes of `RESULT_*` variables one step gets (names and values). Each result is
/// bounded already (`MAX_RESULT_LEN`), but a task after hundreds of others could otherwise meet
/// the kernel's bound on a process's environment and not start at all.
pub const MAX_RESULTS_ENV: usize = 512 * 1024;

/// The `RESULT_<NAME>` variables of a step from `inputs` (the results of the tasks it runs
/// after, nearest first), within [`MAX_RESULTS_ENV`]; the names of the tasks left out
/// (farthest first to go) as the second value, which the step gets as `RESULTS_OMITTED`.
#[must_use]
pub fn result_vars(inputs: &[(String, String)]) -> (Vec<(String, String)>, Vec<String>) {
    let mut used = 0usize;
    let mut vars = Vec::with_capacity(inputs.len());
    let mut omitted = Vec::new();
    for (name, result) in inputs {
        let var = shared::spec::result_var(name);
        let size = var.len() + result.len() + 2;
        if used + size > MAX_RESULTS_ENV {
            omitted.push(name.clone());
            continue;
        }
        used += size;
        vars.push((var, result.clone()));
    }
    (vars, omitted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_become_variables_within_a_bound() {
        let inputs = vec![
            ("build-app".to_owned(), "v1.2".to_owned()),
            ("big".to_owned(), "x".repeat(MAX_RESULTS_ENV)),
            ("db.migrate".to_owned(), String::new()),
        ];
        let (vars, omitted) = result_vars(&inputs);
        assert_eq!(
            vars,
            [
                ("RESULT_BUILD_APP".to_owned(), "v1.2".to_owned()),
                ("RESULT_DB_MIGRATE".to_owned(), String::new()),
            ]
        );
        assert_eq!(omitted, ["big"]);
    }

    fn conductor() -> Vec<(OsString, OsString)> {
        [
            ("PATH", "/opt/bin:/usr/bin"),
            ("LANG", "C.UTF-8"),
            ("LC_TIME", "en_GB.UTF-8"),
            ("TERM", "xterm"),
            ("SUPERVISOR_LOG", "debug"),
            ("RUST_LOG", "trace"),
            ("INVOCATION_ID", "abc"),
            ("NOTIFY_SOCKET", "/run/systemd/notify"),
            ("SECRET_TOKEN", "s3cret"),
            ("HTTP_PROXY", "http://proxy:3128"),
            ("HOME", "/root"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
    }

    fn deploy() -> Login {
        Login {
            name: "deploy".into(),
            home: "/home/deploy".into(),
            shell: "/bin/bash".into(),
        }
    }

    #[test]
    fn only_the_allow_list_passes_by_default() {
        let (job, task) = (BTreeMap::new(), BTreeMap::new());
        let env = task_env(&EnvSources {
            conductor: conductor(),
            login: None,
            switches_user: false,
            inherit: &[],
            job: &job,
            task: &task,
        });
        let names: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(names, ["LANG", "LC_TIME", "PATH", "TERM"]);
        assert_eq!(env["PATH"], "/opt/bin:/usr/bin");
    }

    #[test]
    fn a_switched_user_gets_its_login_and_a_sane_path() {
        let login = deploy();
        let job = BTreeMap::from([("REGION".to_owned(), "eu".to_owned())]);
        let task = BTreeMap::from([("REGION".to_owned(), "us".to_owned())]);
        let inherit = ["HTTP_PROXY".to_owned(), "ABSENT".to_owned()];
        let env = task_env(&EnvSources {
            conductor: conductor(),
            login: Some(&login),
            switches_user: true,
            inherit: &inherit,
            job: &job,
            task: &task,
        });
        assert_eq!(env["HOME"], "/home/deploy");
        assert_eq!(env["USER"], "deploy");
        assert_eq!(env["LOGNAME"], "deploy");
        assert_eq!(env["SHELL"], "/bin/bash");
        assert_eq!(env["PATH"], USER_PATH);
        assert_eq!(env["HTTP_PROXY"], "http://proxy:3128");
        assert_eq!(env["REGION"], "us");
        for hidden in [
            "SUPERVISOR_LOG",
            "RUST_LOG",
            "INVOCATION_ID",
            "NOTIFY_SOCKET",
            "SECRET_TOKEN",
            "ABSENT",
        ] {
            assert!(!env.contains_key(hidden), "{hidden}");
        }
    }
}
