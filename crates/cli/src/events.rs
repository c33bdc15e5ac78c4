//! `append`, `read`, `read-all` and `tail`.

use std::{io::Read, time::Duration};

use clap::Args;
use tonic::Code;
use uuid::Uuid;

use super::{CliError, CliResult, ClientArgs, Connection, connect, render};
use highwater_api::pb::{
    self, append_request::Expected, event_store_service_client::EventStoreServiceClient,
    subscribe_all_request::Start, subscribe_all_response::Content,
};

/// The revision or position that reads "from the end" when reading backwards.
const FROM_END: u64 = u64::MAX;
/// Longest wait between reconnection attempts of `tail`.
const RECONNECT_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct AppendArgs {
    /// The stream to append to (created by its first event).
    pub stream: String,
    /// The event's type, such as OrderPlaced.
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: String,
    /// The event's data. Without it, standard input is read to its end.
    #[arg(long)]
    pub data: Option<String>,
    /// Media type of the data; JSON is checked by the server.
    #[arg(long, default_value = "application/json")]
    pub content_type: String,
    /// A metadata pair, KEY=VALUE; repeat for more.
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// The event's id (a UUID); a retry with the same id is not appended twice. Default: a new one.
    #[arg(long)]
    pub id: Option<Uuid>,
    /// What the stream must be before the append: a revision N (its last event's), `any`,
    /// `no-stream` or `exists`.
    #[arg(long, default_value = "any", value_name = "N|any|no-stream|exists")]
    pub expected_revision: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// The stream to read.
    pub stream: String,
    /// The first revision to return (forwards) or the highest (backwards; default: the last).
    #[arg(long)]
    pub from: Option<u64>,
    /// Newest first.
    #[arg(long)]
    pub backwards: bool,
    /// The most events to print; default all.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Events as stored, not through the server's upcasters.
    #[arg(long)]
    pub original: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct ReadAllArgs {
    /// Forwards: events after this position (default 0, the first event). Backwards: events at or
    /// below it (default: the last event).
    #[arg(long)]
    pub after: Option<u64>,
    /// Newest first.
    #[arg(long)]
    pub backwards: bool,
    /// The most events to print; default all.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Events as stored, not through the server's upcasters.
    #[arg(long)]
    pub original: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Start after this position (0: from the first event). Default: only new events.
    #[arg(long, conflicts_with = "subscription")]
    pub from: Option<u64>,
    /// Follow a durable subscription: start after its checkpoint and save the checkpoint as
    /// events are printed (at least once: events printed after the last save print again).
    #[arg(long)]
    pub subscription: Option<String>,
    /// Only streams starting with this prefix; repeat for more.
    #[arg(long = "stream-prefix", value_name = "PREFIX")]
    pub stream_prefixes: Vec<String>,
    /// Only events of this type; repeat for more.
    #[arg(long = "type", value_name = "TYPE")]
    pub event_types: Vec<String>,
    /// Exit after printing this many events. Default: follow until interrupted.
    #[arg(long)]
    pub count: Option<u64>,
    /// Events as stored, not through the server's upcasters.
    #[arg(long)]
    pub original: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

async fn client(args: &ClientArgs) -> CliResult<EventStoreServiceClient<Connection>> {
    Ok(EventStoreServiceClient::new(connect(args).await?).max_decoding_message_size(usize::MAX))
}

/// Parses `--expected-revision` into a request's `expected` oneof, given its two variants.
pub(super) fn expected<E>(
    text: &str,
    revision: fn(u64) -> E,
    state: fn(i32) -> E,
) -> CliResult<Option<E>> {
    let state = |value: pb::ExpectedState| Ok(Some(state(value as i32)));
    match text {
        "any" => state(pb::ExpectedState::Any),
        "no-stream" => state(pb::ExpectedState::NoStream),
        "exists" => state(pb::ExpectedState::StreamExists),
        number => number.parse().map(|n| Some(revision(n))).map_err(|_| {
            CliError::Input(format!(
                "--expected-revision {number:?} is not a revision, any, no-stream or exists"
            ))
        }),
    }
}

fn metadata(pairs: &[String]) -> CliResult<std::collections::HashMap<String, String>> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .ok_or_else(|| CliError::Input(format!("--metadata {pair:?} is not KEY=VALUE")))
        })
        .collect()
}

