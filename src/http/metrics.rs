//! The Prometheus exposition, served on `--metrics-listen` at `GET /metrics`: the counters and
//! histograms the core records (`highwater_core::metrics`), and gauges read at scrape time (the lag of
//! durable subscriptions and projections comes from the database, so scraping costs a few
//! queries).

use axum::{Router, http::header, routing::get};
use tokio::{net::TcpListener, sync::watch};
use tracing::warn;

use std::sync::Arc;

use crate::{grpc::rpc_metrics::RpcMetrics, services::ReadyCore};
use highwater_core::{
    metrics::{RECORDED, gauge_header, sample},
    projection::rebuild::Phase,
    shutdown::stopped,
};

/// Serves `/metrics` until `stop`.
pub async fn serve(
    listener: TcpListener,
    core: ReadyCore,
    rpc_metrics: Arc<RpcMetrics>,
    stop: watch::Receiver<bool>,
) {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let core = core.clone();
            let rpc_metrics = rpc_metrics.clone();
            async move {
                let mut out = render(&core).await;
                rpc_metrics.render(&mut out);
                super::process::render(&mut out);
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    out,
                )
            }
        }),
    );
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped(stop))
        .await
    {
        warn!(%error, "metrics server stopped");
    }
}

/// The whole exposition.
pub async fn render(core: &ReadyCore) -> String {
    let mut out = String::new();
    RECORDED.render(&mut out);
    gauge_header(
        &mut out,
        "highwater_ready",
        "1 once the database is ready and requests are served.",
    );
    let Ok(core) = core.get() else {
        sample(&mut out, "highwater_ready", &[], 0.0);
        return out;
    };
    sample(&mut out, "highwater_ready", &[], 1.0);

    let hub = core.subscriptions.hub();
    gauge_header(
        &mut out,
        "highwater_log_head_position",
        "The last committed position this server has seen.",
    );
    sample(
        &mut out,
        "highwater_log_head_position",
        &[],
        hub.head() as f64,
    );
    gauge_header(
        &mut out,
        "highwater_subscribers",
        "Open subscriptions on this server.",
    );
    sample(
        &mut out,
        "highwater_subscribers",
        &[],
        hub.registry().len() as f64,
    );
    gauge_header(
        &mut out,
        "highwater_live_subscribers",
        "Subscriptions on this server in live delivery.",
    );
    sample(
        &mut out,
        "highwater_live_subscribers",
        &[],
        hub.live_receivers() as f64,
    );

    let pool = core.store.pool();
    let (size, idle) = (pool.size() as f64, pool.num_idle() as f64);
    gauge_header(
        &mut out,
        "highwater_db_pool_connections",
        "Database pool connections by state.",
    );
    sample(
        &mut out,
        "highwater_db_pool_connections",
        &[("state", "busy")],
        size - idle,
    );
    sample(
        &mut out,
        "highwater_db_pool_connections",
        &[("state", "idle")],
        idle,
    );

    let mut scrape_errors = 0;
    match core.subscriptions.list().await {
        Ok(subscriptions) => {
            gauge_header(
                &mut out,
                "highwater_subscription_lag_events",
                "Events committed after a durable subscription's checkpoint.",
            );
            for s in &subscriptions {
                sample(
                    &mut out,
                    "highwater_subscription_lag_events",
                    &[("subscription", &s.name)],
                    s.lag as f64,
                );
            }
            gauge_header(
                &mut out,
                "highwater_subscription_lag_seconds",
                "Age of the oldest event after a durable subscription's checkpoint.",
            );
            for s in &subscriptions {
                sample(
                    &mut out,
                    "highwater_subscription_lag_seconds",
                    &[("subscription", &s.name)],
                    s.lag_seconds,
                );
            }
        }
        Err(error) => {
            warn!(%error, "metrics: durable subscriptions");
            scrape_errors += 1;
        }
    }
    match core.projections.list().await {
        Ok(projections) => {
            let families = [
                (
                    "highwater_projection_lag_events",
                    "Events with a handler committed after the projection's applied position.",
                ),
                (
                    "highwater_projection_lag_seconds",
                    "Age of the oldest event the projection has not applied.",
                ),
                (
                    "highwater_projection_skips_pending",
                    "Skips recorded during an in-place rebuild and not yet replayed.",
                ),
                (
                    "highwater_projection_dead_letters",
                    "Events whose handler failed and that are not yet retried successfully.",
                ),
            ];
            for (index, (name, help)) in families.iter().enumerate() {
                gauge_header(&mut out, name, help);
                for p in &projections {
                    let value = match index {
                        0 => p.lag_events as f64,
                        1 => p.lag_seconds,
                        2 => p.pending_skips as f64,
                        _ => p.dead_letters as f64,
                    };
                    sample(&mut out, name, &[("projection", &p.name)], value);
                }
            }
            render_rebuilds(&mut out, &projections);
        }
        Err(error) => {
            warn!(%error, "metrics: projections");
            scrape_errors += 1;
        }
    }
    gauge_header(
        &mut out,
        "highwater_metrics_scrape_errors",
        "Database reads that failed while producing this page.",
    );
    sample(
        &mut out,
        "highwater_metrics_scrape_errors",
        &[],
        f64::from(scrape_errors),
    );
    out
}

/// Rebuilds running on this server: phase (one series per phase, 1 for the current one) and
/// progress.
fn render_rebuilds(out: &mut String, projections: &[highwater_core::projection::ProjectionInfo]) {
    const PHASES: [(Phase, &str); 7] = [
        (Phase::Starting, "starting"),
        (Phase::Backfilling, "backfilling"),
        (Phase::CatchingUp, "catching_up"),
        (Phase::CuttingOver, "cutting_over"),
        (Phase::ReplayingSkips, "replaying_skips"),
        (Phase::Done, "done"),
        (Phase::Failed, "failed"),
    ];
    gauge_header(
        out,
        "highwater_rebuild_phase",
        "1 for the phase of the last rebuild this server ran, by projection.",
    );
    for p in projections {
        if let Some(progress) = &p.progress {
            for (phase, name) in PHASES {
                let value = if progress.phase == phase { 1.0 } else { 0.0 };
                sample(
                    out,
                    "highwater_rebuild_phase",
                    &[("projection", &p.name), ("phase", name)],
                    value,
                );
            }
        }
    }
    gauge_header(
        out,
        "highwater_rebuild_position",
        "Position a rebuild on this server has applied up to.",
    );
    for p in projections {
        if let Some(progress) = &p.progress {
            sample(
                out,
                "highwater_rebuild_position",
                &[("projection", &p.name)],
                progress.position as f64,
            );
        }
    }
    gauge_header(
        out,
        "highwater_rebuild_head",
        "The log's last position when the rebuild last read it.",
    );
    for p in projections {
        if let Some(progress) = &p.progress {
            sample(
                out,
                "highwater_rebuild_head",
                &[("projection", &p.name)],
                progress.head as f64,
            );
        }
    }
}
