//! Durable subscriptions: named checkpoints that only move forwards.

use std::time::SystemTime;

use sqlx::PgPool;

use crate::{
    error::{Error, Result},
    store::{
        self,
        columns::{micros_to_time, to_i64},
    },
};

/// A durable subscription as stored.
#[derive(Debug, Clone)]
pub struct DurableSubscription {
    pub name: String,
    pub position: u64,
    /// Events committed after the checkpoint.
    pub lag: u64,
    /// Age of the oldest event after the checkpoint, in seconds; 0 when caught up.
    pub lag_seconds: f64,
    pub updated_at: SystemTime,
}

/// The stored checkpoint of `name`, creating the subscription at 0 if it does not exist.
pub async fn open(pool: &PgPool, name: &str) -> Result<u64> {
    let position: i64 = sqlx::query_scalar(
        "INSERT INTO subscriptions (name) VALUES ($1)
         ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
         RETURNING position",
    )
    .bind(name)
    .fetch_one(pool)
    .await?;
    Ok(position as u64)
}

/// The stored checkpoint of `name`, which must exist (for callers that may not create one).
pub async fn existing(pool: &PgPool, name: &str) -> Result<u64> {
    let position: Option<i64> =
        sqlx::query_scalar("SELECT position FROM subscriptions WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?;
    position.map(|p| p as u64).ok_or_else(|| {
        Error::PermissionDenied(format!(
            "durable subscription {name:?} does not exist, and creating one needs the write role"
        ))
    })
}

/// Refuses a position past the log's last one: a checkpoint or start from another database (or a
/// client's bug) would otherwise silently skip the events later committed up to it.
pub async fn check_within_log(pool: &PgPool, field: &str, position: u64) -> Result<()> {
    let head = store::head::position(pool).await?;
    if position > head {
        return Err(Error::invalid(
            field,
            format!("position {position} is beyond the log's last position {head}"),
        ));
    }
    Ok(())
}

/// Moves the checkpoint forward (never back); returns the stored position.
pub async fn save(pool: &PgPool, name: &str, position: u64) -> Result<u64> {
    check_within_log(pool, "position", position).await?;
    let stored: i64 = sqlx::query_scalar(
        "INSERT INTO subscriptions AS s (name, position) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE
            SET position = GREATEST(s.position, EXCLUDED.position),
                updated_at = CASE WHEN EXCLUDED.position > s.position THEN now() ELSE s.updated_at END
         RETURNING position",
    )
    .bind(name)
    .bind(to_i64(position))
    .fetch_one(pool)
    .await?;
    Ok(stored as u64)
}

pub async fn list(pool: &PgPool) -> Result<Vec<DurableSubscription>> {
    // The lag in time is the age of the first event after the checkpoint (0 when caught up).
    let rows: Vec<(String, i64, i64, i64, f64)> = sqlx::query_as(
        "SELECT s.name, s.position, greatest(h.position - s.position, 0),
                (extract(epoch FROM s.updated_at) * 1000000)::bigint,
                coalesce((SELECT greatest(extract(epoch FROM now() - e.recorded_at), 0)::float8
                            FROM events e WHERE e.position = s.position + 1), 0)
           FROM subscriptions s CROSS JOIN log_head h
          ORDER BY s.name",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(name, position, lag, updated_us, lag_seconds)| DurableSubscription {
                name,
                position: position as u64,
                lag: lag as u64,
                lag_seconds,
                updated_at: micros_to_time(updated_us),
            },
        )
        .collect())
}

pub async fn delete(pool: &PgPool, name: &str) -> Result<()> {
    let deleted = sqlx::query("DELETE FROM subscriptions WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(Error::SubscriptionNotFound(name.to_string()));
    }
    Ok(())
}