pub async fn append(args: AppendArgs) -> CliResult {
    let data = match args.data {
        Some(data) => data.into_bytes(),
        None => {
            let mut data = Vec::new();
            std::io::stdin()
                .read_to_end(&mut data)
                .map_err(|error| CliError::Input(format!("cannot read standard input: {error}")))?;
            data
        }
    };
    let request = pb::AppendRequest {
        stream: args.stream.clone(),
        expected: expected(&args.expected_revision, Expected::Revision, Expected::State)?,
        events: vec![pb::ProposedEvent {
            id: args.id.unwrap_or_else(Uuid::now_v7).to_string(),
            r#type: args.event_type,
            data: data.into(),
            content_type: args.content_type,
            metadata: metadata(&args.metadata)?,
        }],
    };
    let response = client(&args.client)
        .await?
        .append(request)
        .await?
        .into_inner();
    if args.client.json {
        render::json_line(&serde_json::json!({
            "stream": args.stream,
            "first_revision": response.first_revision,
            "last_revision": response.last_revision,
            "first_position": response.first_position,
            "last_position": response.last_position,
        }))?;
    } else {
        render::line(&format!(
            "appended to {} at revision {}, position {}",
            args.stream, response.last_revision, response.last_position
        ))?;
    }
    Ok(())
}

/// Prints events as they arrive: a header and aligned columns, or JSON lines.
struct EventPrinter {
    json: bool,
    printed: u64,
}

impl EventPrinter {
    fn new(json: bool) -> Self {
        Self { json, printed: 0 }
    }

    fn print(&mut self, event: &pb::RecordedEvent) -> CliResult {
        if self.json {
            render::json_line(&render::event_json(event))?;
        } else {
            if self.printed == 0 {
                render::line(&format!(
                    "{:>10}  {:>8}  {:<24}  {:<20}  {:<20}  DATA",
                    "POSITION", "REVISION", "STREAM", "TYPE", "RECORDED"
                ))?;
            }
            let recorded = render::timestamp(event.recorded_at.as_ref());
            render::line(&format!(
                "{:>10}  {:>8}  {:<24}  {:<20}  {:<20}  {}",
                event.position,
                event.revision,
                event.stream,
                event.r#type,
                recorded.get(..19).unwrap_or(&recorded),
                render::data_preview(event)
            ))?;
        }
        self.printed += 1;
        Ok(())
    }

    fn finish(&self, what: &str) -> CliResult {
        if !self.json && self.printed == 0 {
            render::line(&format!("no events in {what}"))?;
        }
        Ok(())
    }
}

/// The direction of a read, and where it starts when no start is given (the first event
/// forwards, the last one backwards).
fn direction(backwards: bool) -> (pb::Direction, u64) {
    if backwards {
        (pb::Direction::Backwards, FROM_END)
    } else {
        (pb::Direction::Forwards, 0)
    }
}

/// Prints every event of a read as it arrives.
async fn print_read<T>(
    mut stream: tonic::Streaming<T>,
    json: bool,
    event_of: fn(T) -> Option<pb::RecordedEvent>,
    what: &str,
) -> CliResult {
    let mut printer = EventPrinter::new(json);
    while let Some(message) = stream.message().await? {
        if let Some(event) = event_of(message) {
            printer.print(&event)?;
        }
    }
    printer.finish(what)
}

pub async fn read(args: ReadArgs) -> CliResult {
    let (direction, start) = direction(args.backwards);
    let request = pb::ReadStreamRequest {
        original: args.original,
        stream: args.stream.clone(),
        from_revision: args.from.unwrap_or(start),
        direction: direction as i32,
        max_count: args.limit.unwrap_or(0),
        from_latest_snapshot: false,
    };
    let stream = client(&args.client)
        .await?
        .read_stream(request)
        .await?
        .into_inner();
    let what = format!("stream {}", args.stream);
    print_read(stream, args.client.json, |m| m.event, &what).await
}

