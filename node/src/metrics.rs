//! Prometheus metrics: one process-wide recorder (served at `/metrics` by `settled-server`).
//!
//! Every metric is scoped `settled_` and described where it is defined, so `/metrics` carries a
//! `# HELP` line for each.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::error::NodeError;

/// Node metric names.
pub(crate) mod names {
    /// Gauge: 1, labelled with the node version.
    pub(crate) const INFO: &str = "settled_info";
    /// Gauge: newest block delivered by the chain follower.
    pub(crate) const CHAIN_HEAD: &str = "settled_chain_head_block";
    /// Counter: chain reorganisations seen.
    pub(crate) const CHAIN_REORGS: &str = "settled_chain_reorgs_total";
    /// Counter: blocks removed by reorganisations.
    pub(crate) const CHAIN_REORGED_BLOCKS: &str = "settled_chain_reorged_blocks_total";
    /// Gauge: unix time the node started.
    pub(crate) const START_TIME: &str = "settled_start_time_seconds";
}

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the process-wide recorder once (several in-process nodes, as in tests, share it;
/// concurrent callers wait for the first to finish installing).
pub(crate) fn install() -> Result<PrometheusHandle, NodeError> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder)
                .map_err(|_| "a metrics recorder not owned by settled is installed".to_string())?;
            describe();
            settled_server::describe_metrics();
            settled_bundler::describe_metrics();
            settled_paymaster::describe_metrics();
            settled_streams::describe_metrics();
            settled_settlement::describe_metrics();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            metrics::gauge!(names::START_TIME).set(now.as_secs_f64());
            Ok(handle)
        })
        .clone()
        .map_err(NodeError::Metrics)
}

/// `settled_info` with the node's version and its chain's kind.
pub(crate) fn set_info(kind: settled_contracts::ChainKind) {
    let version = env!("CARGO_PKG_VERSION");
    metrics::gauge!(names::INFO, "version" => version, "chain_kind" => kind.as_str()).set(1.0);
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_gauge!(
        names::INFO,
        "Always 1; the labels tell which settled is running (version) and on what chain (chain_kind: ethereum, op-stack, arbitrum)"
    );
    describe_gauge!(names::CHAIN_HEAD, "Newest block delivered by the chain follower");
    describe_counter!(names::CHAIN_REORGS, "Chain reorganisations seen by the chain follower");
    describe_counter!(names::CHAIN_REORGED_BLOCKS, "Blocks removed by chain reorganisations");
    // Served from the start at zero, not only after the first event.
    for counter in [names::CHAIN_REORGS, names::CHAIN_REORGED_BLOCKS] {
        metrics::counter!(counter).increment(0);
    }
    describe_gauge!(names::START_TIME, Unit::Seconds, "Unix time at which the node started");
}
