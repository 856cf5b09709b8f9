//! `pg_backup_ext`: the SQL face of the backup system.
//!
//! Loaded through `shared_preload_libraries` (its background workers need that), created with
//! `CREATE EXTENSION pg_backup_ext`, which puts everything in schema `backup`. The repository
//! format, codecs, copy and restore live in `backup-core`; this crate only speaks to PostgreSQL:
//! - [`gucs`]: `backup.*` settings;
//! - [`api`]: the SQL functions (`backup.start_full()`, `backup.get()`, `backup.verify()`, …);
//! - [`catalog`]: every statement on the `backup.*` tables, and the enums of their columns;
//! - [`health`]: what `backup.health()` and the scheduler's health job judge, gathered;
//! - [`stats`]: `backup.stats()`, the catalog's figures with the repositories' usage;
//! - [`backup_worker`]: the background worker that takes a backup;
//! - [`restore_worker`]: scratch restores (`backup.restore()`), each its own instance;
//! - [`scheduler`]: the static worker that runs `backup.schedules` (backups, verify,
//!   retention, health) by itself;
//! - [`alerter`]: the static worker that turns bad health checks into alerts (e-mail, Slack,
//!   SMS, webhook) and resolves them;
//! - [`http_server`]: `/metrics` for Prometheus and the status page (off unless
//!   `backup.http_listen` is set);
//! - [`archive_module`]: `archive_library = 'pg_backup_ext'`, WAL archiving without a process
//!   per segment;
//! - [`postgres`]: the only place with raw `pg_sys` calls: safe wrappers, the worker skeleton,
//!   SPI transactions, the archive module's C entry points.

use pgrx::prelude::*;

mod alerter;
mod api;
mod archive_module;
mod backup_worker;
mod catalog;
mod gucs;
mod health;
mod http_server;
mod postgres;
mod restore_worker;
mod scheduler;
mod stats;

::pgrx::pg_module_magic!(name, version);

pgrx::extension_sql_file!("../../sql/bootstrap.sql", name = "bootstrap", bootstrap);
pgrx::extension_sql_file!("../../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
#[allow(non_snake_case)]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    scheduler::register();
    alerter::register();
    http_server::register();
}

/// Version of the extension and of the repository format it writes.
#[pg_extern]
fn version() -> String {
    format!("pg_backup_ext {} (repository format {})", env!("CARGO_PKG_VERSION"), backup_core::repo::REPO_FORMAT)
}

/// `cargo pgrx test`: the in-server tests run in a cluster pgrx starts, with the extension
/// created; the end-to-end tests (tests/) drive real clusters from outside.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        // No configuration file: the repository functions must say so clearly.
        vec!["backup.config_file = '/nonexistent/pg_backup_ext.conf'"]
    }
}
