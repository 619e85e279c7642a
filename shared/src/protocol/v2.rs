//! Version 2 of the messages whose layout changed in version 3, so that a peer of the previous
//! version is still understood (ARCHITECTURE.md, Protocol). Only the job spec changed: version
//! 3 added [`TaskSpec::revert_retries`], [`TaskSpec::revert_retry_delay`] and
//! [`JobSpec::hooks`], which version 2 does not carry (they read as no retry and no hook). Every
//! other message has the same bytes in both versions.
//!
//! These types are wire mirrors only: decode into them, then convert with `From`.

use crate::ids::JobId;
use crate::limits::Limits;
use crate::protocol::client::{Action, ClientRequest};
use crate::protocol::conductor::{JobPlan, PlanAction, PriorTask, SupervisorHello, ToConductor};
use crate::spec::{Hooks, JobSpec, TaskBody, TaskSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// [`TaskSpec`] as version 2 encodes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpecV2 {
    pub name: String,
    pub body: TaskBody,
    pub timeout: Option<Duration>,
    pub revert_timeout: Option<Duration>,
    pub retries: u32,
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
}

/// [`JobSpec`] as version 2 encodes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpecV2 {
    pub name: String,
    pub timeout: Option<Duration>,
    pub cancel_timeout: Duration,
    pub term_grace: Duration,
    pub env: BTreeMap<String, String>,
    pub worker: Option<String>,
    pub limits: Limits,
    pub heartbeat_timeout: Duration,
    pub kill_unresponsive: bool,
    pub tasks: Vec<TaskSpecV2>,
}

/// [`JobPlan`] as version 2 encodes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPlanV2 {
    pub job_id: JobId,
    pub spec: JobSpecV2,
    pub action: PlanAction,
    pub prior: Vec<PriorTask>,
}

/// [`ToConductor`] as version 2 encodes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToConductorV2 {
    Hello(SupervisorHello),
    Start(Box<JobPlanV2>),
    Ack { seq: u64 },
    Cancel { reason: String },
    PriorResult { task: u32, result: String },
}

/// [`ClientRequest`] as version 2 encodes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequestV2 {
    Hello {
        protocol_version: u32,
    },
    Submit {
        spec: Box<JobSpecV2>,
        source: String,
    },
    List {
        all: bool,
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
    Operate {
        job: String,
        action: Action,
        reason: Option<String>,
        timeout_ms: Option<u64>,
    },
}

impl From<TaskSpecV2> for TaskSpec {
    fn from(v2: TaskSpecV2) -> Self {
        Self {
            name: v2.name,
            body: v2.body,
            timeout: v2.timeout,
            revert_timeout: v2.revert_timeout,
            revert_retries: 0,
            revert_retry_delay: Duration::ZERO,
            retries: v2.retries,
            cwd: v2.cwd,
            env: v2.env,
            max_output: None,
            after: Vec::new(),
            retry_delay: Duration::ZERO,
            retry_backoff: crate::spec::Backoff::default(),
        }
    }
}

impl From<TaskSpec> for TaskSpecV2 {
    /// Drops the revert retries (a version 2 conductor tries a revert once) and the output cap.
    fn from(task: TaskSpec) -> Self {
        Self {
            name: task.name,
            body: task.body,
            timeout: task.timeout,
            revert_timeout: task.revert_timeout,
            retries: task.retries,
            cwd: task.cwd,
            env: task.env,
        }
    }
}

impl From<JobSpecV2> for JobSpec {
    fn from(v2: JobSpecV2) -> Self {
        Self {
            name: v2.name,
            timeout: v2.timeout,
            cancel_timeout: v2.cancel_timeout,
            term_grace: v2.term_grace,
            env: v2.env,
            worker: v2.worker,
            limits: v2.limits,
            heartbeat_timeout: v2.heartbeat_timeout,
            kill_unresponsive: v2.kill_unresponsive,
            tasks: v2.tasks.into_iter().map(TaskSpec::from).collect(),
            hooks: Hooks::default(),
            inherit_env: Vec::new(),
            max_output: None,
            flow: crate::spec::Flow::Linear,
            max_parallel: crate::spec::DEFAULT_MAX_PARALLEL,
            on_failure: crate::spec::OnFailure::Interrupt,
            on_host_loss: crate::spec::OnHostLoss::Hold,
        }
    }
}

