//! Master keys: a small JSON file of named 256-bit keys.
//!
//! The newest key encrypts; every key in the file decrypts, so rotation is "generate a new key,
//! keep the old ones" (`wal-archiver keygen` appends). Master keys never touch data directly:
//! each object has its own random data key, wrapped by a master key (see `codec`).
//!
//! The file may be sealed with a passphrase (argon2id, then AES-256-GCM over the key list), for
//! sites whose key file lives on shared storage. Secrets are zeroized on drop and never printed:
//! `Debug` shows the key id only.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

const FILE_FORMAT: &str = "pg_backup_ext-keys";

/// The name of a master key, recorded in every object it wraps a data key for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyId(pub String);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl KeyId {
    /// Ids are stored in object headers (one length byte) and shown to operators.
    pub fn new(id: &str) -> Result<KeyId, KeyError> {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if ok {
            Ok(KeyId(id.to_string()))
        } else {
            Err(KeyError::BadId(id.to_string()))
        }
    }
}

/// Cloned where several repositories open with one key ring read once; every copy's secret is
/// zeroed when dropped.
#[derive(Clone)]
pub struct MasterKey {
    pub id: KeyId,
    pub created: chrono::DateTime<chrono::Utc>,
    secret: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({}, <redacted>)", self.id)
    }
}

impl MasterKey {
    pub fn generate(id: KeyId) -> MasterKey {
        let mut secret = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(secret.as_mut());
        MasterKey { id, created: chrono::Utc::now(), secret }
    }

    pub(crate) fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(self.secret.as_ref()).expect("32-byte key")
    }
}

/// Every master key of a key file, oldest first.
#[derive(Clone, Debug)]
pub struct KeyRing {
    keys: Vec<MasterKey>,
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    format: String,
    version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keys: Option<Vec<StoredKey>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<Sealed>,
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    id: KeyId,
    created: chrono::DateTime<chrono::Utc>,
    key: String,
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    kdf: String,
    m_cost_kib: u32,
    t_cost: u32,
    salt: String,
    nonce: String,
    ciphertext: String,
}

// OWASP's argon2id floor: ~50 ms per derivation, so sealing costs every archive_command that.
const ARGON_M_COST_KIB: u32 = 19 * 1024;
const ARGON_T_COST: u32 = 2;

impl KeyRing {
    pub fn new(keys: Vec<MasterKey>) -> Result<KeyRing, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(KeyRing { keys })
    }

    /// The key new objects are encrypted with.
    pub fn newest(&self) -> &MasterKey {
        self.keys.last().expect("key ring is never empty")
    }

    pub fn get(&self, id: &KeyId) -> Option<&MasterKey> {
        self.keys.iter().find(|k| &k.id == id)
    }

    pub fn ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.iter().map(|k| &k.id)
    }

    pub fn push(&mut self, key: MasterKey) -> Result<(), KeyError> {
        if self.get(&key.id).is_some() {
            return Err(KeyError::DuplicateId(key.id.0));
        }
        self.keys.push(key);
        Ok(())
    }

    /// Load a key file. It must not be readable by group or others: a key anyone can read
    /// protects nothing.
    pub fn load(path: &Path, passphrase: Option<&str>) -> Result<KeyRing, KeyError> {
        let at = |cause| KeyError::Io { path: path.display().to_string(), cause };
        let meta = fs::metadata(path).map_err(at)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions { path: path.display().to_string(), mode });
        }
        let text = Zeroizing::new(fs::read_to_string(path).map_err(at)?);
        Self::from_json(&text, passphrase).map_err(|e| e.in_file(path))
    }

    fn from_json(text: &str, passphrase: Option<&str>) -> Result<KeyRing, KeyError> {
        let file: KeyFile = serde_json::from_str(text).map_err(|e| KeyError::Format(e.to_string()))?;
        if file.format != FILE_FORMAT || file.version != 1 {
            return Err(KeyError::Format(format!("format {:?} version {} is not a key file this version reads", file.format, file.version)));
        }
        let stored = match (file.keys, file.sealed) {
            (Some(keys), None) => keys,
            (None, Some(sealed)) => {
                let pass = passphrase.ok_or(KeyError::PassphraseNeeded)?;
                let plain = unseal(&sealed, pass)?;
                serde_json::from_slice(&plain).map_err(|e| KeyError::Format(e.to_string()))?
            }
            _ => return Err(KeyError::Format("expected exactly one of \"keys\" or \"sealed\"".into())),
        };
        let mut keys = Vec::new();
        for k in stored {
            let bytes = Zeroizing::new(B64.decode(&k.key).map_err(|_| KeyError::Format(format!("key {} is not base64", k.id)))?);
            let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::Format(format!("key {} is not 256 bits", k.id)))?;
            keys.push(MasterKey { id: KeyId::new(&k.id.0)?, created: k.created, secret: Zeroizing::new(secret) });
        }
        KeyRing::new(keys)
    }

    /// Write the key file with mode 0600, atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path, passphrase: Option<&str>) -> Result<(), KeyError> {
        let at = |cause| KeyError::Io { path: path.display().to_string(), cause };
        let stored: Vec<StoredKey> = self
            .keys
            .iter()
            .map(|k| StoredKey { id: k.id.clone(), created: k.created, key: B64.encode(k.secret.as_ref()) })
            .collect();
        let file = match passphrase {
            None => KeyFile { format: FILE_FORMAT.into(), version: 1, keys: Some(stored), sealed: None },
            Some(pass) => {
                let plain = Zeroizing::new(serde_json::to_vec(&stored).expect("serializable"));
                KeyFile { format: FILE_FORMAT.into(), version: 1, keys: None, sealed: Some(seal(&plain, pass)?) }
            }
        };
        let text = Zeroizing::new(serde_json::to_string_pretty(&file).expect("serializable"));
        let temp = path.with_extension("tmp-keygen");
        let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temp).map_err(at)?;
        f.write_all(text.as_bytes()).map_err(at)?;
        f.sync_all().map_err(at)?;
        fs::rename(&temp, path).map_err(at)?;
        Ok(())
    }
}

