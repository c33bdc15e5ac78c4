//! `delete-stream`: soft deletes through the event store service, hard deletes through the admin
//! service.

use clap::Args;

use super::{CliResult, ClientArgs, connect, events::expected, render};
use highwater_api::pb::{
    self, admin_service_client::AdminServiceClient, delete_stream_request,
    event_store_service_client::EventStoreServiceClient, hard_delete_stream_request,
};

#[derive(Debug, Args)]
pub struct DeleteStreamArgs {
    /// The stream to delete.
    pub stream: String,
    /// What the stream must be before the delete: a revision N (its last event's), `any` or
    /// `exists`.
    #[arg(long, default_value = "any", value_name = "N|any|exists")]
    pub expected_revision: String,
    /// Erase the stream's events from the log and refuse any later write to it. Cannot be undone.
    #[arg(long)]
    pub hard: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn delete_stream(args: DeleteStreamArgs) -> CliResult {
    let stream = args.stream.clone();
    let (deleted_revision, erased_events) = if args.hard {
        let request = pb::HardDeleteStreamRequest {
            stream: args.stream,
            expected: expected(
                &args.expected_revision,
                hard_delete_stream_request::Expected::Revision,
                hard_delete_stream_request::Expected::State,
            )?,
        };
        let response = AdminServiceClient::new(connect(&args.client).await?)
            .hard_delete_stream(request)
            .await?
            .into_inner();
        (response.deleted_revision, response.erased_events)
    } else {
        let request = pb::DeleteStreamRequest {
            stream: args.stream,
            expected: expected(
                &args.expected_revision,
                delete_stream_request::Expected::Revision,
                delete_stream_request::Expected::State,
            )?,
        };
        let response = EventStoreServiceClient::new(connect(&args.client).await?)
            .delete_stream(request)
            .await?
            .into_inner();
        (response.deleted_revision, 0)
    };
    if args.client.json {
        render::json_line(&serde_json::json!({
            "stream": stream,
            "hard": args.hard,
            "deleted_revision": deleted_revision,
            "erased_events": erased_events,
        }))?;
    } else if args.hard {
        render::line(&format!(
            "hard-deleted {stream} through revision {deleted_revision}: \
             {erased_events} events erased"
        ))?;
    } else {
        render::line(&format!(
            "deleted {stream} through revision {deleted_revision}; \
             its next event gets revision {}",
            deleted_revision + 1
        ))?;
    }
    Ok(())
}
