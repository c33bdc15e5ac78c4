//! Running a projection's setup: in the sandbox, audited, and then the live versions' apply
//! functions installed again. The setup ran as the owner of those functions and could have
//! replaced or altered them, so they are written anew as the server writes them
//! (docs/ARCHITECTURE.md, "The projection sandbox").

use std::time::Duration;

use sqlx::PgConnection;

use super::{definition::Definition, sandbox, status::VersionStatus, versions};
use crate::error::Result;

/// Runs the setup of `version` of `definition`'s projection, refusing what it left behind, and
/// reinstalls the apply function of every version that is not retired.
pub async fn run(
    connection: &mut PgConnection,
    definition: &Definition,
    version: i32,
    timeout: Duration,
) -> Result<()> {
    sandbox::run_setup(connection, definition, version, timeout).await?;
    for row in versions::versions(connection, &definition.name).await? {
        if row.status != VersionStatus::Retired {
            sandbox::install_apply_function(connection, &row.definition, row.version).await?;
        }
    }
    Ok(())
}
