//! How the log's values are stored in PostgreSQL: revisions and positions as `bigint`, times
//! read back as microseconds since the Unix epoch.

use std::time::{Duration, SystemTime};

/// Revisions and positions are `bigint` in the database; anything above `i64::MAX` cannot match
/// a stored value, and saturating keeps it so.
pub fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A time given as microseconds since the Unix epoch (how queries return timestamps).
pub fn micros_to_time(micros: i64) -> SystemTime {
    if micros >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_micros(micros as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_micros(micros.unsigned_abs())
    }
}
