//! `highwater.v1.AdminService`: projections and rebuilds.

use crate::grpc::status::{IntoStatus, OrStatus};
use std::{pin::Pin, sync::Arc};

use tokio_stream::{Stream, StreamExt, wrappers::WatchStream};
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::convert;
use crate::pb::{self, admin_service_server::AdminService as AdminApi};
use crate::services::ReadyCore;
use highwater_core::{
    error::Error,
    projection::{
        Projections,
        definition::{Definition, Mode, OnError},
        name::ProjectionName,
        rebuild::{Phase, Progress, Strategy},
    },
    store::deletion::Deletion,
    upcast::definition::UpcasterDefinition,
};

pub struct AdminService {
    core: ReadyCore,
}

impl AdminService {
    pub fn new(core: ReadyCore) -> Self {
        Self { core }
    }

    fn projections(&self) -> Result<&Arc<Projections>, Error> {
        Ok(&self.core.get()?.projections)
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::AdminRebuildResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AdminApi for AdminService {
    type AdminRebuildStream = ProgressStream;

    #[instrument(skip_all, fields(projection = %request.get_ref().projection))]
    async fn admin_rebuild(
        &self,
        request: Request<pb::AdminRebuildRequest>,
    ) -> Result<Response<Self::AdminRebuildStream>, Status> {
        let request = request.into_inner();
        let strategy = match pb::RebuildStrategy::try_from(request.strategy) {
            Ok(pb::RebuildStrategy::Unspecified | pb::RebuildStrategy::BlueGreen) => {
                Strategy::BlueGreen
            }
            Ok(pb::RebuildStrategy::InPlace) => Strategy::InPlace,
            Err(_) => {
                return Err(Error::invalid(
                    "strategy",
                    format!("unknown strategy {}", request.strategy),
                )
                .into_status());
            }
        };
        let progress = self
            .projections()
            .or_status()?
            .rebuild(&request.projection, strategy)
            .await
            .or_status()?;
        // Every change of the progress, ending after the final one.
        let mut finished = false;
        let stream = WatchStream::new(progress).map_while(move |progress| {
            if finished {
                return None;
            }
            finished = progress.is_finished();
            Some(Ok(pb::AdminRebuildResponse {
                progress: Some(progress_message(&progress)),
            }))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    #[instrument(skip_all)]
    async fn register_projection(
        &self,
        request: Request<pb::RegisterProjectionRequest>,
    ) -> Result<Response<pb::RegisterProjectionResponse>, Status> {
        let definition = match request.into_inner().source {
            Some(pb::register_projection_request::Source::Toml(text)) => {
                Definition::from_toml(&text, "api").or_status()?
            }
            Some(pb::register_projection_request::Source::Definition(definition)) => {
                definition_from(definition).or_status()?
            }
            None => {
                return Err(
                    Error::invalid("source", "a definition or a toml text is required")
                        .into_status(),
                );
            }
        };
        let info = self
            .projections()
            .or_status()?
            .register(definition)
            .await
            .or_status()?;
        Ok(Response::new(pb::RegisterProjectionResponse {
            projection: Some(projection_info(info)),
        }))
    }

    #[instrument(skip_all)]
    async fn list_projections(
        &self,
        _request: Request<pb::ListProjectionsRequest>,
    ) -> Result<Response<pb::ListProjectionsResponse>, Status> {
        let all = self.projections().or_status()?.list().await.or_status()?;
        Ok(Response::new(pb::ListProjectionsResponse {
            projections: all.into_iter().map(projection_info).collect(),
        }))
    }

    #[instrument(skip_all, fields(projection = %request.get_ref().name))]
    async fn get_projection(
        &self,
        request: Request<pb::GetProjectionRequest>,
    ) -> Result<Response<pb::GetProjectionResponse>, Status> {
        let info = self
            .projections()
            .or_status()?
            .get(&request.into_inner().name)
            .await
            .or_status()?;
        Ok(Response::new(pb::GetProjectionResponse {
            projection: Some(projection_info(info)),
        }))
    }

    #[instrument(skip_all)]
    async fn list_system_messages(
        &self,
        request: Request<pb::ListSystemMessagesRequest>,
    ) -> Result<Response<pb::ListSystemMessagesResponse>, Status> {
        let request = request.into_inner();
        let kind = match request.kind.as_str() {
            "" => None,
            "skip" | "dead_letter" => Some(request.kind.as_str()),
            other => {
                return Err(Error::invalid(
                    "kind",
                    format!("{other:?} is not skip or dead_letter"),
                )
                .into_status());
            }
        };
        let projection = (!request.projection.is_empty()).then_some(request.projection.as_str());
        let limit = if request.limit == 0 {
            100
        } else {
            i64::from(request.limit)
        };
        let messages = self
            .projections()
            .or_status()?
            .system_messages(projection, kind, request.include_archived, limit)
            .await
            .or_status()?;
        Ok(Response::new(pb::ListSystemMessagesResponse {
            messages: messages
                .into_iter()
                .map(|m| pb::SystemMessage {
                    id: m.id as u64,
                    projection: m.projection,
                    version: m.version as u32,
                    position: m.position,
                    kind: m.kind,
                    reason: m.reason,
                    recorded_at: Some(m.recorded_at.into()),
                    archived_at: m.archived_at.map(Into::into),
                })
                .collect(),
        }))
    }

    #[instrument(skip_all, fields(projection = %request.get_ref().projection))]
    async fn retry_dead_letters(
        &self,
        request: Request<pb::RetryDeadLettersRequest>,
    ) -> Result<Response<pb::RetryDeadLettersResponse>, Status> {
        let (applied, still_failing) = self
            .projections()
            .or_status()?
            .retry_dead_letters(&request.into_inner().projection)
            .await
            .or_status()?;
        Ok(Response::new(pb::RetryDeadLettersResponse {
            applied,
            still_failing,
        }))
    }

    #[instrument(skip_all, fields(stream = %request.get_ref().stream))]
    async fn hard_delete_stream(
        &self,
        request: Request<pb::HardDeleteStreamRequest>,
    ) -> Result<Response<pb::HardDeleteStreamResponse>, Status> {
        let request = request.into_inner();
        let expected = convert::hard_delete_stream_expected(&request).or_status()?;
        let result = self
            .core
            .get()
            .or_status()?
            .store
            .delete_stream(request.stream, expected, Deletion::Hard)
            .await
            .or_status()?;
        Ok(Response::new(pb::HardDeleteStreamResponse {
            deleted_revision: result.deleted_revision,
            erased_events: result.erased_events,
        }))
    }

    #[instrument(skip_all)]
    async fn register_upcaster(
        &self,
        request: Request<pb::RegisterUpcasterRequest>,
    ) -> Result<Response<pb::RegisterUpcasterResponse>, Status> {
        let definition = match request.into_inner().source {
            Some(pb::register_upcaster_request::Source::Definition(definition)) => {
                upcaster_from(definition).or_status()?
            }
            Some(pb::register_upcaster_request::Source::Toml(text)) => {
                UpcasterDefinition::from_toml(&text, "api").or_status()?
            }
            None => {
                return Err(Error::invalid("source", "a definition or toml is required"))
                    .or_status();
            }
        };
        let registered = self
            .core
            .get()
            .or_status()?
            .upcasters
            .register(definition, "api")
            .await
            .or_status()?;
        Ok(Response::new(pb::RegisterUpcasterResponse {
            upcaster: Some(upcaster_to(registered.definition)),
        }))
    }

    #[instrument(skip_all)]
    async fn list_upcasters(
        &self,
        _request: Request<pb::ListUpcastersRequest>,
    ) -> Result<Response<pb::ListUpcastersResponse>, Status> {
        let all = self
            .core
            .get()
            .or_status()?
            .upcasters
            .list()
            .await
            .or_status()?;
        Ok(Response::new(pb::ListUpcastersResponse {
            upcasters: all
                .into_iter()
                .map(|registered| pb::RegisteredUpcaster {
                    definition: Some(upcaster_to(registered.definition)),
                    origin: registered.origin,
                })
                .collect(),
        }))
    }

    #[instrument(skip_all, fields(upcaster = %request.get_ref().name))]
    async fn delete_upcaster(
        &self,
        request: Request<pb::DeleteUpcasterRequest>,
    ) -> Result<Response<pb::DeleteUpcasterResponse>, Status> {
        self.core
            .get()
            .or_status()?
            .upcasters
            .delete(&request.into_inner().name)
            .await
            .or_status()?;
        Ok(Response::new(pb::DeleteUpcasterResponse {}))
    }
}

fn upcaster_from(definition: pb::UpcasterDefinition) -> Result<UpcasterDefinition, Error> {
    let upcaster = UpcasterDefinition {
        name: ProjectionName::parse(&definition.name)
            .map_err(|problem| Error::invalid("name", format!("api: {problem}")))?,
        event_type: definition.event_type,
        from_version: definition.from_version,
        to_type: definition.to_type,
        to_version: definition.to_version,
        data: definition.data,
        metadata: definition.metadata,
    };
    upcaster.check()?;
    Ok(upcaster)
}

fn upcaster_to(definition: UpcasterDefinition) -> pb::UpcasterDefinition {
    pb::UpcasterDefinition {
        name: definition.name.to_string(),
        event_type: definition.event_type,
        from_version: definition.from_version,
        to_type: definition.to_type,
        to_version: definition.to_version,
        data: definition.data,
        metadata: definition.metadata,
    }
}

fn definition_from(definition: pb::ProjectionDefinition) -> Result<Definition, Error> {
    let mode = match pb::ProjectionMode::try_from(definition.mode) {
        Ok(pb::ProjectionMode::Unspecified | pb::ProjectionMode::Inline) => Mode::Inline,
        Ok(pb::ProjectionMode::Async) => Mode::Async,
        Err(_) => return Err(Error::invalid("definition.mode", "unknown mode")),
    };
    let on_error = match pb::OnError::try_from(definition.on_error) {
        Ok(pb::OnError::Unspecified | pb::OnError::Fail) => OnError::Fail,
        Ok(pb::OnError::Skip) => OnError::Skip,
        Err(_) => return Err(Error::invalid("definition.on_error", "unknown on_error")),
    };
    Ok(Definition {
        name: ProjectionName::parse(&definition.name)
            .map_err(|problem| Error::invalid("name", format!("api: {problem}")))?,
        version: i32::try_from(definition.version.max(1))
            .map_err(|_| Error::invalid("definition.version", "too large"))?,
        mode,
        on_error,
        setup: definition.setup,
        handlers: definition.handlers.into_iter().collect(),
        source: "api".into(),
    })
}

fn definition_message(definition: &Definition) -> pb::ProjectionDefinition {
    pb::ProjectionDefinition {
        name: definition.name.to_string(),
        version: definition.version as u32,
        mode: match definition.mode {
            Mode::Inline => pb::ProjectionMode::Inline,
            Mode::Async => pb::ProjectionMode::Async,
        } as i32,
        on_error: match definition.on_error {
            OnError::Fail => pb::OnError::Fail,
            OnError::Skip => pb::OnError::Skip,
        } as i32,
        setup: definition.setup.clone(),
        handlers: definition.handlers.clone().into_iter().collect(),
    }
}

fn progress_message(progress: &Progress) -> pb::RebuildProgress {
    use pb::rebuild_progress::Phase as P;
    let phase = match progress.phase {
        Phase::Starting => P::Starting,
        Phase::Backfilling => P::Backfilling,
        Phase::CatchingUp => P::CatchingUp,
        Phase::CuttingOver => P::CuttingOver,
        Phase::ReplayingSkips => P::ReplayingSkips,
        Phase::Done => P::Done,
        Phase::Failed => P::Failed,
    };
    pb::RebuildProgress {
        phase: phase as i32,
        version: progress.version as u32,
        position: progress.position,
        head: progress.head,
        events_per_second: progress.events_per_second,
        skips_replayed: progress.skips_replayed,
        node: progress.node.clone(),
        error: progress.error.clone().unwrap_or_default(),
    }
}

fn projection_info(info: highwater_core::projection::ProjectionInfo) -> pb::ProjectionInfo {
    let active = info
        .versions
        .iter()
        .find(|v| Some(v.version) == info.active_version);
    let building = info.versions.iter().find(|v| v.status.is_rebuild());
    let shown = active.or(info.versions.first());
    let owner = building.or(active);
    pb::ProjectionInfo {
        name: info.name.clone(),
        mode: if info.mode == "async" {
            pb::ProjectionMode::Async
        } else {
            pb::ProjectionMode::Inline
        } as i32,
        active_version: info.active_version.unwrap_or(0) as u32,
        building_version: building.map_or(0, |v| v.version as u32),
        status: shown.map(|v| v.status.to_string()).unwrap_or_default(),
        applied_position: active.map_or(0, |v| v.applied_position),
        head: info.head,
        lag_events: info.lag_events,
        lag_seconds: info.lag_seconds,
        rebuild_owner: owner
            .and_then(|v| v.rebuild_owner.clone())
            .unwrap_or_default(),
        heartbeat_at: owner
            .and_then(|v| v.heartbeat_us)
            .map(|us| highwater_core::store::columns::micros_to_time(us).into()),
        pending_skips: info.pending_skips,
        archived_skips: info.archived_skips,
        dead_letters: info.dead_letters,
        definition: shown.map(|v| definition_message(&v.definition)),
        progress: info.progress.as_ref().map(progress_message),
        versions: info
            .versions
            .iter()
            .map(|v| pb::ProjectionVersion {
                version: v.version as u32,
                status: v.status.to_string(),
                applied_position: v.applied_position,
                rebuild_owner: v.rebuild_owner.clone().unwrap_or_default(),
                heartbeat_at: v
                    .heartbeat_us
                    .map(|us| highwater_core::store::columns::micros_to_time(us).into()),
                events_per_second: v.events_per_second.unwrap_or(0.0),
                last_error: v.last_error.clone().unwrap_or_default(),
                table: v.definition.table(v.version),
            })
            .collect(),
    }
}
