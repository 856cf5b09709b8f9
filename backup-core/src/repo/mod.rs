//! A repository: encoded objects in a store, under a record of what the repository is.
//!
//! This layer knows objects and files, not PostgreSQL: every object goes through the codec
//! (checksum → compress → encrypt), [`files`] packs sets of files into bundles and reads them
//! back. What lives in it (WAL, base backups, later file sets and Redis snapshots) is decided
//! above, in [`crate::pg`] and its siblings.
//!
//! `repo.json` at its root records the format, whether objects are encrypted, and who owns the
//! repository (for PostgreSQL: the cluster's identity, checked by [`crate::pg::PgRepo`]). It is
//! written once, create-if-absent, by `init`.

pub mod files;

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError, Compression, DecodeSummary, EncodeParams, EncodeSummary, Trailer, TRAILER_LEN};
use crate::config::{Config, ConfigError, RepoConfig};
use crate::keys::{KeyError, KeyRing};
use crate::storage::{self, ByteRange, CancelToken, Ctx, PutMode, PutOutcome, Storage, StorageError, StorageErrorKind};

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

/// `repo.json`: the repository's own fields, and its owner's (kept as written, read by the
/// layer that knows what they mean).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RepoInfo {
    pub format: u32,
    pub encryption: Encryption,
    pub created: chrono::DateTime<chrono::Utc>,
    #[serde(flatten)]
    pub owner: serde_json::Map<String, serde_json::Value>,
}

pub struct Repository {
    storage: Box<dyn Storage>,
    pub info: RepoInfo,
    keys: Option<KeyRing>,
    compression: Compression,
    codec_threads: usize,
    cancel: CancelToken,
}

#[derive(Debug, PartialEq)]
pub enum InitOutcome {
    Created,
    /// `repo.json` was there already; its contents.
    AlreadyInitialized(RepoInfo),
}

impl Repository {
    /// Key ring named by the configuration, or `None` when encryption is off.
    pub fn keys_for(config: &Config) -> Result<Option<KeyRing>, RepoError> {
        if !config.encryption {
            return Ok(None);
        }
        let path = config.key_file.as_deref().ok_or(RepoError::NoKeyFile)?;
        let passphrase = config.key_passphrase_file.as_deref().map(crate::keys::read_passphrase_file).transpose()?;
        Ok(Some(KeyRing::load(path, passphrase.as_deref())?))
    }

    /// Write `repo.json` if absent. Running it again is harmless; the caller compares owners.
    pub fn init(
        storage: &dyn Storage,
        encryption: Encryption,
        owner: serde_json::Map<String, serde_json::Value>,
    ) -> Result<InitOutcome, RepoError> {
        let info = RepoInfo { format: REPO_FORMAT, encryption, created: chrono::Utc::now(), owner };
        let body = serde_json::to_vec_pretty(&info).expect("serializable");
        match storage.put(&Ctx::background(), INFO_KEY, &body, PutMode::IfAbsent)? {
            PutOutcome::Created => Ok(InitOutcome::Created),
            PutOutcome::AlreadyExists => Ok(InitOutcome::AlreadyInitialized(read_info(storage)?)),
        }
    }

    /// Open repository `repo` of the configuration with its keys and codec settings.
    pub fn open(config: &Config, repo: &RepoConfig) -> Result<Repository, RepoError> {
        Self::open_keyed(config, repo, Self::keys_for(config)?)
    }

    /// As [`Repository::open`], with the key ring already read ([`Repository::keys_for`]): one
    /// read serves several repositories (a passphrase-sealed key file costs a key derivation
    /// per read).
    pub fn open_keyed(config: &Config, repo: &RepoConfig, keys: Option<KeyRing>) -> Result<Repository, RepoError> {
        let storage = storage::open(&repo.location)?;
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
        Ok(Repository { storage, info, keys, compression, codec_threads: 1, cancel: CancelToken::new() })
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

    /// Tripping `token` fails every storage call of this repository from then on, including
    /// uploads and downloads under way on other threads.
    pub fn set_cancel(&mut self, token: CancelToken) {
        self.cancel = token;
    }

    /// The context of this repository's storage calls.
    pub fn ctx(&self) -> Ctx {
        Ctx::background().with_cancel(&self.cancel)
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
        let mut writer = self.storage.writer(&self.ctx(), key, mode)?;
        let summary = codec::encode(input, &mut writer, key, self.encode_params()).map_err(|e| RepoError::codec(key, e))?;
        match writer.commit()? {
            PutOutcome::Created => Ok(Some(summary)),
            PutOutcome::AlreadyExists => Ok(None),
        }
    }

    /// Decode object `key` into `output`, authenticated and digest-checked.
    pub fn get_object(&self, key: &str, output: &mut dyn std::io::Write) -> Result<DecodeSummary, RepoError> {
        let mut reader = std::io::BufReader::with_capacity(1 << 20, self.storage.get(&self.ctx(), key)?);
        codec::decode(&mut reader, output, key, self.keys.as_ref()).map_err(|e| RepoError::codec(key, e))
    }

    /// Size and SHA-256 of an object's plaintext, from its trailer: no key, no full download,
    /// one request.
    pub fn object_trailer(&self, key: &str) -> Result<Trailer, RepoError> {
        let tail = self.storage.get_range_bytes(&self.ctx(), key, ByteRange::Suffix(TRAILER_LEN))?;
        if (tail.len() as u64) < TRAILER_LEN {
            return Err(RepoError::codec(key, CodecError::Truncated));
        }
        Trailer::parse(&tail).map_err(|e| RepoError::codec(key, e))
    }
}

fn read_info(storage: &dyn Storage) -> Result<RepoInfo, RepoError> {
    let bytes = storage.get_bytes(&Ctx::background(), INFO_KEY).map_err(|e| match e.kind() {
        StorageErrorKind::NotFound => RepoError::NotInitialized { location: storage.location() },
        _ => RepoError::Storage(e),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| RepoError::BadInfo { location: storage.location(), cause: e })
}

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("no repository at {location} (no repo.json); create it with: wal-archiver init --pgdata DATADIR")]
    NotInitialized { location: String },
    #[error("repository {location}: repo.json is unreadable")]
    BadInfo { location: String, #[source] cause: serde_json::Error },
    #[error("repository {location} has format {format}, newer than this program; upgrade it")]
    NewerFormat { location: String, format: u32 },
    #[error("repository {location} was created with encryption '{repo}', which the configuration's encryption setting contradicts; fix the configuration (encryption / key_file)")]
    EncryptionMismatch { location: String, repo: Encryption },
    #[error("encryption is on but no key file is configured: create one with 'wal-archiver keygen --output FILE' and set key_file (or set encryption = false explicitly)")]
    NoKeyFile,
    #[error("object {object}")]
    Codec { object: String, #[source] cause: CodecError },
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

    /// The storage error this failed with, also when it surfaced through a streamed body.
    pub fn storage_error(&self) -> Option<&StorageError> {
        match self {
            RepoError::Storage(e) => Some(e),
            RepoError::Codec { cause: CodecError::Io(io), .. } => io.get_ref().and_then(|e| e.downcast_ref::<StorageError>()),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.storage_error().is_some_and(StorageError::is_not_found)
    }

    pub fn is_cancelled(&self) -> bool {
        self.storage_error().is_some_and(|e| e.kind() == StorageErrorKind::Cancelled)
    }
}
