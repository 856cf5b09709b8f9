//! `pg_backup_ext`: the SQL face of the backup system.
//!
//! Loaded through `shared_preload_libraries` (its background workers need that), created with
//! `CREATE EXTENSION pg_backup_ext`, which puts everything in schema `backup`. The repository
//! format, codecs and storage live in `backup-core`; this crate only speaks to PostgreSQL.

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

pgrx::extension_sql_file!("../../sql/bootstrap.sql", name = "bootstrap", bootstrap);

/// Version of the extension and of the repository format it writes.
#[pg_extern]
fn version() -> String {
    format!(
        "pg_backup_ext {} (repository format {})",
        env!("CARGO_PKG_VERSION"),
        backup_core::repo::REPO_FORMAT
    )
}
