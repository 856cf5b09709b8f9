//! Base backups: what to copy from a data directory, how, and the manifest that makes a backup
//! restorable on its own.

pub mod page;
