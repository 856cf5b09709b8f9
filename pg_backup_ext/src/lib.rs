//! `pg_backup_ext`: the SQL face of the backup system.
//!
//! Loaded through `shared_preload_libraries` (its background workers need that), created with
//! `CREATE EXTENSION pg_backup_ext`, which puts everything in schema `backup`. The repository
//! format, codecs, copy and restore live in `backup-core`; this crate only speaks to PostgreSQL:
//! - [`gucs`]: `backup.*` settings;
//! - [`api`]: the SQL functions (`backup.start_full()`, `backup.get()`, `backup.verify()`, …);
//! - [`worker`]: the background worker that takes a backup;
//! - [`archive_module`]: `archive_library = 'pg_backup_ext'`, WAL archiving without a process
//!   per segment;
//! - [`catalog`]: writing `backup.backups` from manifests;
//! - [`spi`]: transactions and SPI helpers shared by both.

use pgrx::prelude::*;

mod api;
mod archive_module;
mod catalog;
mod gucs;
mod spi;
mod worker;

::pgrx::pg_module_magic!(name, version);

pgrx::extension_sql_file!("../../sql/bootstrap.sql", name = "bootstrap", bootstrap);
pgrx::extension_sql_file!("../../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
#[allow(non_snake_case)]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
}

/// Version of the extension and of the repository format it writes.
#[pg_extern]
fn version() -> String {
    format!("pg_backup_ext {} (repository format {})", env!("CARGO_PKG_VERSION"), backup_core::repo::REPO_FORMAT)
}
