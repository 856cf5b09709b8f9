//! A repository: the one place backups and WAL of one cluster live, and the truth about them.
//!
//! `repo.json` at its root records whose repository it is (system identifier, major version, WAL
//! segment size) and whether its objects are encrypted. It is written once, create-if-absent, by
//! `init`; everything that writes afterwards checks it first, so a misconfigured server can never
//! mix its WAL into another cluster's archive.

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError, Compression, DecodeSummary, EncodeParams, EncodeSummary, Trailer, TRAILER_LEN};
use crate::cluster::ClusterIdentity;
use crate::config::{Config, ConfigError};
use crate::keys::{KeyError, KeyRing};
use crate::storage::{LocalStorage, PutMode, PutOutcome, Storage, StorageError};
use crate::wal::SystemId;

pub const REPO_FORMAT: u32 = 1;
const INFO_KEY: &str = "repo.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encryption {
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
    #[serde(rename = "none")]
    None,
}

impl std::fmt::Display for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encryption::Aes256Gcm => "aes-256-gcm",
            Encryption::None => "none",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoInfo {
    pub format: u32,
    pub system_identifier: SystemId,
    pub pg_version: u32,
    pub wal_segment_size: u32,
    pub encryption: Encryption,
    pub created: chrono::DateTime<chrono::Utc>,
}

pub struct Repository {
    storage: Box<dyn Storage>,
    pub info: RepoInfo,
    keys: Option<KeyRing>,
    compression: Compression,
    codec_threads: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum InitOutcome {
    Created,
    AlreadyInitialized,
}

impl Repository {
    /// Storage named by the configuration (local directories for now).
    pub fn storage_for(config: &Config) -> Result<Box<dyn Storage>, RepoError> {
        Ok(Box::new(LocalStorage::new(config.repo_path()?)))
    }

    /// Key ring named by the configuration, or `None` when encryption is off.
    pub fn keys_for(config: &Config) -> Result<Option<KeyRing>, RepoError> {
        if !config.encryption {
            return Ok(None);
        }
        let path = config.key_file.as_deref().ok_or(RepoError::NoKeyFile)?;
        let passphrase = config.key_passphrase_file.as_deref().map(crate::keys::read_passphrase_file).transpose()?;
        Ok(Some(KeyRing::load(path, passphrase.as_deref())?))
    }

    /// Create the repository for `cluster`. Running it again for the same cluster is harmless;
    /// for another cluster it is an error.
    pub fn init(storage: &dyn Storage, cluster: &ClusterIdentity, encryption: Encryption) -> Result<InitOutcome, RepoError> {
        let info = RepoInfo {
            format: REPO_FORMAT,
            system_identifier: cluster.system_id,
            pg_version: cluster.pg_version,
            wal_segment_size: cluster.wal_segment_size,
            encryption,
            created: chrono::Utc::now(),
        };
        let body = serde_json::to_vec_pretty(&info).expect("serializable");
        match storage.put(INFO_KEY, &body, PutMode::IfAbsent)? {
            PutOutcome::Created => Ok(InitOutcome::Created),
            PutOutcome::AlreadyExists => {
                let existing = read_info(storage)?;
                if existing.system_identifier != cluster.system_id {
                    return Err(RepoError::OtherCluster {
                        location: storage.location(),
                        repo: existing.system_identifier,
                        cluster: cluster.system_id,
                    });
                }
                Ok(InitOutcome::AlreadyInitialized)
            }
        }
    }

    /// Open an initialized repository with the configuration's keys and codec settings.
    pub fn open(config: &Config) -> Result<Repository, RepoError> {
        let storage = Self::storage_for(config)?;
        let keys = Self::keys_for(config)?;
        Self::open_with(storage, keys, config.compression())
    }

    pub fn open_with(storage: Box<dyn Storage>, keys: Option<KeyRing>, compression: Compression) -> Result<Repository, RepoError> {
        let info = read_info(storage.as_ref())?;
        if info.format > REPO_FORMAT {
            return Err(RepoError::NewerFormat { location: storage.location(), format: info.format });
        }
        match (info.encryption, keys.is_some()) {
            (Encryption::Aes256Gcm, false) => return Err(RepoError::EncryptionMismatch { location: storage.location(), repo: info.encryption }),
            (Encryption::None, true) => return Err(RepoError::EncryptionMismatch { location: storage.location(), repo: info.encryption }),
            _ => {}
        }
        Ok(Repository { storage, info, keys, compression, codec_threads: 1 })
    }

