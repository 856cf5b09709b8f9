//! Base backups: what to copy from a data directory, how, and the manifest that makes a backup
//! restorable on its own.

pub mod copy;
pub mod incremental;
pub mod inventory;
pub mod manifest;
pub mod page;
pub mod replicate;
pub mod restore;
pub mod run;
pub mod scan;
pub mod session;

pub use manifest::{BackupId, BackupKind, Manifest};
