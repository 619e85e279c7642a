//! Version 3 of the messages whose layout changed in version 4, so that a peer of the previous
//! version is still understood (ARCHITECTURE.md, Protocol). Only the job spec changed: version
//! 4 added flows ([`JobSpec::flow`], [`JobSpec::max_parallel`], [`JobSpec::on_failure`],
//! [`TaskSpec::after`], [`TaskSpec::retry_delay`], [`TaskSpec::retry_backoff`]). A version 3
//! conductor given a graph runs it as a list, in the spec's order, which is a topological one
//! (every task after the tasks it runs after): slower, never out of order. Every other message
//! has the same bytes in both versions.
//!
//! These types are wire mirrors only: decode into them, then convert with `From`.

use crate::ids::JobId;
use crate::limits::Limits;
use crate::protocol::client::{Action, ClientRequest, ListQuery};
use crate::protocol::conductor::{JobPlan, PlanAction, PriorTask, SupervisorHello, ToConductor};
use crate::spec::{
    Backoff, DEFAULT_MAX_PARALLEL, Flow, Hooks, JobSpec, OnFailure, TaskBody, TaskSpec,
};
use crate::state::JobState;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// [`TaskSpec`] as version 3 encodes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpecV3 {
    pub name: String,
    pub body: TaskBody,
    pub timeout: Option<Duration>,
    pub revert_timeout: Option<Duration>,
    pub revert_retries: u32,
    pub revert_retry_delay: Duration,
    pub retries: u32,
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
    pub max_output: Option<u64>,
}

/// [`JobSpec`] as version 3 encodes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpecV3 {
    pub name: String,
    pub timeout: Option<Duration>,
    pub cancel_timeout: Duration,
    pub term_grace: Duration,
    pub env: BTreeMap<String, String>,
    pub inherit_env: Vec<String>,
    pub max_output: Option<u64>,
    pub worker: Option<String>,
    pub limits: Limits,
    pub heartbeat_timeout: Duration,
    pub kill_unresponsive: bool,
    pub tasks: Vec<TaskSpecV3>,
    pub hooks: Hooks,
}

/// [`JobPlan`] as version 3 encodes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPlanV3 {
    pub job_id: JobId,
    pub spec: JobSpecV3,
    pub action: PlanAction,
    pub prior: Vec<PriorTask>,
}

/// [`ToConductor`] as version 3 encodes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToConductorV3 {
    Hello(SupervisorHello),
    Start(Box<JobPlanV3>),
    Ack { seq: u64 },
    Cancel { reason: String },
    PriorResult { task: u32, result: String },
}

/// [`ClientRequest`] as version 3 encodes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequestV3 {
    Hello {
        protocol_version: u32,
    },
    Submit {
        spec: Box<JobSpecV3>,
        source: String,
    },
    List {
        all: bool,
        query: ListQuery,
    },
    Status {
        job: String,
    },
    Cancel {
        job: String,
        timeout_ms: Option<u64>,
    },
    Kill {
        job: String,
    },
    Logs {
        job: String,
        task: Option<String>,
        follow: bool,
    },
    Revert {
        job: String,
    },
    Resume {
        job: String,
    },
    Events,
    Shutdown {
        cancel: bool,
    },
    Prune {
        older_than_ms: u64,
        states: Vec<JobState>,
        vacuum: bool,
    },
    Operate {
        job: String,
        action: Action,
        reason: Option<String>,
        timeout_ms: Option<u64>,
    },
    LogsSince {
        job: String,
        task: Option<String>,
        follow: bool,
        since_ms: i64,
    },
}

impl From<TaskSpecV3> for TaskSpec {
    fn from(v3: TaskSpecV3) -> Self {
        Self {
            name: v3.name,
            body: v3.body,
            timeout: v3.timeout,
            revert_timeout: v3.revert_timeout,
            revert_retries: v3.revert_retries,
            revert_retry_delay: v3.revert_retry_delay,
            retries: v3.retries,
            cwd: v3.cwd,
            env: v3.env,
            max_output: v3.max_output,
            after: Vec::new(),
            retry_delay: Duration::ZERO,
            retry_backoff: Backoff::default(),
        }
    }
}

impl From<TaskSpec> for TaskSpecV3 {
    /// Drops `after` (the spec's order is a topological one) and the retry pacing (a version 3
    /// conductor retries at once).
    fn from(task: TaskSpec) -> Self {
        Self {
            name: task.name,
            body: task.body,
            timeout: task.timeout,
            revert_timeout: task.revert_timeout,
            revert_retries: task.revert_retries,
            revert_retry_delay: task.revert_retry_delay,
            retries: task.retries,
            cwd: task.cwd,
            env: task.env,
            max_output: task.max_output,
        }
    }
}

impl From<JobSpecV3> for JobSpec {
    fn from(v3: JobSpecV3) -> Self {
        Self {
            name: v3.name,
            timeout: v3.timeout,
            cancel_timeout: v3.cancel_timeout,
            term_grace: v3.term_grace,
            env: v3.env,
            inherit_env: v3.inherit_env,
            max_output: v3.max_output,
            worker: v3.worker,
            limits: v3.limits,
            heartbeat_timeout: v3.heartbeat_timeout,
            kill_unresponsive: v3.kill_unresponsive,
            tasks: v3.tasks.into_iter().map(TaskSpec::from).collect(),
            hooks: v3.hooks,
            flow: Flow::Linear,
            max_parallel: DEFAULT_MAX_PARALLEL,
            on_failure: OnFailure::Interrupt,
            on_host_loss: crate::spec::OnHostLoss::Hold,
        }
    }
}

