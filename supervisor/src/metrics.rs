//! The daemon's metrics, in Prometheus's exposition (the OpenMetrics text format, which
//! Prometheus reads), served by `supervisor daemon --metrics ADDR` at `/metrics`.
//!
//! Counters and histograms are kept in one process-wide [`Metrics`] that the job actors bump as
//! things happen (an atomic add each: what metrics cost when nobody scrapes); the gauges (jobs
//! by state, live and unresponsive conductors, the store's size) are read at scrape time. The
//! names, for dashboards, are listed in the README (Metrics).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use shared::state::JobState;
use std::sync::LazyLock;
use std::time::Duration;

/// A job state, as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

/// Why a cancel or a kill happened, as a label (`operator`, `job timeout`, `kill timer`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    pub cause: String,
}

/// How a revert ended, as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// Every metric the daemon exposes.
pub struct Metrics {
    registry: Registry,
    pub jobs: Family<StateLabel, Gauge>,
    pub jobs_ended: Family<StateLabel, Counter>,
    pub tasks_started: Counter,
    pub tasks_failed: Counter,
    pub reverts: Family<OutcomeLabel, Counter>,
    pub reverts_skipped: Counter,
    pub cancels: Family<CauseLabel, Counter>,
    pub kills: Family<CauseLabel, Counter>,
    pub cancel_to_end: Histogram,
    pub kill_to_gone: Histogram,
    pub live_conductors: Gauge,
    pub unresponsive_conductors: Gauge,
    pub paused_jobs: Gauge,
    pub store_bytes: Gauge,
    /// Warm conductors ready now (ARCHITECTURE.md, Warm conductors).
    pub warm_pool_size: Gauge,
    /// Job starts that could use the pool and found a warm conductor.
    pub warm_hits: Counter,
    /// Job starts that could use the pool and found it empty (a cold spawn).
    pub warm_misses: Counter,
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("supervisor");
        let buckets = || Histogram::new(exponential_buckets(0.01, 2.0, 15));
        let metrics = Self {
            registry: Registry::default(),
            jobs: Family::default(),
            jobs_ended: Family::default(),
            tasks_started: Counter::default(),
            tasks_failed: Counter::default(),
            reverts: Family::default(),
            reverts_skipped: Counter::default(),
            cancels: Family::default(),
            kills: Family::default(),
            cancel_to_end: buckets(),
            kill_to_gone: buckets(),
            live_conductors: Gauge::default(),
            unresponsive_conductors: Gauge::default(),
            paused_jobs: Gauge::default(),
            store_bytes: Gauge::default(),
            warm_pool_size: Gauge::default(),
            warm_hits: Counter::default(),
            warm_misses: Counter::default(),
        };
        registry.register("jobs", "Jobs in the store, by state", metrics.jobs.clone());
        registry.register(
            "jobs_ended",
            "Jobs that reached a terminal state, by state",
            metrics.jobs_ended.clone(),
        );
        registry.register(
            "tasks_started",
            "Task executes started (each attempt)",
            metrics.tasks_started.clone(),
        );
        registry.register(
            "tasks_failed",
            "Task executes that failed (each attempt)",
            metrics.tasks_failed.clone(),
        );
        registry.register(
            "reverts",
            "Reverts run, by outcome (succeeded, failed; each attempt)",
            metrics.reverts.clone(),
        );
        registry.register(
            "reverts_skipped",
            "Reverts left pending by a kill or a crash",
            metrics.reverts_skipped.clone(),
        );
        registry.register("cancels", "Soft cancels, by cause", metrics.cancels.clone());
        registry.register("kills", "Hard kills, by cause", metrics.kills.clone());
        registry.register(
            "cancel_to_end_seconds",
            "From a cancel to the job's end",
            metrics.cancel_to_end.clone(),
        );
        registry.register(
            "kill_to_gone_seconds",
            "From a hard kill to every process of the job gone",
            metrics.kill_to_gone.clone(),
        );
        registry.register(
            "live_conductors",
            "Conductors supervised now",
            metrics.live_conductors.clone(),
        );
        registry.register(
            "unresponsive_conductors",
            "Live jobs whose conductor is unresponsive",
            metrics.unresponsive_conductors.clone(),
        );
        registry.register(
            "paused_jobs",
            "Live jobs paused now",
            metrics.paused_jobs.clone(),
        );
        registry.register(
            "store_bytes",
            "Size of the store (state.db and its WAL, or its schema's tables in PostgreSQL)",
            metrics.store_bytes.clone(),
        );
        registry.register(
            "warm_pool_size",
            "Warm conductors ready for a job now",
            metrics.warm_pool_size.clone(),
        );
        registry.register(
            "warm_hits",
            "Job starts that took a warm conductor",
            metrics.warm_hits.clone(),
        );
        registry.register(
            "warm_misses",
            "Job starts that could use a warm conductor and found none (a cold spawn)",
            metrics.warm_misses.clone(),
        );
        registry.register(
            "build",
            "The daemon's build",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// The exposition of every metric, as served at `/metrics`.
    #[must_use]
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %err, "metrics: cannot encode");
        }
        text
    }

    /// A job ended in `state`.
    pub fn job_ended(&self, state: JobState) {
        self.jobs_ended.get_or_create(&state_label(state)).inc();
    }

    pub fn cancelled(&self, cause: &str) {
        self.cancels
            .get_or_create(&CauseLabel {
                cause: cause.to_owned(),
            })
            .inc();
    }

    pub fn killed(&self, cause: &str) {
        self.kills
            .get_or_create(&CauseLabel {
                cause: cause.to_owned(),
            })
            .inc();
    }

    pub fn reverted(&self, ok: bool) {
        let outcome = if ok { "succeeded" } else { "failed" };
        self.reverts
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Sets the job gauges from a count per state (states not named count 0).
    pub fn set_jobs(&self, counts: &[(JobState, i64)]) {
        for state in JobState::ALL {
            let count = counts
                .iter()
                .find(|(s, _)| *s == state)
                .map_or(0, |(_, n)| *n);
            self.jobs.get_or_create(&state_label(state)).set(count);
        }
    }
}

fn state_label(state: JobState) -> StateLabel {
    StateLabel {
        state: state.as_str().to_owned(),
    }
}

/// Seconds, for a histogram.
#[must_use]
pub fn seconds(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64()
}
