//! `rebuild`, `projections`, `projection`, `subscriptions` and `health`.

use clap::Args;
use serde_json::{Value, json};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client};

use super::{
    CliError, CliResult, ClientArgs, Connection,
    color::{self, Paint},
    connect,
    progress::{ProgressDisplay, phase_name, thousands},
    render::{self, Table, timestamp},
};
use highwater_api::pb::{
    self, admin_service_client::AdminServiceClient,
    event_store_service_client::EventStoreServiceClient, rebuild_progress::Phase,
};

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// The projection to rebuild.
    pub projection: String,
    /// Empty and replay the active version's table instead of building the next version beside
    /// it (for when two copies do not fit).
    #[arg(long)]
    pub in_place: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct ProjectionArgs {
    /// The projection's name.
    pub name: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The service to ask about; empty for the server as a whole.
    #[arg(long, default_value = "")]
    pub service: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

async fn admin(args: &ClientArgs) -> CliResult<AdminServiceClient<Connection>> {
    Ok(AdminServiceClient::new(connect(args).await?))
}

pub async fn rebuild(args: RebuildArgs) -> CliResult {
    let strategy = if args.in_place {
        pb::RebuildStrategy::InPlace
    } else {
        pb::RebuildStrategy::BlueGreen
    };
    let request = pb::AdminRebuildRequest {
        projection: args.projection.clone(),
        strategy: strategy as i32,
    };
    let mut stream = admin(&args.client)
        .await?
        .admin_rebuild(request)
        .await?
        .into_inner();
    let mut display = ProgressDisplay::new();
    let mut last = None;
    while let Some(message) = stream.message().await? {
        let Some(progress) = message.progress else {
            continue;
        };
        if args.client.json {
            render::json_line(&progress_json(&progress))?;
        } else {
            display.show(&progress)?;
        }
        last = Some(progress);
    }
    match last {
        Some(progress) if progress.phase() == Phase::Done => Ok(()),
        Some(progress) if progress.phase() == Phase::Failed => Err(CliError::Failed(format!(
            "rebuild of {} failed: {}",
            args.projection, progress.error
        ))),
        _ => Err(CliError::Failed(format!(
            "the server stopped reporting the rebuild of {} before it finished; \
             `highwater projection {}` shows where it is",
            args.projection, args.projection
        ))),
    }
}

fn progress_json(progress: &pb::RebuildProgress) -> Value {
    json!({
        "phase": phase_name(progress.phase()),
        "version": progress.version,
        "position": progress.position,
        "head": progress.head,
        "events_per_second": progress.events_per_second,
        "skips_replayed": progress.skips_replayed,
        "node": progress.node,
        "error": progress.error,
    })
}

fn mode_name(mode: i32) -> &'static str {
    match pb::ProjectionMode::try_from(mode) {
        Ok(pb::ProjectionMode::Async) => "async",
        _ => "inline",
    }
}

fn projection_json(info: &pb::ProjectionInfo) -> Value {
    json!({
        "name": info.name,
        "mode": mode_name(info.mode),
        "active_version": info.active_version,
        "building_version": info.building_version,
        "status": info.status,
        "applied_position": info.applied_position,
        "head": info.head,
        "lag_events": info.lag_events,
        "lag_seconds": info.lag_seconds,
        "rebuild_owner": info.rebuild_owner,
        "heartbeat_at": timestamp(info.heartbeat_at.as_ref()),
        "pending_skips": info.pending_skips,
        "archived_skips": info.archived_skips,
        "dead_letters": info.dead_letters,
        "versions": info.versions.iter().map(|v| json!({
            "version": v.version,
            "status": v.status,
            "applied_position": v.applied_position,
            "table": v.table,
            "rebuild_owner": v.rebuild_owner,
            "heartbeat_at": timestamp(v.heartbeat_at.as_ref()),
            "events_per_second": v.events_per_second,
            "last_error": v.last_error,
        })).collect::<Vec<_>>(),
        "progress": info.progress.as_ref().map(progress_json),
    })
}

pub async fn projections(args: ClientArgs) -> CliResult {
    let all = admin(&args)
        .await?
        .list_projections(pb::ListProjectionsRequest {})
        .await?
        .into_inner()
        .projections;
    if args.json {
        for info in &all {
            render::json_line(&projection_json(info))?;
        }
        return Ok(());
    }
    let mut table = Table::new(&[
        "NAME", "MODE", "VERSION", "STATUS", "APPLIED", "LAG", "LAG(S)", "SKIPS", "DEAD", "REBUILD",
    ]);
    for info in &all {
        table.row(vec![
            info.name.clone(),
            mode_name(info.mode).into(),
            info.active_version.to_string(),
            info.status.clone(),
            info.applied_position.to_string(),
            info.lag_events.to_string(),
            format!("{:.1}", info.lag_seconds),
            info.pending_skips.to_string(),
            info.dead_letters.to_string(),
            rebuild_cell(info),
        ]);
    }
    Ok(table.print("no projections")?)
}

