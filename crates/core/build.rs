//! `sqlx::migrate!` embeds the repository's `migrations/`; a new or changed file there must
//! rebuild this crate.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
