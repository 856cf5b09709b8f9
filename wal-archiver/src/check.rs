//! `wal-archiver check`: every condition archiving depends on, each reported on its own line, so
//! an operator sees all that is wrong at once rather than one error per attempt.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use backup_core::config::{refuse_repo_inside_pgdata, Config};
use backup_core::pg::cluster::ClusterIdentity;
use backup_core::pg::wal::WalFileName;
use backup_core::pg::PgRepo;
use backup_core::repo::Repository;
use backup_core::storage::PutMode;

struct Report {
    failed: usize,
}

impl Report {
    fn item<T>(&mut self, what: &str, result: Result<T>) -> Option<T> {
        match result {
            Ok(v) => {
                println!("ok    {what}");
                Some(v)
            }
            Err(e) => {
                println!("FAIL  {what}: {e:#}");
                self.failed += 1;
                None
            }
        }
    }
}

pub fn run(config_path: Option<&Path>, pgdata: Option<&Path>, dbname: Option<&str>, timeout: Duration) -> Result<ExitCode> {
    let mut r = Report { failed: 0 };
    let Some(config) = r.item("configuration", Config::load(config_path).map_err(Into::into)) else {
        return finish(r);
    };
    if config.encryption {
        r.item("key file", Repository::keys_for(&config).map(|_| ()).map_err(Into::into));
    }
    // Every repository: a remote one that is down is better found now than by archive_command.
    let all = config.repositories();
    let identity = pgdata.and_then(|p| r.item("data directory readable", ClusterIdentity::from_pgdata(p).map_err(Into::into)));
    let mut primary = None;
    for (i, rc) in all.iter().enumerate() {
        let label = |what: &str| if all.len() > 1 { format!("repository {}: {what}", rc.name) } else { format!("repository {what}") };
        if let Some(pgdata) = pgdata {
            r.item(&label("outside the data directory"), refuse_repo_inside_pgdata(&rc.location, pgdata).map_err(Into::into));
        }
        let repo = r.item(&label("reachable and initialized"), PgRepo::open_repo(&config, rc).map_err(Into::into));
        if let Some(repo) = &repo {
            r.item(&label("writable"), probe_write(repo));
            if let Some(id) = &identity {
                let theirs = repo.cluster().system_id;
                r.item(
                    &label("belongs to this cluster"),
                    if id.system_id == theirs { Ok(()) } else { Err(anyhow!("cluster is {}, repository is for {theirs}", id.system_id)) },
                );
            }
        }
        if i == 0 {
            primary = repo;
        }
    }
    if all.is_empty() {
        r.item("repository configured", config.primary_repo().map(|_| ()).map_err(Into::into));
    }
    let repo = primary;
    if let Some(conninfo) = dbname {
        if let Some(mut client) = r.item("server connection", postgres::Client::connect(conninfo, postgres::NoTls).map_err(Into::into)) {
            r.item("archive_mode and archive_command (or archive_library)", archive_settings(&mut client));
            if let Some(repo) = &repo {
                r.item("a switched WAL segment reaches the repository", archive_round_trip(&mut client, repo, timeout));
            }
        }
    }
    finish(r)
}

fn finish(r: Report) -> Result<ExitCode> {
    if r.failed == 0 {
        println!("all checks passed");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} check(s) failed", r.failed);
        Ok(ExitCode::FAILURE)
    }
}

fn probe_write(repo: &PgRepo) -> Result<()> {
    let key = format!("check/probe-{}", std::process::id());
    let (s, ctx) = (repo.objects().storage(), repo.objects().ctx());
    s.put(&ctx, &key, b"wal-archiver check", PutMode::Overwrite)?;
    let back = s.get_bytes(&ctx, &key)?;
    s.delete(&ctx, &key)?;
    if back != b"wal-archiver check" {
        bail!("read back different bytes from {key}");
    }
    Ok(())
}

fn archive_settings(client: &mut postgres::Client) -> Result<()> {
    let mode: String = client.query_one("SHOW archive_mode", &[])?.get(0);
    let command: String = client.query_one("SHOW archive_command", &[])?.get(0);
    let library: String = client.query_one("SHOW archive_library", &[])?.get(0);
    if mode == "off" {
        bail!("archive_mode is off; set archive_mode = on and restart the server");
    }
    if library == "pg_backup_ext" {
        // The extension's archive module: same push, inside the archiver (the WAL-switch check
        // that follows proves it reaches this repository).
        return Ok(());
    }
    if !library.is_empty() {
        bail!("archive_library is set to {library:?}, so archive_command is ignored; use archive_library = 'pg_backup_ext' or unset it");
    }
    if !(command.contains("wal-archiver") && command.contains("push") && command.contains("%p")) {
        bail!("archive_command is {command:?}; expected something like 'wal-archiver --config FILE push %p'");
    }
    Ok(())
}

/// Force a segment switch and wait for that segment to appear in the repository, the way the
/// server itself would archive it.
fn archive_round_trip(client: &mut postgres::Client, repo: &PgRepo, timeout: Duration) -> Result<()> {
    // A restore point guarantees there is WAL to switch away from.
    client.execute("SELECT pg_create_restore_point('wal-archiver check')", &[])?;
    let name: String = client.query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])?.get(0);
    let key = WalFileName::parse(&name)?.object_key();
    let start = Instant::now();
    while start.elapsed() < timeout {
        if repo.objects().storage().exists(&repo.objects().ctx(), &key)? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let row = client.query_one("SELECT coalesce(last_failed_wal, ''), failed_count FROM pg_stat_archiver", &[])?;
    let (failed_wal, failed_count): (String, i64) = (row.get(0), row.get(1));
    bail!(
        "{name} was not archived within {timeout:?} (pg_stat_archiver: {failed_count} failures, last failed {failed_wal:?}); see the server log for archive_command errors"
    )
}
