//! Backups from SQL under conditions a DBA meets: tablespaces, a corrupt page on disk, the
//! server shutting down in the middle of a backup.

use e2e::*;
use std::fs;
use std::os::unix::fs::FileExt;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(240);

/// Status and error text of backup `id` in `backup.list()`, which must list it.
#[track_caller]
fn row(cluster: &Cluster, id: &str) -> (String, String) {
    sql_status(cluster, id).unwrap_or_else(|| panic!("backup {id} not in backup.list()"))
}

#[test]
fn tablespace_is_backed_up_and_restored_into_a_remapped_location() {
    let (archiver, cluster) = extension_cluster("tblspc", &[]);
    let location = cluster.dir().mkdir("ts_original");
    cluster.psql(&format!("CREATE TABLESPACE ts1 LOCATION '{}'", location.display()));
    cluster.psql("CREATE TABLE in_ts TABLESPACE ts1 AS SELECT g, md5(g::text) AS h FROM generate_series(1, 20000) g");
    let oid = cluster.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'").trim().to_string();
    let expected = cluster.psql("SELECT count(*) || ':' || md5(string_agg(h, '' ORDER BY g)) FROM in_ts");

    let id = cluster.psql("SELECT backup.start_full(wait => true)").trim().to_string();
    let manifest = cluster.psql(&format!("SELECT backup.get('{id}')->'manifest'->'tablespaces'"));
    assert!(manifest.contains(&oid), "manifest lists no tablespace {oid}: {manifest}");

    let restored = Cluster::unpopulated("tblspc-restored");
    let new_location = restored.dir().join("ts_moved");
    // Restoring onto the original location (still in use) must be refused...
    let refused = archiver.run(&["restore", "--pgdata", restored.pgdata.to_str().unwrap(), "--backup-id", &id]);
    assert_eq!(refused.code, 1, "restore over a used tablespace location: {refused}");
    assert!(refused.stderr.contains(&oid), "refusal should name tablespace {oid}: {refused}");
    assert!(!restored.pgdata.exists(), "a refused restore wrote into the data directory");
    // ...and remapping it works.
    archiver
        .run(&[
            "restore", "--pgdata", restored.pgdata.to_str().unwrap(), "--backup-id", &id, "--target", "immediate",
            "--archive-mode", "off", "--tablespace-map", &format!("{oid}={}", new_location.display()),
        ])
        .assert_ok("restore with --tablespace-map");
    restored.start();
    restored.wait_recovery_done(WAIT);
    assert_eq!(restored.psql("SELECT count(*) || ':' || md5(string_agg(h, '' ORDER BY g)) FROM in_ts"), expected);
    let now_at = restored.psql(&format!("SELECT pg_tablespace_location({oid})"));
    assert_eq!(now_at.trim(), new_location.display().to_string());
}

#[test]
fn corrupt_page_is_reported_not_silently_stored() {
    // No autovacuum: nothing but the backup may read the damaged page.
    let (archiver, cluster) = extension_cluster("corrupt", &[("autovacuum", "off")]);
    cluster.psql("CREATE TABLE victim AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 5000) g");
    let path = cluster.psql("SELECT pg_relation_filepath('victim')").trim().to_string();
    cluster.psql("CHECKPOINT");
    cluster.stop();
    // Damage block 3 in the middle of its tuples (not the header), as a failing disk would.
    let file = fs::OpenOptions::new().read(true).write(true).open(cluster.pgdata.join(&path)).unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, 3 * 8192 + 4000).unwrap();
    byte[0] ^= 0xFF;
    file.write_all_at(&byte, 3 * 8192 + 4000).unwrap();
    drop(file);
    cluster.start();

    let id = cluster.psql("SELECT backup.start_full(wait => true)").trim().to_string();
    let failures = sql_json(&cluster, &format!("SELECT backup.get('{id}')->'manifest'->'page_checksum_failures'"));
    let list = failures.as_array().expect("an array of failures");
    assert_eq!(list.len(), 1, "expected exactly the damaged page: {failures}");
    assert_eq!(list[0]["path"], path.as_str());
    assert_eq!(list[0]["block"], 3);
    assert_eq!(cluster.psql(&format!("SELECT page_checksum_failures FROM backup.backups WHERE id = '{id}'")).trim(), "1");
    let warning = cluster.psql(&format!("SELECT message FROM backup.events WHERE backup_id = '{id}' AND level = 'warning'"));
    assert!(warning.contains(&path) && warning.contains("block 3"), "no warning naming the page: {warning:?}");
    // The backup itself is intact as stored (the corruption is the source's, and it is reported).
    let verify = archiver.run(&["verify", &id]);
    verify.assert_ok("verify of a backup with a reported corrupt page");
}

#[test]
fn server_shutdown_mid_backup_ends_it_failed() {
    // Throttled so that the backup is certainly still running when the server stops.
    let (archiver, cluster) = extension_cluster("shutdown", &[("backup.max_rate", "4MB"), ("backup.workers", "1")]);
    cluster.psql("CREATE TABLE filler AS SELECT g, md5(g::text) AS a, md5((-g)::text) AS b FROM generate_series(1, 400000) g");
    let id = cluster.psql("SELECT backup.start_full()").trim().to_string();
    wait_until("the backup to copy something", WAIT, || {
        cluster.psql(&format!("SELECT coalesce(bytes_done, 0) > 0 FROM backup.progress WHERE id = '{id}'")).trim() == "t"
    });
    // A fast shutdown signals the worker; it must stop copying and let the server go down.
    cluster.stop();
    cluster.start();
    let (status, error) = row(&cluster, &id);
    assert_eq!(status, "failed", "interrupted backup {id} is {status}");
    assert!(!error.trim().is_empty(), "a failed backup must say why");
    assert!(
        !cli_list_ids(&archiver, "after the shutdown").contains(&id),
        "an interrupted backup is listed in the repository"
    );

    cluster.psql("ALTER SYSTEM SET backup.max_rate = 0");
    cluster.psql("SELECT pg_reload_conf()");
    let next = cluster.psql("SELECT backup.start_full(wait => true)").trim().to_string();
    assert_eq!(row(&cluster, &next).0, "completed");
    assert!(cli_list_ids(&archiver, "next backup").contains(&next));
}
