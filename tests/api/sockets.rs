//! Options of the server's client sockets.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use crate::helpers::*;

/// The server's end of the connection from `client`, once the server has accepted it: whether
/// Nagle's algorithm is off on it. The server runs in this process, so its socket is one of
/// this process's file descriptors.
fn server_side_nodelay(server: std::net::SocketAddr, client: std::net::SocketAddr) -> Option<bool> {
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: the descriptor is only queried (getsockname, getpeername, getsockopt); if it
        // was closed meanwhile those calls fail, and a reused number names some other socket,
        // whose addresses do not match.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&borrowed);
        let local = socket.local_addr().ok().and_then(|a| a.as_socket());
        let peer = socket.peer_addr().ok().and_then(|a| a.as_socket());
        if local == Some(server) && peer == Some(client) {
            return socket.tcp_nodelay().ok();
        }
    }
    None
}

/// A reply is written in several pieces (headers, message, trailers): with Nagle's algorithm on,
/// the later ones wait for the client's acknowledgement of the first.
#[tokio::test]
async fn the_server_turns_nagles_algorithm_off_on_client_connections() {
    let app = TestApp::spawn().await;
    let server = app.server.address;
    let client = tokio::net::TcpStream::connect(server).await.unwrap();
    let client_address = client.local_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let nodelay = loop {
        if let Some(nodelay) = server_side_nodelay(server, client_address) {
            break nodelay;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not accept the connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        nodelay,
        "TCP_NODELAY is not set on the server's socket: Nagle's algorithm is on"
    );
}
