//! The shutdown signal shared by background tasks.

use tokio::sync::watch;

/// Completes once shutdown has begun (the watched value is true), or if the sender is gone.
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}
