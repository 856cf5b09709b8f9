//! What a restore test checks on the promoted scratch instance: the schema of every database
//! against the live cluster's (the copy was recovered to the end of the archive, so only DDL of
//! the last moments may differ, and that is worth a look), the user's checks
//! (`backup.restore_checks`), then `pg_amcheck` on every table and index of every database
//! (last: it installs `amcheck` in the copy). Each problem is one line naming what and where.

use std::process::Command;

use backup_core::pg::backup::restore::{schema_differences, SCHEMA_QUERY};
use pgrx::prelude::*;

use super::scratch_sql;
use crate::catalog::restores::{self as rows, Restore};
use crate::postgres::bgworker::transaction;

/// Problems found, at most a few per kind; empty when the restore is sound.
pub fn check(row: &Restore) -> Vec<String> {
    let mut problems = Vec::new();
    let databases = match scratch_sql(row, "postgres", "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1") {
        Ok(d) => d.lines().map(str::to_string).filter(|l| !l.is_empty()).collect::<Vec<_>>(),
        Err(e) => return vec![format!("listing the databases of the restored copy: {e}")],
    };
    for db in &databases {
        match (live_sql(db, SCHEMA_QUERY), scratch_sql(row, db, SCHEMA_QUERY)) {
            (Ok(live), Ok(restored)) => {
                let diff = schema_differences(&live, &restored);
                problems.extend(diff.iter().take(20).map(|d| format!("schema of database {db}: {d}")));
                if diff.len() > 20 {
                    problems.push(format!("schema of database {db}: {} more differences", diff.len() - 20));
                }
            }
            (Err(e), _) => problems.push(format!("reading the live schema of database {db}: {e}")),
            (_, Err(e)) => problems.push(format!("reading the restored schema of database {db}: {e}")),
        }
    }
    match transaction(|| Ok(rows::checks()?)) {
        Ok(checks) => {
            for (name, database, query) in checks {
                match scratch_sql(row, &database, &query) {
                    Ok(out) if out.trim() == "t" => {}
                    Ok(out) => problems.push(format!("check {name} (database {database}) returned {:?}, not true", out.trim())),
                    Err(e) => problems.push(format!("check {name} (database {database}) failed: {e}")),
                }
            }
        }
        Err(e) => problems.push(format!("reading backup.restore_checks: {e}")),
    }
    let amcheck = Command::new(crate::postgres::bin_directory().join("pg_amcheck"))
        .args(["-h", &row.socket_dir, "-p", &row.port.to_string(), "--all", "--install-missing", "--heapallindexed", "--no-strict-names"])
        .output();
    match amcheck {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            let first: Vec<&str> = text.lines().take(10).collect();
            problems.push(format!("pg_amcheck found corruption: {}", first.join(" | ")));
        }
        Err(e) => problems.push(format!("cannot run pg_amcheck (postgresql-contrib): {e}")),
    }
    problems
}

/// One query on the live cluster, in `database`, through its socket.
fn live_sql(database: &str, sql: &str) -> Result<String, String> {
    let socket = transaction(|| Ok(Spi::get_one::<String>("SELECT split_part(current_setting('unix_socket_directories'), ',', 1)")?.unwrap_or_default()))
        .map_err(|e| e.to_string())?;
    let out = Command::new(crate::postgres::bin_directory().join("psql"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", socket.trim(), "-p", &crate::postgres::server_port().to_string(), "-d", database, "-c", sql])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}