impl From<JobSpec> for JobSpecV3 {
    /// Drops the flow: a version 3 peer runs the tasks one by one in the spec's order.
    fn from(spec: JobSpec) -> Self {
        Self {
            name: spec.name,
            timeout: spec.timeout,
            cancel_timeout: spec.cancel_timeout,
            term_grace: spec.term_grace,
            env: spec.env,
            inherit_env: spec.inherit_env,
            max_output: spec.max_output,
            worker: spec.worker,
            limits: spec.limits,
            heartbeat_timeout: spec.heartbeat_timeout,
            kill_unresponsive: spec.kill_unresponsive,
            tasks: spec.tasks.into_iter().map(TaskSpecV3::from).collect(),
            hooks: spec.hooks,
        }
    }
}

impl From<JobPlanV3> for JobPlan {
    fn from(v3: JobPlanV3) -> Self {
        Self {
            job_id: v3.job_id,
            spec: v3.spec.into(),
            action: v3.action,
            prior: v3.prior,
        }
    }
}

impl From<JobPlan> for JobPlanV3 {
    fn from(plan: JobPlan) -> Self {
        Self {
            job_id: plan.job_id,
            spec: plan.spec.into(),
            action: plan.action,
            prior: plan.prior,
        }
    }
}

impl From<ToConductorV3> for ToConductor {
    fn from(v3: ToConductorV3) -> Self {
        match v3 {
            ToConductorV3::Hello(hello) => Self::Hello(hello),
            ToConductorV3::Start(plan) => Self::Start(Box::new((*plan).into())),
            ToConductorV3::Ack { seq } => Self::Ack { seq },
            ToConductorV3::Cancel { reason } => Self::Cancel { reason },
            ToConductorV3::PriorResult { task, result } => Self::PriorResult { task, result },
        }
    }
}

impl TryFrom<ToConductor> for ToConductorV3 {
    /// The message that this version cannot carry (a fence).
    type Error = ToConductor;

    fn try_from(message: ToConductor) -> Result<Self, ToConductor> {
        Ok(match message {
            ToConductor::Hello(hello) => Self::Hello(hello),
            ToConductor::Start(plan) => Self::Start(Box::new((*plan).into())),
            ToConductor::Ack { seq } => Self::Ack { seq },
            ToConductor::Cancel { reason } => Self::Cancel { reason },
            ToConductor::PriorResult { task, result } => Self::PriorResult { task, result },
            other @ ToConductor::Fence { .. } => return Err(other),
        })
    }
}

/// Both directions of [`ClientRequest`] and [`ClientRequestV3`]: the same variants, the spec
/// converted; `extra` arms map what only the newer version has.
macro_rules! convert_request {
    ($from:ident, $to:ident, $value:expr $(, $extra:pat => $out:expr)*) => {{
        use $from as F;
        match $value {
            F::Hello { protocol_version } => $to::Hello { protocol_version },
            F::Submit { spec, source } => $to::Submit {
                spec: Box::new((*spec).into()),
                source,
            },
            F::List { all, query } => $to::List { all, query },
            F::Status { job } => $to::Status { job },
            F::Cancel { job, timeout_ms } => $to::Cancel { job, timeout_ms },
            F::Kill { job } => $to::Kill { job },
            F::Logs { job, task, follow } => $to::Logs { job, task, follow },
            F::Revert { job } => $to::Revert { job },
            F::Resume { job } => $to::Resume { job },
            F::Events => $to::Events,
            F::Shutdown { cancel } => $to::Shutdown { cancel },
            F::Prune {
                older_than_ms,
                states,
                vacuum,
            } => $to::Prune {
                older_than_ms,
                states,
                vacuum,
            },
            F::Operate {
                job,
                action,
                reason,
                timeout_ms,
            } => $to::Operate {
                job,
                action,
                reason,
                timeout_ms,
            },
            F::LogsSince {
                job,
                task,
                follow,
                since_ms,
            } => $to::LogsSince {
                job,
                task,
                follow,
                since_ms,
            },
            $($extra => $out,)*
        }
    }};
}

impl From<ClientRequestV3> for ClientRequest {
    fn from(v3: ClientRequestV3) -> Self {
        convert_request!(ClientRequestV3, Self, v3)
    }
}

impl From<ClientRequest> for ClientRequestV3 {
    fn from(request: ClientRequest) -> Self {
        // `ClientRequest::encode` refuses `Hosts` and `SubmitWithHostLoss` before version 4,
        // `SubmitOnBoard` before version 5 and `StatusFromHost` before 9; never reached there.
        convert_request!(
            ClientRequest,
            Self,
            request,
            ClientRequest::Hosts
                | ClientRequest::SubmitWithHostLoss { .. }
                | ClientRequest::SubmitOnBoard { .. }
                | ClientRequest::StatusFromHost { .. } => Self::Events
        )
    }
}
