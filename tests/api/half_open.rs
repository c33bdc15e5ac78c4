//! A half-open LISTEN connection: a TCP proxy between one server and PostgreSQL stops forwarding
//! the hub's connection (as a dropped route or a NAT timeout does: no error, no FIN, just
//! silence) while the server's other connections go on. Live delivery must not stall.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use highwater::pb::{self, subscribe_all_response::Content};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream, UnixStream},
};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::*;

/// Where the proxy forwards to: the tests' PostgreSQL, over TCP or (embedded) its socket.
#[derive(Clone)]
enum Upstream {
    Tcp(String),
    Unix(String),
}

impl Upstream {
    /// From the tests' admin URL: `host=/dir` in the query means a Unix socket.
    fn of(url: &str) -> Self {
        let query = url.split_once('?').map_or("", |(_, q)| q);
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
                .map(str::to_string)
        };
        if let Some(dir) = param("host").filter(|h| h.starts_with('/')) {
            let port = param("port").unwrap_or_else(|| "5432".into());
            return Self::Unix(format!("{dir}/.s.PGSQL.{port}"));
        }
        let authority = url.split_once("://").unwrap().1;
        let authority = authority.split(['/', '?']).next().unwrap();
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host_port = if host_port.contains(':') {
            host_port.to_string()
        } else {
            format!("{host_port}:5432")
        };
        Self::Tcp(host_port)
    }

    async fn connect(&self) -> Box<dyn Duplex> {
        match self {
            Self::Tcp(address) => Box::new(TcpStream::connect(address).await.unwrap()),
            Self::Unix(path) => Box::new(UnixStream::connect(path).await.unwrap()),
        }
    }
}

trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// A proxy that can silence the hub's connections (found by the application name in their
/// startup message) without closing them.
struct Proxy {
    port: u16,
    /// Hub connections opened through the proxy so far.
    hub_connections: Arc<AtomicUsize>,
    /// Hub connections numbered up to this one are silenced.
    silenced_through: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(upstream: Upstream) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hub_connections = Arc::new(AtomicUsize::new(0));
        let silenced_through = Arc::new(AtomicUsize::new(0));
        let (hubs, silenced) = (hub_connections.clone(), silenced_through.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, hubs, silenced) = (upstream.clone(), hubs.clone(), silenced.clone());
                tokio::spawn(async move {
                    let mut client = client;
                    let mut server = upstream.connect().await;
                    // The startup message (sslmode=disable: no TLS request before it) names
                    // the application.
                    let mut first = vec![0u8; 4096];
                    let n = client.read(&mut first).await.unwrap_or(0);
                    let is_hub = first[..n]
                        .windows(b"highwater-hub".len())
                        .any(|w| w == b"highwater-hub");
                    let number = if is_hub {
                        hubs.fetch_add(1, Ordering::SeqCst) + 1
                    } else {
                        0
                    };
                    let silent = Arc::new(AtomicBool::new(false));
                    let is_silenced = {
                        let silenced = silenced.clone();
                        move || number > 0 && number <= silenced.load(Ordering::SeqCst)
                    };
                    if server.write_all(&first[..n]).await.is_err() {
                        return;
                    }
                    let (client_read, client_write) = tokio::io::split(client);
                    let (server_read, server_write) = tokio::io::split(server);
                    let up = pump(
                        client_read,
                        server_write,
                        is_silenced.clone(),
                        silent.clone(),
                    );
                    let down = pump(server_read, client_write, is_silenced, silent);
                    tokio::join!(up, down);
                });
            }
        });
        Self {
            port,
            hub_connections,
            silenced_through,
        }
    }

    /// From now on, every hub connection opened so far forwards nothing, in either direction,
    /// and stays open.
    fn silence_hub(&self) -> usize {
        let through = self.hub_connections.load(Ordering::SeqCst);
        self.silenced_through.store(through, Ordering::SeqCst);
        through
    }
}

/// Copies bytes until either side closes; once silenced, holds what it reads and never writes
/// again, keeping both sockets open.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    is_silenced: impl Fn() -> bool,
    silent: Arc<AtomicBool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if is_silenced() || silent.load(Ordering::SeqCst) {
            silent.store(true, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// `database_url`'s database, reached through the proxy on `port`.
fn through_proxy(database_url: &str, database: &str, port: u16) -> String {
    let authority = database_url.split_once("://").unwrap().1;
    let user = authority
        .split_once('@')
        .map_or("postgres", |(user, _)| user.split(':').next().unwrap());
    format!("postgres://{user}@127.0.0.1:{port}/{database}?sslmode=disable")
}

async fn next_position(subscription: &mut tonic::Streaming<pb::SubscribeAllResponse>) -> u64 {
    loop {
        if let Some(Content::Event(event)) = next_message(subscription).await.content {
            return event.position;
        }
    }
}

/// With the hub's LISTEN connection silenced (half-open), a live subscriber of that server
/// still gets an event appended through another server within 10 s (the head poll every
/// second, and a LISTEN ping that gives up after 5 s), the hub opens a new LISTEN connection,
/// and later events arrive within the same bound.
#[tokio::test]
async fn a_live_subscriber_gets_events_while_its_hubs_listen_connection_is_half_open() {
    let database = TestDatabase::new();
    let other = RunningServer::start(config_for(&database.url, &[])).await;
    other
        .wait_for_health(ServingStatus::Serving, Duration::from_secs(30))
        .await;
    let proxy = Proxy::start(Upstream::of(admin_url())).await;
    let proxied = through_proxy(admin_url(), &database.name, proxy.port);
    let server = RunningServer::start(config_for(&proxied, &[])).await;
    server
        .wait_for_health(ServingStatus::Serving, Duration::from_secs(30))
        .await;
    let mut writer = other.client().await;
    let mut subscriber = server
        .client()
        .await
        .subscribe_all(pb::SubscribeAllRequest {
            original: false,
            start: None,
            filter: None,
            checkpoint_interval: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = writer
        .append(append_request("s", None, vec![json_event("E", "0")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_position(&mut subscriber).await, first.first_position);

    let silenced = proxy.silence_hub();
    assert!(silenced >= 1, "the hub connects through the proxy");
    for i in 1..=3 {
        let appended = writer
            .append(append_request(
                "s",
                None,
                vec![json_event("E", &i.to_string())],
            ))
            .await
            .unwrap()
            .into_inner();
        let started = Instant::now();
        let position =
            tokio::time::timeout(Duration::from_secs(10), next_position(&mut subscriber))
                .await
                .unwrap_or_else(|_| panic!("event {i} not delivered within 10 s"));
        assert_eq!(position, appended.first_position);
        eprintln!(
            "event {i} delivered {:?} after its append",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(
        proxy.hub_connections.load(Ordering::SeqCst) > silenced,
        "the hub did not replace its silent LISTEN connection"
    );
}