impl From<JobSpec> for JobSpecV2 {
    /// Drops the hooks (the daemon's, never the conductor's), `inherit_env` and the output cap:
    /// a version 2 conductor gives its tasks the environment it always did.
    fn from(spec: JobSpec) -> Self {
        Self {
            name: spec.name,
            timeout: spec.timeout,
            cancel_timeout: spec.cancel_timeout,
            term_grace: spec.term_grace,
            env: spec.env,
            worker: spec.worker,
            limits: spec.limits,
            heartbeat_timeout: spec.heartbeat_timeout,
            kill_unresponsive: spec.kill_unresponsive,
            tasks: spec.tasks.into_iter().map(TaskSpecV2::from).collect(),
        }
    }
}

impl From<JobPlanV2> for JobPlan {
    fn from(v2: JobPlanV2) -> Self {
        Self {
            job_id: v2.job_id,
            spec: v2.spec.into(),
            action: v2.action,
            prior: v2.prior,
        }
    }
}

impl From<JobPlan> for JobPlanV2 {
    fn from(plan: JobPlan) -> Self {
        Self {
            job_id: plan.job_id,
            spec: plan.spec.into(),
            action: plan.action,
            prior: plan.prior,
        }
    }
}

impl From<ToConductorV2> for ToConductor {
    fn from(v2: ToConductorV2) -> Self {
        match v2 {
            ToConductorV2::Hello(hello) => Self::Hello(hello),
            ToConductorV2::Start(plan) => Self::Start(Box::new((*plan).into())),
            ToConductorV2::Ack { seq } => Self::Ack { seq },
            ToConductorV2::Cancel { reason } => Self::Cancel { reason },
            ToConductorV2::PriorResult { task, result } => Self::PriorResult { task, result },
        }
    }
}

impl TryFrom<ToConductor> for ToConductorV2 {
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

impl From<ClientRequestV2> for ClientRequest {
    fn from(v2: ClientRequestV2) -> Self {
        use ClientRequestV2 as V2;
        match v2 {
            V2::Hello { protocol_version } => Self::Hello { protocol_version },
            V2::Submit { spec, source } => Self::Submit {
                spec: Box::new((*spec).into()),
                source,
            },
            V2::List { all } => Self::List {
                all,
                query: crate::protocol::client::ListQuery::default(),
            },
            V2::Status { job } => Self::Status { job },
            V2::Cancel { job, timeout_ms } => Self::Cancel { job, timeout_ms },
            V2::Kill { job } => Self::Kill { job },
            V2::Logs { job, task, follow } => Self::Logs { job, task, follow },
            V2::Revert { job } => Self::Revert { job },
            V2::Resume { job } => Self::Resume { job },
            V2::Events => Self::Events,
            V2::Shutdown { cancel } => Self::Shutdown { cancel },
            V2::Operate {
                job,
                action,
                reason,
                timeout_ms,
            } => Self::Operate {
                job,
                action,
                reason,
                timeout_ms,
            },
        }
    }
}

impl From<ClientRequest> for ClientRequestV2 {
    fn from(request: ClientRequest) -> Self {
        use ClientRequest as R;
        match request {
            R::Hello { protocol_version } => Self::Hello { protocol_version },
            R::Submit { spec, source } => Self::Submit {
                spec: Box::new((*spec).into()),
                source,
            },
            R::List { all, .. } => Self::List { all },
            R::Status { job } => Self::Status { job },
            R::Cancel { job, timeout_ms } => Self::Cancel { job, timeout_ms },
            R::Kill { job } => Self::Kill { job },
            R::Logs { job, task, follow } => Self::Logs { job, task, follow },
            // `ClientRequest::encode` refuses it before version 3; never reached there.
            R::LogsSince {
                job, task, follow, ..
            } => Self::Logs { job, task, follow },
            R::Revert { job } => Self::Revert { job },
            R::Resume { job } => Self::Resume { job },
            R::Events => Self::Events,
            R::Shutdown { cancel } => Self::Shutdown { cancel },
            // `ClientRequest::encode` refuses it before version 3; never reached there.
            R::Prune { .. } => Self::List { all: false },
            // `ClientRequest::encode` refuses them before version 4 (`SubmitOnBoard` before
            // version 5, `StatusFromHost` before 9); never reached there.
            R::Hosts
            | R::SubmitWithHostLoss { .. }
            | R::SubmitOnBoard { .. }
            | R::StatusFromHost { .. } => Self::Events,
            R::Operate {
                job,
                action,
                reason,
                timeout_ms,
            } => Self::Operate {
                job,
                action,
                reason,
                timeout_ms,
            },
        }
    }
}
