//! Fixtures and helpers shared by the test files: clusters wired to a fresh repository,
//! the backup catalog as the extension shows it, and the repository's own backup list.

use serde_json::Value;

use crate::{Archiver, Cluster};

/// A fresh repository (`init` on the cluster's data directory) and a started cluster
/// archiving into it with `wal-archiver push`, with `extra` settings on top.
pub fn archiving_cluster(label: &str, extra: &[(&str, &str)]) -> (Archiver, Cluster) {
    let archiver = Archiver::new(label);
    let cluster = Cluster::initdb(label);
    archiver.init(&cluster.pgdata).assert_ok(&format!("{label}: init repository"));
    cluster.enable_archiving(&archiver);
    cluster.set(extra);
    cluster.start();
    (archiver, cluster)
}

/// Like [`archiving_cluster`], with `pg_backup_ext` preloaded and configured with the
/// archiver's configuration file (`backup.config_file`), `extra` settings on top, and the
/// extension created.
pub fn extension_cluster(label: &str, extra: &[(&str, &str)]) -> (Archiver, Cluster) {
    extension_cluster_for(Archiver::new(label), label, extra)
}

/// [`extension_cluster`] with a given archiver configuration (several repositories, say).
pub fn extension_cluster_for(archiver: Archiver, label: &str, extra: &[(&str, &str)]) -> (Archiver, Cluster) {
    let cluster = Cluster::initdb(label);
    archiver.init(&cluster.pgdata).assert_ok(&format!("{label}: init repository"));
    cluster.enable_archiving(&archiver);
    let config = archiver.config_path.to_string_lossy().into_owned();
    // The scheduler stays off unless a test turns it on: its default jobs would start backups
    // in the middle of other tests.
    let mut settings =
        vec![("shared_preload_libraries", "pg_backup_ext"), ("backup.config_file", config.as_str()), ("backup.scheduler", "off")];
    settings.extend_from_slice(extra);
    cluster.set(&settings);
    cluster.start();
    cluster.psql("CREATE EXTENSION pg_backup_ext");
    (archiver, cluster)
}

/// The value of a one-row, one-column json/jsonb query.
#[track_caller]
pub fn sql_json(c: &Cluster, sql: &str) -> Value {
    let text = c.psql(sql);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("`{sql}` did not return JSON ({e}): {text:?}"))
}

/// Status and error text (empty when none) of backup `id` in `backup.list()`, if it is listed.
pub fn sql_status(c: &Cluster, id: &str) -> Option<(String, String)> {
    let row = c.psql(&format!("SELECT status || '|' || coalesce(error, '') FROM backup.list() WHERE id = '{id}'"));
    if row.is_empty() {
        return None;
    }
    let (status, error) = row.split_once('|').unwrap();
    Some((status.to_string(), error.to_string()))
}

/// `wal-archiver list --output json`: the `backups` array.
#[track_caller]
pub fn cli_list(archiver: &Archiver, step: &str) -> Vec<Value> {
    let r = archiver.run(&["list", "--output", "json"]);
    r.assert_ok(&format!("{step}: wal-archiver list"));
    let v: Value =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{step}: list printed invalid JSON ({e}):\n{r}"));
    v["backups"].as_array().unwrap_or_else(|| panic!("{step}: list has no `backups` array:\n{r}")).clone()
}

/// The ids of [`cli_list`], in its order.
#[track_caller]
pub fn cli_list_ids(archiver: &Archiver, step: &str) -> Vec<String> {
    cli_list(archiver, step).iter().map(|b| b["id"].as_str().unwrap_or("").to_string()).collect()
}

/// Fail at once, listing what is missing, when the installed extension lacks part of the SQL
/// API (rather than with an obscure SQL error somewhere in the middle of a test).
#[track_caller]
pub fn require_sql_api(c: &Cluster) {
    // (signature, what pg_get_function_result must say, or contain for list())
    let functions: &[(&str, &[&str])] = &[
        ("backup.start_full(boolean,text)", &["text"]),
        ("backup.start_incremental(boolean,text)", &["text"]),
        (
            "backup.list()",
            &[
                "id text",
                "type text",
                "status text",
                "start_lsn pg_lsn",
                "stop_lsn pg_lsn",
                "timeline integer",
                "start_time timestamp with time zone",
                "stop_time timestamp with time zone",
                "size_bytes bigint",
                "stored_bytes bigint",
                "file_count bigint",
                "duration interval",
                "error text",
                "parent text",
                "chain_depth integer",
                "changed_blocks bigint",
                "repos text[]",
            ],
        ),
        ("backup.get(text)", &["jsonb"]),
        ("backup.verify(text,text)", &["jsonb"]),
        ("backup.find(timestamptz)", &["text"]),
        ("backup.delete(text,boolean,text)", &["void"]),
        ("backup.copy(text,text,text)", &["jsonb"]),
        ("backup.resync()", &["integer"]),
        ("backup.create_restore_point(text)", &["pg_lsn"]),
    ];
    let mut missing = Vec::new();
    for (signature, result) in functions {
        let got =
            c.psql(&format!("SELECT coalesce(pg_get_function_result(to_regprocedure('{signature}')), '(missing)')"));
        let ok = if result.len() == 1 { got == result[0] } else { result.iter().all(|col| got.contains(col)) };
        if !ok {
            missing.push(format!("function {signature} returning {}: found {got}", result.join(", ")));
        }
    }
    let view = c.psql(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'backup' AND table_name = 'progress' \
         AND column_name IN ('id', 'phase', 'bytes_done', 'bytes_total', 'rate_bytes_per_sec')",
    );
    if view != "5" {
        missing.push("view backup.progress (id, phase, bytes_done, bytes_total, rate_bytes_per_sec)".into());
    }
    if c.psql("SELECT to_regclass('backup.backups') IS NOT NULL") != "t" {
        missing.push("table backup.backups".into());
    }
    let present = c.psql(
        "SELECT string_agg(p.oid::regprocedure::text, ', ' ORDER BY 1) FROM pg_proc p \
         JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'backup'",
    );
    assert!(
        missing.is_empty(),
        "pg_backup_ext as installed in the system PostgreSQL lacks part of the SQL API:\n  {}\n\
         functions present in schema backup: {present}",
        missing.join("\n  ")
    );
}
