//! What is PostgreSQL's: a repository that belongs to one cluster, its WAL archive and its
//! base backups.
//!
//! [`PgRepo`] is a [`Repository`] plus the identity of the cluster that owns it, checked on
//! every open; [`PgRepo::wal`] and [`PgRepo::backups`] are the two things it holds:
//! - [`wal`]: LSNs, timelines, WAL file names, page headers;
//! - [`cluster`]: a cluster's identity read from its data directory;
//! - [`archive`]: `archive_command` / `restore_command` semantics;
//! - [`backup`]: what a base backup copies, how, its manifest, the backups a repository holds,
//!   and restore;
//! - [`retention`]: which backups and WAL a repository keeps, and deleting the rest;
//! - [`repos`]: several repositories of one cluster (WAL into all, fetch from the first that
//!   has it, catching up a best-effort repository);
//! - [`prefetch`]: `restore_command`'s spool of the next segments, fetched ahead in parallel.

pub mod archive;
pub mod backup;
pub mod cluster;
pub mod prefetch;
pub mod repos;
pub mod retention;
pub mod usage;
pub mod wal;
pub mod walsummary;

use crate::config::{Config, RepoConfig};
use crate::repo::{Encryption, InitOutcome, RepoError, Repository};
use crate::storage::{Storage, StorageError};
use archive::WalArchive;
use backup::inventory::Backups;
use cluster::ClusterIdentity;
use wal::SystemId;

/// A repository and the cluster it belongs to.
pub struct PgRepo {
    objects: Repository,
    cluster: ClusterIdentity,
}

impl PgRepo {
    /// Create the repository for `cluster`. Running it again for the same cluster is harmless;
    /// for another cluster it is an error.
    pub fn init(storage: &dyn Storage, cluster: &ClusterIdentity, encryption: Encryption) -> Result<InitOutcome, PgRepoError> {
        let owner = match serde_json::to_value(cluster).expect("serializable") {
            serde_json::Value::Object(map) => map,
            _ => unreachable!("a struct serializes to an object"),
        };
        let outcome = Repository::init(storage, encryption, owner)?;
        if let InitOutcome::AlreadyInitialized(existing) = &outcome {
            let theirs = identity(existing, storage.location())?;
            if theirs.system_id != cluster.system_id {
                return Err(PgRepoError::OtherCluster { location: storage.location(), repo: theirs.system_id, cluster: cluster.system_id });
            }
        }
        Ok(outcome)
    }

    /// The configuration's primary repository.
    pub fn open(config: &Config) -> Result<PgRepo, PgRepoError> {
        PgRepo::open_repo(config, &config.primary_repo().map_err(RepoError::from)?)
    }

    pub fn open_repo(config: &Config, repo: &RepoConfig) -> Result<PgRepo, PgRepoError> {
        PgRepo::from_repository(Repository::open(config, repo)?)
    }

    pub fn from_repository(objects: Repository) -> Result<PgRepo, PgRepoError> {
        let cluster = identity(&objects.info, objects.location())?;
        Ok(PgRepo { objects, cluster })
    }

    pub fn cluster(&self) -> &ClusterIdentity {
        &self.cluster
    }

    /// The generic repository underneath: objects, keys, storage.
    pub fn objects(&self) -> &Repository {
        &self.objects
    }

    pub fn objects_mut(&mut self) -> &mut Repository {
        &mut self.objects
    }

    pub fn location(&self) -> String {
        self.objects.location()
    }

    pub fn wal(&self) -> WalArchive<'_> {
        WalArchive::new(self)
    }

    pub fn backups(&self) -> Backups<'_> {
        Backups::new(self)
    }
}

fn identity(info: &crate::repo::RepoInfo, location: String) -> Result<ClusterIdentity, PgRepoError> {
    serde_json::from_value(serde_json::Value::Object(info.owner.clone())).map_err(|cause| PgRepoError::NoCluster { location, cause })
}

#[derive(Debug, thiserror::Error)]
pub enum PgRepoError {
    #[error("repository {location}: repo.json does not name the PostgreSQL cluster it belongs to")]
    NoCluster { location: String, #[source] cause: serde_json::Error },
    #[error("repository {location} belongs to database system {repo}, not to this cluster ({cluster}); point this cluster at its own repository")]
    OtherCluster { location: String, repo: SystemId, cluster: SystemId },
    #[error("backup {id} does not exist in repository {location}; list backups with 'wal-archiver list' or SELECT * FROM backup.list()")]
    UnknownBackup { id: String, location: String },
    #[error("backup {0} already has a manifest; refusing to overwrite it")]
    BackupExists(String),
    #[error("{0}")]
    NoBackupForTarget(String),
    #[error(transparent)]
    Chain(#[from] backup::incremental::ChainError),
    #[error("backup {id} is the base of {dependants}; delete those first, or all of them together (cascade)")]
    HasDependants { id: String, dependants: String },
    #[error("backup {id} has manifest format {format}, newer than this program ({known}); upgrade wal-archiver / pg_backup_ext")]
    NewerManifest { id: String, format: u32, known: u32 },
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl From<StorageError> for PgRepoError {
    fn from(e: StorageError) -> Self {
        PgRepoError::Repo(e.into())
    }
}

impl PgRepoError {
    pub fn codec(object: &str, cause: crate::codec::CodecError) -> PgRepoError {
        PgRepoError::Repo(RepoError::codec(object, cause))
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, PgRepoError::Repo(e) if e.is_not_found())
    }
}
