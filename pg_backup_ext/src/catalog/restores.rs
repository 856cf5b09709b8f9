//! SQL on `backup.restores` (defined in `sql/bootstrap.sql`): the scratch restores and where
//! each one stands.

use pgrx::prelude::*;
use pgrx::JsonB;
use serde::Deserialize;

use super::CatalogResult;

/// A row of `backup.restores`, as the worker and `restore_stop()` read it.
#[derive(Clone, Debug, Deserialize)]
pub struct Restore {
    pub id: i64,
    pub backup_id: Option<String>,
    pub target_kind: String,
    pub target_value: Option<String>,
    pub status: String,
    pub pgdata: String,
    pub socket_dir: String,
    pub port: i32,
    pub listen_tcp: bool,
    pub worker_pid: Option<i32>,
    pub purpose: String,
    pub table_name: Option<String>,
    pub mode: Option<String>,
    pub into_table: Option<String>,
    pub where_clause: Option<String>,
}

/// The next id, to name the scratch directory before the row exists.
pub fn next_id() -> CatalogResult<i64> {
    Ok(Spi::get_one::<i64>("SELECT nextval('backup.restores_id_seq')")?.expect("nextval gives a value"))
}

pub struct NewRestore<'a> {
    pub id: i64,
    pub backup_id: Option<&'a str>,
    pub target_kind: &'a str,
    pub target_value: Option<&'a str>,
    pub pgdata: &'a str,
    pub socket_dir: &'a str,
    pub port: i32,
    pub listen_tcp: bool,
    pub purpose: &'a str,
    pub table_name: Option<&'a str>,
    pub mode: Option<&'a str>,
    pub into_table: Option<&'a str>,
    pub where_clause: Option<&'a str>,
}

pub fn insert(r: &NewRestore) -> CatalogResult<()> {
    Spi::run_with_args(
        "INSERT INTO backup.restores (id, backup_id, target_kind, target_value, pgdata, socket_dir, port, listen_tcp, table_name, mode, into_table, where_clause, purpose)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        &[
            r.id.into(),
            r.backup_id.into(),
            r.target_kind.into(),
            r.target_value.into(),
            r.pgdata.into(),
            r.socket_dir.into(),
            r.port.into(),
            r.listen_tcp.into(),
            r.table_name.into(),
            r.mode.into(),
            r.into_table.into(),
            r.where_clause.into(),
            r.purpose.into(),
        ],
    )
}

pub fn get(id: i64) -> CatalogResult<Option<Restore>> {
    let json = Spi::get_one_with_args::<JsonB>("SELECT (SELECT to_jsonb(r) FROM backup.restores r WHERE id = $1)", &[id.into()])?;
    Ok(json.map(|j| serde_json::from_value(j.0).unwrap_or_else(|e| panic!("backup.restores row does not match its type: {e}"))))
}

/// The worker takes the row it was started for (once its caller has committed it).
pub fn claim(id: i64) -> CatalogResult<bool> {
    Ok(Spi::get_one_with_args::<bool>(
        "WITH c AS (UPDATE backup.restores SET status = 'restoring', worker_pid = pg_backend_pid() WHERE id = $1 AND status = 'starting' RETURNING 1)
         SELECT EXISTS (SELECT 1 FROM c)",
        &[id.into()],
    )?
    .unwrap_or(false))
}

pub fn progress(id: i64, done: i64, total: i64) -> CatalogResult<()> {
    Spi::run_with_args("UPDATE backup.restores SET bytes_done = $2, bytes_total = $3 WHERE id = $1", &[id.into(), done.into(), total.into()])
}

/// The files are in (`bytes`: their size, the final progress): recovery starts.
pub fn recovering(id: i64, backup_id: &str, bytes: i64) -> CatalogResult<()> {
    Spi::run_with_args(
        "UPDATE backup.restores SET status = 'recovering', restored_at = now(), backup_id = $2, bytes_done = $3, bytes_total = $3 WHERE id = $1",
        &[id.into(), backup_id.into(), bytes.into()],
    )
}

pub fn ready(id: i64, wal_replayed: Option<i64>) -> CatalogResult<()> {
    Spi::run_with_args("UPDATE backup.restores SET status = 'ready', ready_at = now(), wal_replayed_bytes = $2, worker_pid = NULL WHERE id = $1", &[id.into(), wal_replayed.into()])
}

pub fn failed(id: i64, error: &str) -> CatalogResult<()> {
    Spi::run_with_args("UPDATE backup.restores SET status = 'failed', error = $2, worker_pid = NULL WHERE id = $1", &[id.into(), error.into()])
}

pub fn stopped(id: i64) -> CatalogResult<()> {
    Spi::run_with_args("UPDATE backup.restores SET status = 'stopped', stopped_at = now(), worker_pid = NULL WHERE id = $1", &[id.into()])
}

/// Whether the worker `pid` still runs.
pub fn worker_alive(pid: i32) -> CatalogResult<bool> {
    Ok(Spi::get_one_with_args::<bool>("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND backend_type = 'pg_backup_ext restore')", &[pid.into()])?.unwrap_or(false))
}

pub fn copying(id: i64) -> CatalogResult<()> {
    Spi::run_with_args("UPDATE backup.restores SET status = 'copying' WHERE id = $1", &[id.into()])
}

pub fn done(id: i64, rows: i64, into_table: &str) -> CatalogResult<()> {
    Spi::run_with_args(
        "UPDATE backup.restores SET status = 'done', rows_copied = $2, into_table = $3, stopped_at = now(), worker_pid = NULL WHERE id = $1",
        &[id.into(), rows.into(), into_table.into()],
    )
}

/// A restore test's outcome, timed by phase from the restore's row.
pub fn record_test(id: i64, passed: bool, problems: Vec<String>) -> CatalogResult<()> {
    Spi::run_with_args(
        "INSERT INTO backup.restore_tests (restore_id, backup_id, status, problems, rto_seconds, restore_seconds, recovery_seconds, check_seconds, started_at)
         SELECT id, backup_id, CASE WHEN $2 THEN 'passed' ELSE 'failed' END, $3,
                extract(epoch FROM ready_at - started_at), extract(epoch FROM restored_at - started_at),
                extract(epoch FROM ready_at - restored_at), extract(epoch FROM now() - ready_at), started_at
           FROM backup.restores WHERE id = $1",
        &[id.into(), passed.into(), problems.into()],
    )
}

/// The user's checks: (name, database, query).
pub fn checks() -> CatalogResult<Vec<(String, String, String)>> {
    let json = Spi::get_one::<JsonB>("SELECT coalesce(jsonb_agg(jsonb_build_array(name, database, query) ORDER BY name), '[]') FROM backup.restore_checks")?;
    Ok(json.map(|j| serde_json::from_value(j.0).unwrap_or_default()).unwrap_or_default())
}
