//! Version 1 of the messages whose layout changed in version 2, so that a peer of the previous
//! version is still understood (ARCHITECTURE.md, Protocol). Only the job spec changed: version 2
//! added [`TaskSpec::revert_timeout`], which version 1 does not carry (it reads as `None`: the
//! job's `cancel_timeout`). Every other message has the same bytes in both versions.
//!
//! These types are wire mirrors only: decode into them, then convert with `From`.

use crate::ids::JobId;
use crate::limits::Limits;
use crate::protocol::client::{Action, ClientRequest};
use crate::protocol::conductor::{JobPlan, PlanAction, PriorTask, SupervisorHello, ToConductor};
use crate::spec::{JobSpec, TaskBody, TaskSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// [`TaskSpec`] as version 1 encodes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpecV1 {
    pub name: String,
    pub body: TaskBody,
    pub timeout: Option<Duration>,
    pub retries: u32,
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
}

/// [`JobSpec`] as version 1 encodes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpecV1 {
    pub name: String,
    pub timeout: Option<Duration>,
    pub cancel_timeout: Duration,
    pub term_grace: Duration,
    pub env: BTreeMap<String, String>,
    pub worker: Option<String>,
    pub limits: Limits,
    pub heartbeat_timeout: Duration,
    pub kill_unresponsive: bool,
    pub tasks: Vec<TaskSpecV1>,
}

/// [`JobPlan`] as version 1 encodes it (prior results inline).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPlanV1 {
    pub job_id: JobId,
    pub spec: JobSpecV1,
    pub action: PlanAction,
    pub prior: Vec<PriorTask>,
}

/// [`ToConductor`] as version 1 encodes it (no `PriorResult`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToConductorV1 {
    Hello(SupervisorHello),
    Start(Box<JobPlanV1>),
    Ack { seq: u64 },
    Cancel { reason: String },
}

/// [`ClientRequest`] as version 1 encodes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequestV1 {
    Hello {
        protocol_version: u32,
    },
    Submit {
        spec: Box<JobSpecV1>,
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
}

impl From<TaskSpecV1> for TaskSpec {
    fn from(v1: TaskSpecV1) -> Self {
        Self {
            name: v1.name,
            body: v1.body,
            timeout: v1.timeout,
            revert_timeout: None,
            revert_retries: 0,
            revert_retry_delay: std::time::Duration::ZERO,
            retries: v1.retries,
            cwd: v1.cwd,
            env: v1.env,
            max_output: None,
            after: Vec::new(),
            retry_delay: Duration::ZERO,
            retry_backoff: crate::spec::Backoff::default(),
        }
    }
}

impl From<TaskSpec> for TaskSpecV1 {
    /// Drops `revert_timeout`: a version 1 conductor bounds no revert.
    fn from(task: TaskSpec) -> Self {
        Self {
            name: task.name,
            body: task.body,
            timeout: task.timeout,
            retries: task.retries,
            cwd: task.cwd,
            env: task.env,
        }
    }
}

impl From<JobSpecV1> for JobSpec {
    fn from(v1: JobSpecV1) -> Self {
        Self {
            name: v1.name,
            timeout: v1.timeout,
            cancel_timeout: v1.cancel_timeout,
            term_grace: v1.term_grace,
            env: v1.env,
            inherit_env: Vec::new(),
            max_output: None,
            worker: v1.worker,
            limits: v1.limits,
            heartbeat_timeout: v1.heartbeat_timeout,
            kill_unresponsive: v1.kill_unresponsive,
            tasks: v1.tasks.into_iter().map(TaskSpec::from).collect(),
            hooks: crate::spec::Hooks::default(),
            flow: crate::spec::Flow::Linear,
            max_parallel: crate::spec::DEFAULT_MAX_PARALLEL,
            on_failure: crate::spec::OnFailure::Interrupt,
            on_host_loss: crate::spec::OnHostLoss::Hold,
        }
    }
}

impl From<JobSpec> for JobSpecV1 {
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
            tasks: spec.tasks.into_iter().map(TaskSpecV1::from).collect(),
        }
    }
}

impl From<JobPlanV1> for JobPlan {
    fn from(v1: JobPlanV1) -> Self {
        Self {
            job_id: v1.job_id,
            spec: v1.spec.into(),
            action: v1.action,
            prior: v1.prior,
        }
    }
}

impl From<JobPlan> for JobPlanV1 {
    fn from(plan: JobPlan) -> Self {
        Self {
            job_id: plan.job_id,
            spec: plan.spec.into(),
            action: plan.action,
            prior: plan.prior,
        }
    }
}

impl From<ToConductorV1> for ToConductor {
    fn from(v1: ToConductorV1) -> Self {
        match v1 {
            ToConductorV1::Hello(hello) => Self::Hello(hello),
            ToConductorV1::Start(plan) => Self::Start(Box::new((*plan).into())),
            ToConductorV1::Ack { seq } => Self::Ack { seq },
            ToConductorV1::Cancel { reason } => Self::Cancel { reason },
        }
    }
}

impl TryFrom<ToConductor> for ToConductorV1 {
    /// The message that version 1 cannot carry.
    type Error = ToConductor;

    fn try_from(message: ToConductor) -> Result<Self, ToConductor> {
        Ok(match message {
            ToConductor::Hello(hello) => Self::Hello(hello),
            ToConductor::Start(plan) => Self::Start(Box::new((*plan).into())),
            ToConductor::Ack { seq } => Self::Ack { seq },
            ToConductor::Cancel { reason } => Self::Cancel { reason },
            other @ (ToConductor::PriorResult { .. } | ToConductor::Fence { .. }) => {
                return Err(other);
            }
        })
    }
}

impl From<ClientRequestV1> for ClientRequest {
    fn from(v1: ClientRequestV1) -> Self {
        use ClientRequestV1 as V1;
        match v1 {
            V1::Hello { protocol_version } => Self::Hello { protocol_version },
            V1::Submit { spec, source } => Self::Submit {
                spec: Box::new((*spec).into()),
                source,
            },
            V1::List { all } => Self::List {
                all,
                query: crate::protocol::client::ListQuery::default(),
            },
            V1::Status { job } => Self::Status { job },
            V1::Cancel { job, timeout_ms } => Self::Cancel { job, timeout_ms },
            V1::Kill { job } => Self::Kill { job },
            V1::Logs { job, task, follow } => Self::Logs { job, task, follow },
            V1::Revert { job } => Self::Revert { job },
            V1::Resume { job } => Self::Resume { job },
            V1::Events => Self::Events,
            V1::Shutdown { cancel } => Self::Shutdown { cancel },
        }
    }
}

/// A request that version 1 has no word for comes back as the error.
impl TryFrom<ClientRequest> for ClientRequestV1 {
    type Error = ClientRequest;

    fn try_from(request: ClientRequest) -> Result<Self, ClientRequest> {
        use ClientRequest as R;
        Ok(match request {
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
            other @ (R::Prune { .. }
            | R::Hosts
            | R::SubmitWithHostLoss { .. }
            | R::SubmitOnBoard { .. }
            | R::StatusFromHost { .. }) => {
                return Err(other);
            }
            R::Operate {
                job,
                action,
                timeout_ms,
                ..
            } => match action {
                Action::Cancel => Self::Cancel { job, timeout_ms },
                Action::Kill => Self::Kill { job },
                Action::Revert => Self::Revert { job },
                Action::Resume => Self::Resume { job },
                // `ClientRequest::encode` refuses these in version 1; never reached there.
                Action::Pause | Action::Continue => Self::Status { job },
            },
        })
    }
}
