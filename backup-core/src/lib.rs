//! `backup-core`: everything about a backup repository that needs no running server.
//!
//! Two layers, the lower knowing nothing of the upper:
//! - generic, for any set of files: [`storage`] (one trait for local directories and object
//!   stores, fault injection, a conformance suite), [`codec`] (SHA-256 → zstd → chunked
//!   AES-256-GCM, streamed), [`keys`] (master keys, rotation, sealing), [`repo`] (a repository:
//!   encoded objects, its identity record, files packed into bundles), [`config`], [`threads`],
//!   [`error`];
//! - [`pg`], what is PostgreSQL's: WAL vocabulary, cluster identity, the WAL archive
//!   (`archive_command` / `restore_command`), base backups, their manifests, restore.
//!
//! `wal-archiver` and the `pg_backup_ext` extension are thin fronts over this crate. See
//! `docs/architecture.md` for where new backends, backup kinds and workers go.

/// Serialize a type as its `Display` text and read it back with `FromStr`: LSNs, WAL file
/// names, ids, digests and system identifiers are strings in every manifest and JSON output.
macro_rules! serde_as_string {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <String as serde::Deserialize>::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use serde_as_string;

/// Alerts: which health changes are told, when again, and when they are resolved (pure policy).
pub mod alerts;
pub mod codec;
pub mod config;
pub mod error;
/// backup.health(): the checks over what the extension observed (pure policy).
pub mod health;
/// What a scheduler does about a job's due or missed runs (pure policy over [`schedule`]).
pub mod jobs;
pub mod keys;
/// Prometheus metrics and the status page, rendered from what the extension gathered.
pub mod monitor;
/// Alert delivery: e-mail (SMTP), Slack, SMS through an HTTP API, a JSON webhook.
pub mod notify;
pub mod pg;
pub mod repo;
/// When the in-database scheduler runs a job: cron expressions in a time zone, clock changes.
pub mod schedule;
pub mod storage;
pub mod threads;