pub async fn read_all(args: ReadAllArgs) -> CliResult {
    let (direction, start) = direction(args.backwards);
    let request = pb::ReadAllRequest {
        original: args.original,
        after_position: args.after.unwrap_or(start),
        direction: direction as i32,
        max_count: args.limit.unwrap_or(0),
    };
    let stream = client(&args.client)
        .await?
        .read_all(request)
        .await?
        .into_inner();
    print_read(stream, args.client.json, |m| m.event, "the log").await
}

/// Whether a subscription error is worth reconnecting for: the server went away or restarts.
fn retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
    )
}

/// Where `tail` is: what a reconnection resumes after, and how many events it printed.
struct TailState {
    /// Everything up to here was printed or filtered out.
    resume_after: Option<u64>,
    printed: u64,
}

pub async fn tail(args: TailArgs) -> CliResult {
    let mut client = client(&args.client).await?;
    let mut state = TailState {
        resume_after: args.from,
        printed: 0,
    };
    let mut following = client.clone();
    let interrupted = tokio::select! {
        result = follow_reconnecting(&mut following, &args, &mut state) => {
            result?;
            false
        }
        _ = tokio::signal::ctrl_c() => true,
    };
    if interrupted && let Some(position) = state.resume_after {
        // What was printed is done: the next `tail --subscription` starts after it.
        save_checkpoint(&mut client, &args, position).await?;
    }
    Ok(())
}

/// Follows the log, reconnecting with backoff when the server goes away, until `--count`.
async fn follow_reconnecting(
    client: &mut EventStoreServiceClient<Connection>,
    args: &TailArgs,
    state: &mut TailState,
) -> CliResult {
    let filter = pb::Filter {
        stream_prefixes: args.stream_prefixes.clone(),
        event_types: args.event_types.clone(),
    };
    let mut backoff = Duration::from_millis(200);
    loop {
        let start = match (state.resume_after, &args.subscription) {
            (Some(position), _) => Start::AfterPosition(position),
            (None, Some(name)) => Start::Subscription(name.clone()),
            (None, None) => Start::End(()),
        };
        let request = pb::SubscribeAllRequest {
            original: args.original,
            start: Some(start),
            filter: Some(filter.clone()),
            checkpoint_interval: 0,
        };
        match follow(client, request, args, state).await {
            Ok(()) => return Ok(()),
            Err(CliError::Rpc(status)) if retryable(&status) => {
                eprintln!(
                    "connection lost ({}: {}); reconnecting",
                    super::code_name(status.code()),
                    status.message()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
            }
            Err(error) => return Err(error),
        }
    }
}

/// Prints one subscription's events until `--count` is reached (Ok) or the stream fails.
async fn follow(
    client: &mut EventStoreServiceClient<Connection>,
    request: pb::SubscribeAllRequest,
    args: &TailArgs,
    state: &mut TailState,
) -> CliResult {
    if args.count == Some(state.printed) {
        return Ok(());
    }
    let mut stream = client.subscribe_all(request).await?.into_inner();
    while let Some(message) = stream.message().await? {
        let checkpoint = match message.content {
            Some(Content::Event(event)) => {
                if args.client.json {
                    render::json_line(&render::event_json(&event))?;
                } else {
                    render::line(&render::event_text(&event))?;
                }
                state.resume_after = Some(event.position);
                state.printed += 1;
                if args.count == Some(state.printed) {
                    save_checkpoint(client, args, event.position).await?;
                    return Ok(());
                }
                None
            }
            Some(Content::Checkpoint(pb::Checkpoint { position }))
            | Some(Content::CaughtUp(pb::CaughtUp { position }))
            | Some(Content::FellBehind(pb::FellBehind { position })) => Some(position),
            None => None,
        };
        if let Some(position) = checkpoint {
            state.resume_after = Some(position);
            save_checkpoint(client, args, position).await?;
        }
    }
    Err(CliError::Rpc(tonic::Status::unavailable(
        "the server ended the subscription",
    )))
}

/// Saves a durable subscription's checkpoint (when following one).
async fn save_checkpoint(
    client: &mut EventStoreServiceClient<Connection>,
    args: &TailArgs,
    position: u64,
) -> CliResult {
    if let Some(name) = &args.subscription {
        client
            .save_checkpoint(pb::SaveCheckpointRequest {
                subscription: name.clone(),
                position,
            })
            .await?;
    }
    Ok(())
}