    pub fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    pub fn location(&self) -> String {
        self.storage.location()
    }

    pub fn keys(&self) -> Option<&KeyRing> {
        self.keys.as_ref()
    }

    pub(crate) fn encode_params(&self) -> EncodeParams<'_> {
        EncodeParams { compression: self.compression, key: self.keys.as_ref().map(KeyRing::newest), threads: self.codec_threads }
    }

    /// Compress (and decompress) each object's blocks on up to `threads` threads (1 by default).
    /// Worth it where one object is all there is to do: a WAL segment, the largest files of a
    /// backup or restore.
    pub fn set_codec_threads(&mut self, threads: usize) {
        self.codec_threads = threads.max(1);
    }

    pub fn codec_threads(&self) -> usize {
        self.codec_threads
    }

    /// Stream `input` into a new object `key`. With [`PutMode::IfAbsent`] an existing object is
    /// left alone and `Ok(None)` returned.
    pub fn put_object(&self, key: &str, input: &mut dyn std::io::Read, mode: PutMode) -> Result<Option<EncodeSummary>, RepoError> {
        let mut writer = self.storage.writer(key, mode)?;
        let summary = codec::encode(input, &mut writer, key, self.encode_params()).map_err(|e| RepoError::codec(key, e))?;
        match writer.commit()? {
            PutOutcome::Created => Ok(Some(summary)),
            PutOutcome::AlreadyExists => Ok(None),
        }
    }

    /// Decode object `key` into `output`, authenticated and digest-checked.
    pub fn get_object(&self, key: &str, output: &mut dyn std::io::Write) -> Result<DecodeSummary, RepoError> {
        let mut reader = std::io::BufReader::with_capacity(1 << 20, self.storage.get(key)?);
        codec::decode(&mut reader, output, key, self.keys.as_ref()).map_err(|e| RepoError::codec(key, e))
    }

    /// Size and SHA-256 of an object's plaintext, from its trailer: no key, no full download.
    pub fn object_trailer(&self, key: &str) -> Result<Trailer, RepoError> {
        let meta = self.storage.head(key)?.ok_or_else(|| StorageError::NotFound { key: key.to_string() })?;
        if meta.size < TRAILER_LEN {
            return Err(RepoError::codec(key, CodecError::Truncated));
        }
        let tail = self.storage.get_range(key, meta.size - TRAILER_LEN..meta.size)?;
        Trailer::parse(&tail).map_err(|e| RepoError::codec(key, e))
    }
}

fn read_info(storage: &dyn Storage) -> Result<RepoInfo, RepoError> {
    let bytes = storage.get_bytes(INFO_KEY).map_err(|e| match e {
        StorageError::NotFound { .. } => RepoError::NotInitialized { location: storage.location() },
        other => RepoError::Storage(other),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| RepoError::BadInfo { location: storage.location(), reason: e.to_string() })
}

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("no repository at {location} (no repo.json); create it with: wal-archiver init --pgdata DATADIR")]
    NotInitialized { location: String },
    #[error("repository {location}: repo.json is unreadable ({reason})")]
    BadInfo { location: String, reason: String },
    #[error("repository {location} has format {format}, newer than this program; upgrade it")]
    NewerFormat { location: String, format: u32 },
    #[error("repository {location} belongs to database system {repo}, not to this cluster ({cluster}); point this cluster at its own repository")]
    OtherCluster { location: String, repo: SystemId, cluster: SystemId },
    #[error("repository {location} was created with encryption '{repo}', which the configuration's encryption setting contradicts; fix the configuration (encryption / key_file)")]
    EncryptionMismatch { location: String, repo: Encryption },
    #[error("encryption is on but no key file is configured: create one with 'wal-archiver keygen --output FILE' and set key_file (or set encryption = false explicitly)")]
    NoKeyFile,
    #[error("backup {id} does not exist in repository {location}; list backups with 'wal-archiver list' or SELECT * FROM backup.list()")]
    UnknownBackup { id: String, location: String },
    #[error("backup {0} already has a manifest; refusing to overwrite it")]
    BackupExists(String),
    #[error("{0}")]
    NoBackupForTarget(String),
    #[error("object {object}: {cause}")]
    Codec { object: String, cause: CodecError },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl RepoError {
    pub fn codec(object: &str, cause: CodecError) -> RepoError {
        RepoError::Codec { object: object.to_string(), cause }
    }
}
