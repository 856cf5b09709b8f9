//! What a base backup copies: the data directory and its tablespaces, minus what PostgreSQL's
//! documentation ("Making a Base Backup Using the Low Level API") says to leave out.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::manifest::{DirEntry, Tablespace};
use crate::pg::walsummary::{Fork, RelationFile};

/// Directories whose contents are recreated empty by the server (or are meaningless in a copy).
const EXCLUDED_DIR_CONTENTS: &[&str] =
    &["pg_wal", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots", "pg_stat_tmp", "pg_subtrans"];

/// Files never copied: server lock and options, in-progress temporaries, relcache init files
/// (rebuilt at startup), and any backup_label/tablespace_map left by an old exclusive backup
/// (ours come from pg_backup_stop).
const EXCLUDED_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "pg_internal.init",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "backup_manifest",
    "recovery.signal",
    "standby.signal",
];

#[derive(Clone, Debug)]
pub struct SourceFile {
    /// Path in the manifest (relative to the data directory, tablespaces under pg_tblspc/<oid>/).
    pub rel: String,
    pub abs: PathBuf,
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
    /// Relation data file: block number of its first page, for page checksum verification.
    pub first_block: Option<u32>,
    /// A main-fork relation segment: every page carries the LSN of its last WAL-logged change,
    /// so an incremental backup can store only the pages changed since its parent. Other forks
    /// are copied whole: the free space map is not WAL-logged, and visibility map bits are
    /// cleared without advancing the page's LSN (a delta would miss the clearing).
    pub paged: bool,
}

#[derive(Debug, Default)]
pub struct Scan {
    pub directories: Vec<DirEntry>,
    pub files: Vec<SourceFile>,
    pub tablespaces: Vec<Tablespace>,
}

impl Scan {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

pub fn scan_pgdata(pgdata: &Path) -> std::io::Result<Scan> {
    let mut scan = Scan::default();
    walk(pgdata, "", &mut scan)?;
    // Tablespaces: pg_tblspc/<oid> are symlinks to their locations; back up what they hold.
    let tblspc = pgdata.join("pg_tblspc");
    if let Ok(entries) = fs::read_dir(&tblspc) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(oid) = name.parse::<u32>() else { continue };
            let target = fs::read_link(entry.path())?;
            scan.tablespaces.push(Tablespace { oid, location: target.display().to_string() });
            let rel = format!("pg_tblspc/{oid}");
            scan.directories.push(DirEntry { path: rel.clone(), mode: 0o700 });
            walk(&entry.path(), &rel, &mut scan)?;
        }
    }
    scan.tablespaces.sort_by_key(|t| t.oid);
    Ok(scan)
}

fn walk(dir: &Path, rel: &str, scan: &mut Scan) -> std::io::Result<()> {
    let mut entries: Vec<_> = match fs::read_dir(dir) {
        Ok(e) => e.flatten().collect(),
        // A directory dropped while we walk (DROP DATABASE) is simply no longer part of the backup.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    entries.sort_by_key(|e| e.file_name());
    let names: HashSet<String> = entries.iter().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    let unlogged = unlogged_relations(&names);
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let child_rel = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
        let meta = match fs::symlink_metadata(entry.path()) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if rel.is_empty() && name == "pg_tblspc" {
            // The links themselves are recreated from the tablespace list.
            scan.directories.push(DirEntry { path: child_rel, mode: meta.permissions().mode() & 0o7777 });
            continue;
        }
        if name.starts_with("pgsql_tmp") || is_temp_relation(&name) {
            continue;
        }
        if meta.is_dir() {
            scan.directories.push(DirEntry { path: child_rel.clone(), mode: meta.permissions().mode() & 0o7777 });
            if rel.is_empty() && EXCLUDED_DIR_CONTENTS.contains(&name.as_str()) {
                if name == "pg_wal" {
                    scan.directories.push(DirEntry { path: "pg_wal/archive_status".into(), mode: 0o700 });
                }
                continue;
            }
            walk(&entry.path(), &child_rel, scan)?;
        } else if meta.is_file() {
            if EXCLUDED_FILES.contains(&name.as_str()) {
                continue;
            }
            if let Some(node) = relation_node(&name) {
                if unlogged.contains(node.filenode) && node.fork != Some("init") {
                    continue; // unlogged relation: only its init fork survives a restore
                }
            }
            let relation = RelationFile::parse(&child_rel);
            let first_block = relation.map(|r| r.block_span().0 as u32);
            let paged = relation.is_some_and(|r| r.fork == Fork::Main);
            scan.files.push(SourceFile {
                rel: child_rel,
                abs: entry.path(),
                size: meta.len(),
                mode: meta.permissions().mode() & 0o7777,
                mtime: meta.mtime(),
                first_block,
                paged,
            });
        }
        // Other symlinks and special files in the data directory are not PostgreSQL's.
    }
    Ok(())
}

