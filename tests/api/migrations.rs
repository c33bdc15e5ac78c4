//! Migrations are immutable once released: the migrations compiled into the server must match,
//! one for one, the checksums in `released_migrations.sha384`, apart from new ones added there.

use std::collections::BTreeMap;

use highwater_core::store::database::MIGRATOR;

const RELEASED: &str = include_str!("released_migrations.sha384");

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn no_released_migration_has_changed_and_every_migration_is_listed() {
    let released: BTreeMap<i64, (&str, &str)> = RELEASED
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (file, checksum) = line.split_once(' ').expect("file and checksum");
            let version = file.split('_').next().unwrap().parse().expect("a version");
            (version, (file, checksum.trim()))
        })
        .collect();
    let mut problems = Vec::new();
    for migration in MIGRATOR.iter() {
        let checksum = hex(&migration.checksum);
        match released.get(&migration.version) {
            Some((_, listed)) if *listed == checksum => {}
            Some((file, _)) => problems.push(format!(
                "{file} changed after it was released: add a new migration instead"
            )),
            None => problems.push(format!(
                "migration {} ({}) is not in released_migrations.sha384: add `{:04}_{}.sql {checksum}`",
                migration.version,
                migration.description,
                migration.version,
                migration.description.replace(' ', "_"),
            )),
        }
    }
    for (version, (file, _)) in &released {
        if !MIGRATOR.iter().any(|m| m.version == *version) {
            problems.push(format!("released {file} is missing from migrations/"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
