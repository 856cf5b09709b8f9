//! `backup-core`: everything about a backup repository that needs no running server.
//!
//! - [`storage`]: one trait for local directories and object stores, with a conformance suite;
//! - [`codec`]: the object format (SHA-256 → zstd → chunked AES-256-GCM), streamed;
//! - [`keys`]: master key files, rotation, optional passphrase sealing;
//! - [`config`]: the configuration file and `BACKUP_*` environment overrides;
//! - [`wal`]: PostgreSQL's WAL vocabulary (LSNs, file names, page headers);
//! - [`cluster`]: a cluster's identity read from its data directory;
//! - [`repo`]: the repository and its identity record;
//! - [`archive`]: `archive_command` / `restore_command` semantics.
//!
//! `wal-archiver` and the `pg_backup_ext` extension are thin fronts over this crate.

pub mod archive;
pub mod backup;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod keys;
pub mod repo;
pub mod storage;
pub mod threads;
pub mod wal;