struct RelationNode<'a> {
    filenode: &'a str,
    fork: Option<&'a str>,
}

/// `16384`, `16384_fsm`, `16384.2`, `16384_vm.1`, `16384_init`.
fn relation_node(name: &str) -> Option<RelationNode<'_>> {
    let base = match name.split_once('.') {
        Some((b, segment)) => segment.parse::<u32>().ok().map(|_| b)?,
        None => name,
    };
    let (filenode, fork) = match base.split_once('_') {
        Some((n, f)) if ["fsm", "vm", "init"].contains(&f) => (n, Some(f)),
        Some(_) => return None,
        None => (base, None),
    };
    (!filenode.is_empty() && filenode.bytes().all(|b| b.is_ascii_digit())).then_some(RelationNode { filenode, fork })
}

fn unlogged_relations(names: &HashSet<String>) -> HashSet<String> {
    names.iter().filter_map(|n| n.strip_suffix("_init")).filter(|n| n.bytes().all(|b| b.is_ascii_digit())).map(str::to_string).collect()
}

/// `t3_16384`: relations of temporary tables, private to a backend.
fn is_temp_relation(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else { return false };
    let Some((backend, node)) = rest.split_once('_') else { return false };
    !backend.is_empty() && backend.bytes().all(|b| b.is_ascii_digit()) && relation_node(node).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusions_follow_the_documentation() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["base/5", "global", "pg_wal/archive_status", "pg_replslot/slot", "pg_stat_tmp", "pg_tblspc", "base/5/pgsql_tmp"] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        for f in [
            "PG_VERSION", "postmaster.pid", "postmaster.opts", "global/pg_control", "global/pg_internal.init",
            "base/5/16384", "base/5/16384_fsm", "base/5/16384.1", "base/5/20000", "base/5/20000_init", "base/5/20000_fsm",
            "base/5/t3_30000", "base/5/pgsql_tmp/pgsql_tmp1.0", "pg_wal/000000010000000000000001",
            "pg_replslot/slot/state", "pg_stat_tmp/global.stat", "backup_label",
        ] {
            fs::write(d.join(f), b"x").unwrap();
        }
        let scan = scan_pgdata(d).unwrap();
        let files: Vec<&str> = scan.files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(files, ["PG_VERSION", "base/5/16384", "base/5/16384.1", "base/5/16384_fsm", "base/5/20000_init", "global/pg_control"]);
        let dirs: Vec<&str> = scan.directories.iter().map(|d| d.path.as_str()).collect();
        for kept_empty in ["pg_wal", "pg_wal/archive_status", "pg_replslot", "pg_stat_tmp", "pg_tblspc"] {
            assert!(dirs.contains(&kept_empty), "{kept_empty} missing from {dirs:?}");
        }
        assert!(!dirs.iter().any(|d| d.contains("pgsql_tmp") || *d == "pg_replslot/slot"));
        let seg1 = scan.files.iter().find(|f| f.rel == "base/5/16384.1").unwrap();
        assert_eq!(seg1.first_block, Some(131072));
        assert_eq!(scan.files.iter().find(|f| f.rel == "PG_VERSION").unwrap().first_block, None);
        let paged: Vec<&str> = scan.files.iter().filter(|f| f.paged).map(|f| f.rel.as_str()).collect();
        assert_eq!(paged, ["base/5/16384", "base/5/16384.1"], "main forks only; not fsm, init or pg_control");
    }
}