fn derive(pass: &str, salt: &[u8], m_cost_kib: u32, t_cost: u32) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let params = argon2::Params::new(m_cost_kib, t_cost, 1, Some(32)).map_err(|e| KeyError::Format(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    argon.hash_password_into(pass.as_bytes(), salt, out.as_mut()).map_err(|e| KeyError::Format(e.to_string()))?;
    Ok(out)
}

fn seal(plain: &[u8], pass: &str) -> Result<Sealed, KeyError> {
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let kek = derive(pass, &salt, ARGON_M_COST_KIB, ARGON_T_COST)?;
    let cipher = Aes256Gcm::new_from_slice(kek.as_ref()).expect("32-byte key");
    let ct = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad: FILE_FORMAT.as_bytes() })
        .expect("encryption of a small buffer cannot fail");
    Ok(Sealed {
        kdf: "argon2id".into(),
        m_cost_kib: ARGON_M_COST_KIB,
        t_cost: ARGON_T_COST,
        salt: B64.encode(salt),
        nonce: B64.encode(nonce),
        ciphertext: B64.encode(ct),
    })
}

fn unseal(s: &Sealed, pass: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    if s.kdf != "argon2id" {
        return Err(KeyError::Format(format!("unknown key derivation {:?}", s.kdf)));
    }
    let b64 = |v: &str| B64.decode(v).map_err(|_| KeyError::Format("sealed key file is not base64".into()));
    let nonce = b64(&s.nonce)?;
    if nonce.len() != 12 {
        return Err(KeyError::Format("sealed key file has a bad nonce".into()));
    }
    let kek = derive(pass, &b64(&s.salt)?, s.m_cost_kib, s.t_cost)?;
    let cipher = Aes256Gcm::new_from_slice(kek.as_ref()).expect("32-byte key");
    cipher
        .decrypt(Nonce::from_slice(&nonce), Payload { msg: &b64(&s.ciphertext)?, aad: FILE_FORMAT.as_bytes() })
        .map(Zeroizing::new)
        .map_err(|_| KeyError::WrongPassphrase)
}

/// The passphrase in `path`, without its trailing newline.
pub fn read_passphrase_file(path: &Path) -> Result<String, KeyError> {
    let text = fs::read_to_string(path).map_err(|cause| KeyError::Io { path: path.display().to_string(), cause })?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// A default key id: sortable by creation time, unique across machines.
pub fn default_key_id() -> KeyId {
    let suffix: u16 = rand::random();
    KeyId(format!("k{}-{suffix:04x}", chrono::Utc::now().format("%Y%m%d%H%M%S")))
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}")]
    Io { path: String, #[source] cause: std::io::Error },
    #[error("key file {path} has mode {mode:04o}: it must not be readable by group or others; run: chmod 600 {path}")]
    Permissions { path: String, mode: u32 },
    #[error("key file {path}: {reason}")]
    InFile { path: String, reason: String },
    #[error("not a valid key file: {0}")]
    Format(String),
    #[error("the key file is sealed with a passphrase; set key_passphrase_file (or BACKUP_KEY_PASSPHRASE_FILE)")]
    PassphraseNeeded,
    #[error("wrong passphrase for the sealed key file")]
    WrongPassphrase,
    #[error("the key file holds no keys; run 'wal-archiver keygen'")]
    Empty,
    #[error("key id {0:?} is already in the key file")]
    DuplicateId(String),
    #[error("bad key id {0:?}: use 1-64 letters, digits, '.', '_' or '-'")]
    BadId(String),
}

impl KeyError {
    fn in_file(self, path: &Path) -> KeyError {
        match self {
            KeyError::Format(reason) => KeyError::InFile { path: path.display().to_string(), reason },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(ids: &[&str]) -> KeyRing {
        KeyRing::new(ids.iter().map(|id| MasterKey::generate(KeyId::new(id).unwrap())).collect()).unwrap()
    }

    #[test]
    fn save_load_round_trip_keeps_order_and_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let r = ring(&["old", "new"]);
        r.save(&path, None).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let back = KeyRing::load(&path, None).unwrap();
        assert_eq!(back.newest().id.0, "new");
        assert_eq!(*back.get(&KeyId::new("old").unwrap()).unwrap().secret, *r.keys[0].secret);
    }

    #[test]
    fn sealed_file_needs_the_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        ring(&["a"]).save(&path, Some("correct horse")).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("\"keys\""), "sealed file lists keys in clear");
        assert!(matches!(KeyRing::load(&path, None), Err(KeyError::PassphraseNeeded)));
        assert!(matches!(KeyRing::load(&path, Some("battery staple")), Err(KeyError::WrongPassphrase)));
        assert_eq!(KeyRing::load(&path, Some("correct horse")).unwrap().newest().id.0, "a");
    }

    #[test]
    fn world_readable_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        ring(&["a"]).save(&path, None).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = KeyRing::load(&path, None).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let r = ring(&["a"]);
        let shown = format!("{r:?}");
        assert!(shown.contains("redacted"));
        assert!(!shown.contains(&B64.encode(r.newest().secret.as_ref())));
    }
}
