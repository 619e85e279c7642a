//! Native task kinds: a custom conductor binary registers them by name and hands the registry to
//! [`main_with_registry`]; a job file names the binary (`worker = "..."`) and the kind of each
//! native task (`kind = "..."`, with `[task.params]`).

use crate::task::Task;
use std::collections::BTreeMap;

type Factory = Box<dyn Fn(&serde_json::Value) -> Result<Box<dyn Task>, String>>;

/// The native task kinds a conductor binary provides.
#[derive(Default)]
pub struct Registry {
    kinds: BTreeMap<String, Factory>,
}

impl Registry {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `kind`: `build` makes a task from the task's `[task.params]` (an error there
    /// fails the task with that message).
    pub fn register<T, F>(&mut self, kind: &str, build: F) -> &mut Self
    where
        T: Task + 'static,
        F: Fn(&serde_json::Value) -> Result<T, String> + 'static,
    {
        let factory: Factory =
            Box::new(move |params| build(params).map(|task| Box::new(task) as Box<dyn Task>));
        self.kinds.insert(kind.to_owned(), factory);
        self
    }

    /// The registered kinds, sorted.
    #[must_use]
    pub fn kinds(&self) -> Vec<&str> {
        self.kinds.keys().map(String::as_str).collect()
    }

    /// Builds a task of `kind` from its parameters.
    pub fn build(&self, kind: &str, params: &serde_json::Value) -> Result<Box<dyn Task>, String> {
        match self.kinds.get(kind) {
            Some(factory) => factory(params),
            None => Err(format!(
                "this conductor has no task kind {kind:?} (it has: {})",
                self.kinds().join(", ")
            )),
        }
    }
}

/// The `main` of a custom conductor binary: runs the conductor with these native kinds.
/// `--list-kinds` prints them, one per line, for the supervisor to check job files against.
///
/// ```no_run
/// use conductor_worker::{Registry, Task, TaskContext, TaskFuture};
///
/// struct Hello;
/// impl Task for Hello {
///     fn execute<'a>(&'a self, ctx: &'a TaskContext) -> TaskFuture<'a, serde_json::Value> {
///         Box::pin(async move {
///             ctx.log("hello");
///             Ok(serde_json::json!({ "greeted": true }))
///         })
///     }
///     fn revert<'a>(&'a self, _ctx: &'a TaskContext) -> TaskFuture<'a, ()> {
///         Box::pin(async move { Ok(()) })
///     }
/// }
///
/// fn main() -> std::process::ExitCode {
///     let mut registry = Registry::new();
///     registry.register("hello", |_params| Ok(Hello));
///     conductor_worker::main_with_registry(registry)
/// }
/// ```
pub fn main_with_registry(registry: Registry) -> std::process::ExitCode {
    crate::main_with(registry, std::env::args().skip(1))
}