/// The version being built and where, or `-`.
fn rebuild_cell(info: &pb::ProjectionInfo) -> String {
    if info.building_version == 0 {
        return "-".into();
    }
    match &info.progress {
        Some(progress) => format!(
            "v{} {} {}/{}",
            info.building_version,
            phase_name(progress.phase()),
            progress.position,
            progress.head
        ),
        None => format!("v{} on {}", info.building_version, info.rebuild_owner),
    }
}

pub async fn projection(args: ProjectionArgs) -> CliResult {
    let info = admin(&args.client)
        .await?
        .get_projection(pb::GetProjectionRequest {
            name: args.name.clone(),
        })
        .await?
        .into_inner()
        .projection
        .ok_or_else(|| CliError::Failed("the server sent no projection".into()))?;
    if args.client.json {
        return Ok(render::json_line(&projection_json(&info))?);
    }
    let mut summary = Table::new(&["FIELD", "VALUE"]);
    let mut field = |name: &str, value: String| summary.row(vec![name.into(), value]);
    field("name", info.name.clone());
    field("mode", mode_name(info.mode).into());
    field("active version", info.active_version.to_string());
    field("status", info.status.clone());
    field("applied position", thousands(info.applied_position));
    field("head", thousands(info.head));
    field(
        "lag",
        format!(
            "{} events, {:.1} s",
            thousands(info.lag_events),
            info.lag_seconds
        ),
    );
    field("rebuilding", rebuild_cell(&info));
    field(
        "skips",
        format!(
            "{} pending, {} replayed",
            info.pending_skips, info.archived_skips
        ),
    );
    field("dead letters", info.dead_letters.to_string());
    summary.print("")?;
    render::line("")?;
    let mut versions = Table::new(&["VERSION", "STATUS", "APPLIED", "TABLE", "RATE", "ERROR"]);
    for v in &info.versions {
        versions.row(vec![
            v.version.to_string(),
            v.status.clone(),
            v.applied_position.to_string(),
            v.table.clone(),
            if v.events_per_second > 0.0 {
                format!("{} ev/s", thousands(v.events_per_second as u64))
            } else {
                "-".into()
            },
            v.last_error.clone(),
        ]);
    }
    Ok(versions.print("no versions")?)
}

pub async fn subscriptions(args: ClientArgs) -> CliResult {
    let all = EventStoreServiceClient::new(connect(&args).await?)
        .list_subscriptions(pb::ListSubscriptionsRequest {})
        .await?
        .into_inner()
        .subscriptions;
    if args.json {
        for s in &all {
            render::json_line(&json!({
                "name": s.name,
                "position": s.position,
                "lag": s.lag,
                "lag_seconds": s.lag_seconds,
                "updated_at": timestamp(s.updated_at.as_ref()),
            }))?;
        }
        return Ok(());
    }
    let mut table = Table::new(&["NAME", "POSITION", "LAG", "LAG(S)", "UPDATED"]);
    for s in &all {
        table.row(vec![
            s.name.clone(),
            s.position.to_string(),
            s.lag.to_string(),
            format!("{:.1}", s.lag_seconds),
            timestamp(s.updated_at.as_ref()),
        ]);
    }
    Ok(table.print("no durable subscriptions")?)
}

pub async fn health(args: HealthArgs) -> CliResult {
    let mut client = health_client::HealthClient::new(connect(&args.client).await?);
    let status = client
        .check(HealthCheckRequest {
            service: args.service.clone(),
        })
        .await?
        .into_inner()
        .status();
    let name = match status {
        ServingStatus::Serving => "SERVING",
        ServingStatus::NotServing => "NOT_SERVING",
        ServingStatus::ServiceUnknown => "SERVICE_UNKNOWN",
        ServingStatus::Unknown => "UNKNOWN",
    };
    if args.client.json {
        render::json_line(&json!({ "service": args.service, "status": name }))?;
    } else {
        let paint = if status == ServingStatus::Serving {
            Paint::Green
        } else {
            Paint::Red
        };
        render::line(&color::stdout(paint, name))?;
    }
    if status == ServingStatus::Serving {
        Ok(())
    } else {
        Err(CliError::Failed(format!("the server is {name}")))
    }
}
