//! Advisory lock keys: 64-bit, from a hash of the projection name (and version) under a prefix
//! of Highwater's own, so they do not collide with an application's keys.

/// FNV-1a, 64 bits: stable across processes, builds and machines (unlike `DefaultHasher`).
fn fnv1a(text: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

/// Shared by inline appends (transaction-level, shared) and taken exclusively by an in-place
/// rebuild of that version.
pub fn apply_key(name: &str, version: i32) -> i64 {
    fnv1a(&format!("highwater/projection/apply/{name}/{version}"))
}

/// Held (session-level, exclusive) by the process rebuilding a projection.
pub fn rebuild_key(name: &str) -> i64 {
    fnv1a(&format!("highwater/projection/rebuild/{name}"))
}

/// Held (session-level, exclusive) by the process running an async projection.
pub fn async_key(name: &str) -> i64 {
    fnv1a(&format!("highwater/projection/async/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_distinct() {
        assert_eq!(apply_key("cart", 1), apply_key("cart", 1));
        assert_ne!(apply_key("cart", 1), apply_key("cart", 2));
        assert_ne!(rebuild_key("cart"), async_key("cart"));
        // FNV-1a of the empty string is its offset basis.
        assert_eq!(fnv1a("") as u64, 0xcbf2_9ce4_8422_2325);
    }
}
