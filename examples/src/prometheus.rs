//! `GET /metrics`: the engine's metrics (see the `raftkit` crate docs, "Metrics") in Prometheus
//! text format, through a `metrics-exporter-prometheus` recorder installed for the process.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The process's recorder, once installed.
static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// How often recorded histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the process's Prometheus recorder, or returns the one installed already. Call it
/// before starting nodes: a node registers its metrics with the recorder of the moment.
///
/// Histograms are kept as buckets, not summaries, so that they add up across nodes. The
/// caller runs [`upkeep`] now and then (recorded samples wait for it, or for a scrape).
///
/// # Errors
/// Another recorder is installed already.
pub fn install() -> Result<PrometheusHandle> {
    let mut handle = HANDLE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = &*handle {
        return Ok(h.clone());
    }
    const SECONDS: &[f64] =
        &[0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];
    const ENTRIES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];
    let h = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_entries".into()), ENTRIES))
        .and_then(PrometheusBuilder::install_recorder)
        .context("installing the Prometheus metrics recorder")?;
    *handle = Some(h.clone());
    Ok(h)
}

/// Folds recorded samples into the histograms every few seconds, until dropped (abort the
/// task): without scrapes they would pile up.
pub async fn upkeep(handle: PrometheusHandle) {
    loop {
        tokio::time::sleep(UPKEEP_EVERY).await;
        handle.run_upkeep();
    }
}

/// The metrics in Prometheus text format, or `None` if no recorder was [`install`]ed.
pub fn render() -> Option<String> {
    let handle = HANDLE.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
    Some(handle.render())
}
