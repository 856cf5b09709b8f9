//! One configuration for `wal-archiver` and the extension: a TOML file, then environment
//! variables (the product document's `BACKUP_*` names) on top.
//!
//! The file is found through `--config`, else `$BACKUP_CONFIG`, else
//! `/etc/pg_backup_ext/pg_backup_ext.conf` if it exists. An `archive_command` runs with the
//! postmaster's environment, so the file is the dependable place; the variables suit containers.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::codec::Compression;
use crate::health::Status;
use crate::storage::{AzureCredentials, AzureLocation, GcsCredentials, GcsLocation, Location, S3Credentials, S3Location, Secret};
use crate::storage::s3::{LockMode, ObjectLock};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/pg_backup_ext/pg_backup_ext.conf";

/// Retention windows beyond this are typing mistakes (and would overflow date arithmetic).
const MAX_RETENTION_DAYS: u32 = 36_500;

/// More segments ahead than this buys nothing (recovery replays them one by one) and fills
/// `pg_wal`: 256 segments are 4 GB at the default segment size.
const MAX_PREFETCH: u32 = 256;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Repository directory (`BACKUP_DIR`): the single local repository, named `local`.
    pub repo_path: Option<PathBuf>,
    /// More repositories (`[[repos]]`), after `repo_path` if both are given, then the one the
    /// product's variables describe (`BACKUP_REMOTE_ENABLED`..., named `remote`). The first
    /// repository is the primary one: backups go there unless told otherwise, and it must take
    /// every WAL file ([`WalArchiving::Required`]). Fetch and restore try them in this order.
    pub repos: Vec<RepoConfig>,
    /// Compress with zstd (`BACKUP_COMPRESSION`).
    pub compression: bool,
    /// zstd level 1-19 (`BACKUP_COMPRESSION_LEVEL`).
    pub compression_level: i32,
    /// Encrypt with AES-256-GCM (`BACKUP_ENCRYPTION`). Off only when said so.
    pub encryption: bool,
    /// Master key file from `wal-archiver keygen` (`BACKUP_KEY_FILE`).
    pub key_file: Option<PathBuf>,
    /// File holding the passphrase of a sealed key file (`BACKUP_KEY_PASSPHRASE_FILE`).
    pub key_passphrase_file: Option<PathBuf>,
    /// Days to keep full backups (`BACKUP_RETENTION_DAYS`); a repository's own
    /// `retention_days` overrides it there. See [`crate::pg::retention`] for the whole policy.
    pub retention_days: u32,
    /// Days to keep incremental backups (`BACKUP_RETENTION_INCREMENTAL_DAYS`).
    pub retention_incremental_days: u32,
    /// Days of WAL to keep: the point-in-time recovery window (`BACKUP_RETENTION_WAL_DAYS`).
    pub retention_wal_days: u32,
    /// Months to keep the first full backup of each calendar month (UTC), 0 for none
    /// (`BACKUP_RETENTION_MONTHLY_MONTHS`).
    pub retention_monthly_months: u32,
    /// Attempts of `fetch` on a real error before it aborts recovery.
    pub fetch_retries: u32,
    pub fetch_retry_delay_ms: u64,
    /// Segments `fetch` (restore_command) downloads ahead of recovery into a spool in
    /// `pg_wal`, in parallel (`BACKUP_PREFETCH`); 0 turns prefetch off. Disk use: this many
    /// segments. See [`crate::pg::prefetch`].
    pub prefetch: u32,
    /// Where alerts go (`[notifications]`): e-mail, Slack, SMS, a JSON webhook; off unless
    /// `enabled`. Read apart from the rest of the file, because its variables may complete a
    /// section the file only begins: see [`NotificationsConfig`].
    #[serde(skip)]
    pub notifications: NotificationsConfig,
    /// Why `[notifications]` (or its variables) could not be used, if so. Kept apart rather
    /// than failing the whole file: a typo in an SMTP setting must not stop `archive_command`.
    /// The extension's health checks report it (and no alert can be sent until it is fixed).
    #[serde(skip)]
    pub notifications_error: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            repo_path: None,
            repos: Vec::new(),
            compression: true,
            compression_level: 3,
            encryption: true,
            key_file: None,
            key_passphrase_file: None,
            retention_days: 30,
            retention_incremental_days: 7,
            retention_wal_days: 7,
            retention_monthly_months: 12,
            fetch_retries: 3,
            fetch_retry_delay_ms: 1000,
            prefetch: 8,
            notifications: NotificationsConfig::default(),
            notifications_error: None,
        }
    }
}

impl Config {
    /// Load from `explicit` (must exist), `$BACKUP_CONFIG` (must exist) or the default path (may
    /// be absent), then apply the environment.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let path = explicit.map(Path::to_path_buf).or_else(|| env("BACKUP_CONFIG").map(PathBuf::from));
        let (text, source) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| ConfigError::Read { path: p.display().to_string(), cause: e })?;
                (text, p.display().to_string())
            }
            None => match std::fs::read_to_string(DEFAULT_CONFIG_PATH) {
                Ok(t) => (t, DEFAULT_CONFIG_PATH.to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), "defaults".to_string()),
                // There but unreadable: running on defaults would hide the real configuration.
                Err(e) => return Err(ConfigError::Read { path: DEFAULT_CONFIG_PATH.to_string(), cause: e }),
            },
        };
        Config::parse(&text, &source, env)
    }

    /// Parse file text, then apply variables from `env`; validate the result.
    pub fn parse(text: &str, source: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let parse_error = |e: toml::de::Error| ConfigError::Parse { path: source.to_string(), reason: e.message().to_string() };
        let mut table: toml::Table = toml::from_str(text).map_err(parse_error)?;
        let notifications = table.remove("notifications");
        let mut c: Config = toml::Value::Table(table).try_into().map_err(parse_error)?;
        match NotificationsConfig::parse(notifications, source, &env) {
            Ok(n) => c.notifications = n,
            Err(e) => c.notifications_error = Some(crate::error::report(&e)),
        }
        if let Some(v) = env("BACKUP_DIR") {
            c.repo_path = Some(PathBuf::from(v));
        }
        if let Some(v) = env("BACKUP_COMPRESSION") {
            c.compression = parse_bool("BACKUP_COMPRESSION", &v)?;
        }
        if let Some(v) = env("BACKUP_COMPRESSION_LEVEL") {
            c.compression_level = v.parse().map_err(|_| ConfigError::env("BACKUP_COMPRESSION_LEVEL", &v, "an integer 1-19"))?;
        }
        if let Some(v) = env("BACKUP_ENCRYPTION") {
            c.encryption = parse_bool("BACKUP_ENCRYPTION", &v)?;
        }
        if let Some(v) = env("BACKUP_KEY_FILE") {
            c.key_file = Some(PathBuf::from(v));
        }
        if let Some(v) = env("BACKUP_KEY_PASSPHRASE_FILE") {
            c.key_passphrase_file = Some(PathBuf::from(v));
        }
        if let Some(v) = env("BACKUP_PREFETCH") {
            c.prefetch = v.parse().map_err(|_| ConfigError::env("BACKUP_PREFETCH", &v, "a number of WAL segments (0: no prefetch)"))?;
        }
        if c.prefetch > MAX_PREFETCH {
            return Err(ConfigError::Invalid(format!(
                "prefetch (BACKUP_PREFETCH) is {}; at most {MAX_PREFETCH} segments (each takes a segment's size of disk in pg_wal)",
                c.prefetch
            )));
        }
        for (var, field, unit) in [
            ("BACKUP_RETENTION_DAYS", &mut c.retention_days, "a whole number of days"),
            ("BACKUP_RETENTION_INCREMENTAL_DAYS", &mut c.retention_incremental_days, "a whole number of days"),
            ("BACKUP_RETENTION_WAL_DAYS", &mut c.retention_wal_days, "a whole number of days"),
            ("BACKUP_RETENTION_MONTHLY_MONTHS", &mut c.retention_monthly_months, "a whole number of months (0: no monthly archive)"),
        ] {
            if let Some(v) = env(var) {
                *field = v.parse().map_err(|_| ConfigError::env(var, &v, unit))?;
            }
        }
        if !(1..=19).contains(&c.compression_level) {
            return Err(ConfigError::Invalid(format!("compression_level {} is out of range 1-19", c.compression_level)));
        }
        // A zero window would expire what was taken a second ago, and with it the WAL that
        // makes the newest moments restorable: surely a mistake, never a policy.
        for (name, days) in [
            ("retention_days (BACKUP_RETENTION_DAYS)", c.retention_days),
            ("retention_incremental_days (BACKUP_RETENTION_INCREMENTAL_DAYS)", c.retention_incremental_days),
            ("retention_wal_days (BACKUP_RETENTION_WAL_DAYS)", c.retention_wal_days),
        ] {
            if days == 0 {
                return Err(ConfigError::Invalid(format!("{name} is 0; keep at least 1 day")));
            }
            if days > MAX_RETENTION_DAYS {
                return Err(ConfigError::Invalid(format!("{name} is {days}; at most {MAX_RETENTION_DAYS} days (100 years)")));
            }
        }
        if c.retention_monthly_months > MAX_RETENTION_DAYS / 30 {
            return Err(ConfigError::Invalid(format!(
                "retention_monthly_months (BACKUP_RETENTION_MONTHLY_MONTHS) is {}; at most {} months",
                c.retention_monthly_months,
                MAX_RETENTION_DAYS / 30
            )));
        }
        if let Some(remote) = remote_from_env(&env)? {
            c.repos.push(remote);
        }
        // An object lock without its own length lasts the repository's full-backup window:
        // retention may delete an object as soon as its lock has passed.
        for r in &mut c.repos {
            if let Location::S3(s3) = &mut r.location {
                if let Some(lock) = s3.object_lock.as_mut().filter(|l| l.days == 0) {
                    lock.days = r.retention_days.unwrap_or(c.retention_days);
                }
            }
        }
        let repos = c.repositories();
        if let Some(first) = repos.first().filter(|r| r.wal == WalArchiving::BestEffort) {
            return Err(ConfigError::Invalid(format!(
                "repository {:?} is the primary (first) repository and cannot be archive = \"best_effort\": the primary must hold every WAL file; put a required repository first",
                first.name
            )));
        }
        for (i, r) in repos.iter().enumerate() {
            if r.name.is_empty() || !r.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b)) {
                return Err(ConfigError::Invalid(format!("repository name {:?}: use letters, digits, '_' and '-'", r.name)));
            }
            if repos[..i].iter().any(|o| o.name == r.name) {
                return Err(ConfigError::Invalid(format!("two repositories are named {:?}; names must be unique", r.name)));
            }
            if let Some(days) = r.retention_days.filter(|d| *d == 0 || *d > MAX_RETENTION_DAYS) {
                return Err(ConfigError::Invalid(format!("repository {:?}: retention_days {days} is out of range 1-{MAX_RETENTION_DAYS}", r.name)));
            }
        }
        Ok(c)
    }

    /// Every configured repository, primary first: `repo_path` (as `local`), then `[[repos]]`.
    pub fn repositories(&self) -> Vec<RepoConfig> {
        let implicit = self.repo_path.as_ref().map(|p| RepoConfig {
            name: "local".to_string(),
            location: Location::Local { path: p.clone() },
            retention_days: None,
            wal: WalArchiving::Required,
        });
        implicit.into_iter().chain(self.repos.iter().cloned()).collect()
    }

    /// The repository backups go to unless another is named, and restores look in first.
    pub fn primary_repo(&self) -> Result<RepoConfig, ConfigError> {
        self.repositories().into_iter().next().ok_or(ConfigError::NoRepository)
    }

    /// The repository called `name`; the error lists the ones there are.
    pub fn repo_named(&self, name: &str) -> Result<RepoConfig, ConfigError> {
        let all = self.repositories();
        let names: Vec<String> = all.iter().map(|r| r.name.clone()).collect();
        all.into_iter().find(|r| r.name == name).ok_or_else(|| ConfigError::UnknownRepository { name: name.to_string(), known: names.join(", ") })
    }

    /// `name`'s repository, or the primary one.
    pub fn repo_or_primary(&self, name: Option<&str>) -> Result<RepoConfig, ConfigError> {
        match name {
            Some(n) => self.repo_named(n),
            None => self.primary_repo(),
        }
    }

    pub fn compression(&self) -> Compression {
        if self.compression {
            Compression::Zstd { level: self.compression_level }
        } else {
            Compression::None
        }
    }
}

/// One `[[repos]]` entry: where a repository lives and what it overrides.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(try_from = "RepoEntry")]
pub struct RepoConfig {
    pub name: String,
    pub location: Location,
    /// Days to keep backups in this repository (default: the global `retention_days`).
    pub retention_days: Option<u32>,
    /// Whether a WAL file counts as archived without this repository (`archive = ...`).
    pub wal: WalArchiving,
}

/// What `archive_command` does when a repository cannot take a WAL file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WalArchiving {
    /// The push fails: PostgreSQL keeps the file in `pg_wal` and retries. Safe, but an outage
    /// of this repository makes `pg_wal` grow until it is back.
    #[default]
    Required,
    /// The push succeeds once the required repositories have the file; the file is noted as
    /// owed to this repository, and later pushes (or `wal-archiver catch-up`) copy it over from
    /// the primary. An outage costs off-site freshness, never the server's disk.
    BestEffort,
}

/// `[[repos]]` as written; each storage type takes its own fields. No `Debug`: it holds the
/// secret key as plain text until it becomes a [`Secret`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RepoEntry {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    path: Option<PathBuf>,
    retention_days: Option<u32>,
    /// "required" (default) or "best_effort": see [`WalArchiving`].
    archive: Option<String>,
    // type = "s3"
    bucket: Option<String>,
    prefix: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
    force_path_style: Option<bool>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    secret_access_key_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    allow_tls12: Option<bool>,
    /// "compliance" or "governance": S3 Object Lock on every object.
    object_lock: Option<String>,
    /// Days each object stays locked (default: the repository's retention_days).
    object_lock_days: Option<u32>,
    // type = "gcs" (with bucket, prefix, endpoint, ca_file, allow_tls12)
    service_account_file: Option<PathBuf>,
    // type = "azure" (with prefix, endpoint, ca_file, allow_tls12)
    account: Option<String>,
    container: Option<String>,
    access_key: Option<String>,
    access_key_file: Option<PathBuf>,
}

/// The storage settings each type takes (`path` for local; the others are common to all).
const S3_FIELDS: &[&str] = &[
    "bucket",
    "prefix",
    "region",
    "endpoint",
    "force_path_style",
    "access_key_id",
    "secret_access_key",
    "secret_access_key_file",
    "ca_file",
    "allow_tls12",
    "object_lock",
    "object_lock_days",
];
const GCS_FIELDS: &[&str] = &["bucket", "prefix", "endpoint", "service_account_file", "ca_file", "allow_tls12"];
const AZURE_FIELDS: &[&str] = &["account", "container", "prefix", "endpoint", "access_key", "access_key_file", "ca_file", "allow_tls12"];

impl RepoEntry {
    /// The storage fields that were given, by name.
    fn storage_fields(&self) -> Vec<&'static str> {
        [
            ("bucket", self.bucket.is_some()),
            ("prefix", self.prefix.is_some()),
            ("region", self.region.is_some()),
            ("endpoint", self.endpoint.is_some()),
            ("force_path_style", self.force_path_style.is_some()),
            ("access_key_id", self.access_key_id.is_some()),
            ("secret_access_key", self.secret_access_key.is_some()),
            ("secret_access_key_file", self.secret_access_key_file.is_some()),
            ("ca_file", self.ca_file.is_some()),
            ("allow_tls12", self.allow_tls12.is_some()),
            ("object_lock", self.object_lock.is_some()),
            ("object_lock_days", self.object_lock_days.is_some()),
            ("service_account_file", self.service_account_file.is_some()),
            ("account", self.account.is_some()),
            ("container", self.container.is_some()),
            ("access_key", self.access_key.is_some()),
            ("access_key_file", self.access_key_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect()
    }

    /// Refuse a field that belongs to another storage type, naming the types it belongs to.
    fn only_fields(&self, kind: &str, allowed: &[&str]) -> Result<(), String> {
        let Some(field) = self.storage_fields().into_iter().find(|f| !allowed.contains(f)) else { return Ok(()) };
        let owners: Vec<&str> = [("s3", S3_FIELDS), ("gcs", GCS_FIELDS), ("azure", AZURE_FIELDS)]
            .into_iter()
            .filter(|(_, fields)| fields.contains(&field))
            .map(|(k, _)| k)
            .collect();
        let article = if owners.first().is_some_and(|o| o.starts_with(['s', 'a'])) { "an" } else { "a" };
        Err(format!("repository {:?} of type {kind} does not take {field} ({article} {} setting)", self.name, owners.join("/")))
    }

    /// The prefix, normalized (`a/b/`) and checked.
    fn checked_prefix(&self) -> Result<String, String> {
        let prefix = crate::storage::s3::normalize_prefix(self.prefix.as_deref().unwrap_or(""));
        if !prefix.is_empty() {
            crate::storage::validate_prefix(&prefix).map_err(|_| {
                format!("repository {:?}: prefix {prefix:?} may hold only letters, digits, '.', '_', '-' and '/'", self.name)
            })?;
        }
        Ok(prefix)
    }

    fn gcs_location(self) -> Result<GcsLocation, String> {
        let name = &self.name;
        if self.path.is_some() {
            return Err(format!("repository {name:?} of type gcs takes bucket and prefix, not path"));
        }
        self.only_fields("gcs", GCS_FIELDS)?;
        let prefix = self.checked_prefix()?;
        let bucket = self.bucket.filter(|b| !b.is_empty()).ok_or_else(|| format!("repository {name:?} of type gcs needs a bucket"))?;
        let valid_bucket = (3..=222).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if !valid_bucket {
            return Err(format!("repository {name:?}: bucket {bucket:?} is not a valid GCS bucket name (3-63 lowercase letters, digits, '.', '_', '-')"));
        }
        let mut location = GcsLocation::new(&bucket, &prefix);
        if let Some(file) = self.service_account_file {
            location.credentials = GcsCredentials::ServiceAccountFile(file);
        }
        location.common.endpoint = self.endpoint.filter(|e| !e.is_empty());
        location.common.ca_file = self.ca_file;
        location.common.allow_tls12 = self.allow_tls12.unwrap_or(false);
        Ok(location)
    }

    fn azure_location(self) -> Result<AzureLocation, String> {
        let name = &self.name;
        if self.path.is_some() {
            return Err(format!("repository {name:?} of type azure takes account, container and prefix, not path"));
        }
        self.only_fields("azure", AZURE_FIELDS)?;
        let prefix = self.checked_prefix()?;
        let account = self
            .account
            .filter(|a| !a.is_empty())
            .ok_or_else(|| format!("repository {name:?} of type azure needs an account (the storage account's name)"))?;
        if !(3..=24).contains(&account.len()) || !account.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            return Err(format!("repository {name:?}: account {account:?} is not a valid storage account name (3-24 lowercase letters and digits)"));
        }
        let container = self.container.filter(|c| !c.is_empty()).ok_or_else(|| format!("repository {name:?} of type azure needs a container"))?;
        let valid_container = (3..=63).contains(&container.len())
            && container.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !container.starts_with('-')
            && !container.ends_with('-');
        if !valid_container {
            return Err(format!("repository {name:?}: container {container:?} is not a valid container name (3-63 lowercase letters, digits, '-')"));
        }
        let credentials = match (self.access_key, self.access_key_file) {
            (None, None) => AzureCredentials::DefaultChain,
            (Some(key), None) => AzureCredentials::AccessKey(Secret::new(key)),
            (None, Some(file)) => AzureCredentials::AccessKeyFile(file),
            (Some(_), Some(_)) => return Err(format!("repository {name:?}: give access_key or access_key_file, not both")),
        };
        let mut location = AzureLocation::new(&account, &container, &prefix);
        location.credentials = credentials;
        location.common.endpoint = self.endpoint.filter(|e| !e.is_empty());
        location.common.ca_file = self.ca_file;
        location.common.allow_tls12 = self.allow_tls12.unwrap_or(false);
        Ok(location)
    }

    fn s3_location(self) -> Result<S3Location, String> {
        let name = &self.name;
        if self.path.is_some() {
            return Err(format!("repository {name:?} of type s3 takes bucket and prefix, not path"));
        }
        self.only_fields("s3", S3_FIELDS)?;
        let bucket = self.bucket.filter(|b| !b.is_empty()).ok_or_else(|| format!("repository {name:?} of type s3 needs a bucket"))?;
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if !valid_bucket {
            return Err(format!("repository {name:?}: bucket {bucket:?} is not a valid S3 bucket name (3-63 lowercase letters, digits, '.', '-')"));
        }
        let region = self.region.filter(|r| !r.is_empty()).ok_or_else(|| {
            format!("repository {name:?} of type s3 needs a region (such as region = \"eu-west-1\"; S3-compatible stores usually take any, e.g. \"us-east-1\")")
        })?;
        let prefix = crate::storage::s3::normalize_prefix(self.prefix.as_deref().unwrap_or(""));
        if !prefix.is_empty() {
            crate::storage::validate_prefix(&prefix).map_err(|_| {
                format!("repository {name:?}: prefix {prefix:?} may hold only letters, digits, '.', '_', '-' and '/'")
            })?;
        }
        let credentials = match (self.access_key_id, self.secret_access_key, self.secret_access_key_file) {
            (None, None, None) => S3Credentials::DefaultChain,
            (Some(id), Some(secret), None) => S3Credentials::Static { access_key_id: id, secret_access_key: Secret::new(secret) },
            (Some(id), None, Some(file)) => S3Credentials::SecretFile { access_key_id: id, secret_access_key_file: file },
            (_, Some(_), Some(_)) => {
                return Err(format!("repository {name:?}: give secret_access_key or secret_access_key_file, not both"))
            }
            (Some(_), None, None) => {
                return Err(format!("repository {name:?}: access_key_id needs secret_access_key or secret_access_key_file"))
            }
            (None, _, _) => return Err(format!("repository {name:?}: a secret key needs its access_key_id")),
        };
        let mut location = S3Location::new(&bucket, &prefix, &region);
        location.endpoint = self.endpoint.filter(|e| !e.is_empty());
        location.force_path_style = self.force_path_style.unwrap_or(false);
        location.credentials = credentials;
        location.ca_file = self.ca_file;
        location.allow_tls12 = self.allow_tls12.unwrap_or(false);
        let mode = match self.object_lock.as_deref() {
            None if self.object_lock_days.is_some() => {
                return Err(format!("repository {name:?}: object_lock_days needs object_lock = \"compliance\" or \"governance\""))
            }
            None => None,
            Some("compliance") => Some(LockMode::Compliance),
            Some("governance") => Some(LockMode::Governance),
            Some(other) => return Err(format!("repository {name:?}: object_lock = {other:?}; use \"compliance\" or \"governance\"")),
        };
        if let Some(days) = self.object_lock_days.filter(|d| *d == 0 || *d > MAX_RETENTION_DAYS) {
            return Err(format!("repository {name:?}: object_lock_days {days} is out of range 1-{MAX_RETENTION_DAYS}"));
        }
        // Days 0: "the retention window", filled in once the global settings are known.
        location.object_lock = mode.map(|mode| ObjectLock { mode, days: self.object_lock_days.or(self.retention_days).unwrap_or(0) });
        Ok(location)
    }
}

impl TryFrom<RepoEntry> for RepoConfig {
    type Error = String;
    fn try_from(e: RepoEntry) -> Result<RepoConfig, String> {
        let (name, retention_days) = (e.name.clone(), e.retention_days);
        let wal = match e.archive.as_deref() {
            None | Some("required") => WalArchiving::Required,
            Some("best_effort") => WalArchiving::BestEffort,
            Some(other) => return Err(format!("repository {name:?}: archive = {other:?}; use \"required\" or \"best_effort\"")),
        };
        let location = match e.kind.as_str() {
            "local" => {
                e.only_fields("local", &[])?;
                Location::Local { path: e.path.ok_or_else(|| format!("repository {name:?} of type local needs a path"))? }
            }
            "s3" => Location::S3(Box::new(e.s3_location()?)),
            "gcs" => Location::Gcs(Box::new(e.gcs_location()?)),
            "azure" => Location::Azure(Box::new(e.azure_location()?)),
            other => {
                return Err(format!(
                    "repository {name:?} has type {other:?}; the supported types are \"local\", \"s3\", \"gcs\" and \"azure\""
                ))
            }
        };
        Ok(RepoConfig { name, location, retention_days, wal })
    }
}

/// The product's remote-storage variables (`BACKUP_REMOTE_ENABLED=true`,
/// `BACKUP_REMOTE_PROVIDER=aws`, `AWS_S3_BUCKET`, `AWS_REGION`, optionally `AWS_S3_PREFIX`,
/// `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` and `BACKUP_REMOTE_ARCHIVE=best_effort`) as one
/// more repository named `remote`. Credentials come from the SDK's standard chain, which reads
/// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` itself: no key passes through here.
fn remote_from_env(env: &impl Fn(&str) -> Option<String>) -> Result<Option<RepoConfig>, ConfigError> {
    match env("BACKUP_REMOTE_ENABLED") {
        Some(v) if parse_bool("BACKUP_REMOTE_ENABLED", &v)? => {}
        _ => return Ok(None),
    }
    let need = |var: &str, what: &str| {
        env(var).ok_or_else(|| ConfigError::Invalid(format!("BACKUP_REMOTE_ENABLED is set but {var} is not: set it to {what}")))
    };
    let wal = match env("BACKUP_REMOTE_ARCHIVE").as_deref() {
        None | Some("required") => WalArchiving::Required,
        Some("best_effort") => WalArchiving::BestEffort,
        Some(other) => return Err(ConfigError::env("BACKUP_REMOTE_ARCHIVE", other, "required or best_effort")),
    };
    let provider = env("BACKUP_REMOTE_PROVIDER").unwrap_or_else(|| "aws".to_string());
    let location = match provider.as_str() {
        "aws" | "s3" => {
            let bucket = need("AWS_S3_BUCKET", "the bucket's name")?;
            let region = need("AWS_REGION", "the bucket's region, e.g. ap-southeast-1")?;
            let prefix = crate::storage::s3::normalize_prefix(&env("AWS_S3_PREFIX").unwrap_or_default());
            let mut s3 = S3Location::new(&bucket, &prefix, &region);
            s3.endpoint = env("AWS_ENDPOINT_URL_S3").or_else(|| env("AWS_ENDPOINT_URL"));
            s3.force_path_style = s3.endpoint.is_some();
            Location::S3(Box::new(s3))
        }
        other => {
            return Err(ConfigError::env("BACKUP_REMOTE_PROVIDER", other, "aws (gcs and azure repositories are configured as [[repos]] entries)"))
        }
    };
    Ok(Some(RepoConfig { name: "remote".to_string(), location, retention_days: None, wal }))
}

/// `[notifications]`: the channels alerts go through ([`crate::notify`] sends them). Nothing is
/// sent unless `enabled` (`BACKUP_NOTIFICATIONS_ENABLED`); a section that is written must be
/// complete either way, so that a mistake shows when the configuration is loaded rather than
/// when the first alert fires.
///
/// The product's variables complete or override the file, section by section: any
/// `BACKUP_SMTP_*` / `BACKUP_EMAIL_RECIPIENTS` starts an e-mail section, `BACKUP_SLACK_WEBHOOK_URL`
/// a Slack one, `BACKUP_SMS_*` an SMS one, `BACKUP_WEBHOOK_URL` a webhook. `Debug` shows no
/// password, token or webhook path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NotificationsConfig {
    pub enabled: bool,
    pub email: Option<EmailConfig>,
    pub slack: Option<SlackConfig>,
    pub sms: Option<SmsConfig>,
    pub webhook: Option<WebhookConfig>,
}

/// `[notifications.email]`: one message to all recipients through an SMTP server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmailConfig {
    /// Addresses, each `user@domain` or `Name <user@domain>`.
    pub recipients: Vec<String>,
    pub smtp_host: String,
    /// Default by `tls`: 587, 465 or 25.
    pub smtp_port: u16,
    pub tls: SmtpTls,
    pub login: Option<SmtpLogin>,
    /// The sender, e.g. `pg_backup_ext <backup@db1.example.com>`.
    pub from: String,
    pub min_severity: Status,
    pub tls_policy: TlsPolicy,
}

/// How the SMTP connection is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain connect, then `STARTTLS`, which must succeed before anything else is said.
    StartTls,
    /// TLS from the first byte (SMTPS).
    Implicit,
    /// No TLS: only to a loopback host (a local relay).
    None,
}

impl SmtpTls {
    pub fn as_str(self) -> &'static str {
        match self {
            SmtpTls::StartTls => "starttls",
            SmtpTls::Implicit => "tls",
            SmtpTls::None => "none",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            SmtpTls::StartTls => 587,
            SmtpTls::Implicit => 465,
            SmtpTls::None => 25,
        }
    }
}

/// SMTP AUTH (PLAIN or LOGIN, whichever the server offers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpLogin {
    pub username: String,
    pub password: SecretSetting,
}

/// The TLS policy of the repositories, for a notification endpoint: TLS 1.3 unless
/// `allow_tls12`, certificates verified against the system's roots or `ca_file` only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsPolicy {
    pub ca_file: Option<PathBuf>,
    pub allow_tls12: bool,
}

/// `[notifications.slack]`: an incoming webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlackConfig {
    /// `https://hooks.slack.com/services/...`: its path is the credential.
    pub webhook_url: SecretUrl,
    pub min_severity: Status,
    pub tls_policy: TlsPolicy,
}

/// `[notifications.sms]`: a Twilio-style API (a form POST of `To`, `From`, `Body` with HTTP
/// basic auth `account:token`), one request per number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmsConfig {
    pub url: SecretUrl,
    pub to: Vec<String>,
    pub from: String,
    pub account: String,
    pub token: SecretSetting,
    pub min_severity: Status,
    pub tls_policy: TlsPolicy,
}

/// `[notifications.webhook]`: the notification as JSON, POSTed to `url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookConfig {
    pub url: SecretUrl,
    /// Sent as `Authorization: Bearer ...` when set.
    pub bearer_token: Option<SecretSetting>,
    pub min_severity: Status,
    pub tls_policy: TlsPolicy,
}

/// A secret written in the configuration, or the file that holds it. The file is read each time
/// the secret is used, so a rotated secret needs no restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSetting {
    Value(Secret),
    File(PathBuf),
}

impl SecretSetting {
    /// The secret; from a file, without its trailing newline. The error names the file and says
    /// what is wrong with it, never its content.
    pub fn read(&self) -> Result<Secret, String> {
        match self {
            SecretSetting::Value(s) => Ok(s.clone()),
            SecretSetting::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let secret = text.trim_end_matches(['\r', '\n']);
                if secret.is_empty() {
                    return Err(format!("{} is empty", path.display()));
                }
                Ok(Secret::new(secret))
            }
        }
    }

    /// `value` or `file` from a section, not both.
    fn from_fields(section: &str, value: Option<String>, file: Option<PathBuf>, names: (&str, &str)) -> Result<Option<SecretSetting>, ConfigError> {
        match (value.filter(|v| !v.is_empty()), file) {
            (None, None) => Ok(None),
            (Some(v), None) => Ok(Some(SecretSetting::Value(Secret::new(v)))),
            (None, Some(f)) => Ok(Some(SecretSetting::File(f))),
            (Some(_), Some(_)) => Err(ConfigError::Invalid(format!("[notifications.{section}]: give {} or {}, not both", names.0, names.1))),
        }
    }
}

/// An endpoint URL whose path and query may be the credential (a Slack webhook's path is):
/// `Debug` and [`SecretUrl::origin`] show only `scheme://host[:port]`. Checked like a
/// repository endpoint: `https://`, plain `http://` only to a loopback address, no `user@`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(Secret);

impl SecretUrl {
    /// `url`, checked; `what` names the setting in the error, which shows no more than the host.
    pub fn new(url: &str, what: &str) -> Result<SecretUrl, String> {
        let uri: http::Uri = url.parse().map_err(|_| format!("{what} is not a URL (expected https://host/...)"))?;
        let Some(host) = uri.host().filter(|h| !h.is_empty()) else { return Err(format!("{what} has no host (expected https://host/...)")) };
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(format!("{what} must not hold credentials (user@ or user:password@ before {host}); use the section's token settings"));
        }
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if crate::storage::https::is_loopback_host(host) => {}
            Some("http") => {
                return Err(format!("{what} is plain http:// to {host}; use https:// (plain HTTP is accepted only to loopback addresses)"))
            }
            _ => return Err(format!("{what} must start with https:// (host {host})")),
        }
        Ok(SecretUrl(Secret::new(url)))
    }

    /// The whole URL, to send a request to.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// `scheme://host[:port]`, safe to print.
    pub fn origin(&self) -> String {
        let uri: http::Uri = self.0.expose().parse().expect("checked when made");
        format!("{}://{}", uri.scheme_str().unwrap_or("https"), self.host_port())
    }

    /// `host[:port]`, safe to print.
    pub fn host_port(&self) -> String {
        let uri: http::Uri = self.0.expose().parse().expect("checked when made");
        let host = uri.host().unwrap_or_default();
        match uri.port_u16() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        }
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/<redacted>", self.origin())
    }
}

/// `[notifications]` as written. No `Debug`: it holds secrets as plain text.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotificationsEntry {
    enabled: Option<bool>,
    email: Option<EmailEntry>,
    slack: Option<SlackEntry>,
    sms: Option<SmsEntry>,
    webhook: Option<WebhookEntry>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailEntry {
    recipients: Option<Vec<String>>,
    smtp_host: Option<String>,
    smtp_port: Option<u16>,
    tls: Option<String>,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    from: Option<String>,
    min_severity: Option<String>,
    ca_file: Option<PathBuf>,
    allow_tls12: Option<bool>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlackEntry {
    webhook_url: Option<String>,
    min_severity: Option<String>,
    ca_file: Option<PathBuf>,
    allow_tls12: Option<bool>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SmsEntry {
    url: Option<String>,
    to: Option<Vec<String>>,
    from: Option<String>,
    account: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    min_severity: Option<String>,
    ca_file: Option<PathBuf>,
    allow_tls12: Option<bool>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookEntry {
    url: Option<String>,
    bearer_token: Option<String>,
    bearer_token_file: Option<PathBuf>,
    min_severity: Option<String>,
    ca_file: Option<PathBuf>,
    allow_tls12: Option<bool>,
}

impl NotificationsConfig {
    /// The `[notifications]` table of the file named `source` (if any), then the variables.
    fn parse(table: Option<toml::Value>, source: &str, env: &impl Fn(&str) -> Option<String>) -> Result<NotificationsConfig, ConfigError> {
        let mut entry: NotificationsEntry = match table {
            Some(t) => t.try_into().map_err(|e: toml::de::Error| ConfigError::Parse {
                path: source.to_string(),
                reason: format!("[notifications]: {}", e.message()),
            })?,
            None => NotificationsEntry::default(),
        };
        if let Some(v) = env("BACKUP_NOTIFICATIONS_ENABLED") {
            entry.enabled = Some(parse_bool("BACKUP_NOTIFICATIONS_ENABLED", &v)?);
        }
        let list = |v: String| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect::<Vec<_>>();

        let email_vars = ["BACKUP_EMAIL_RECIPIENTS", "BACKUP_SMTP_HOST", "BACKUP_SMTP_PORT", "BACKUP_SMTP_USER", "BACKUP_SMTP_PASSWORD", "BACKUP_SMTP_FROM", "BACKUP_SMTP_TLS"];
        if email_vars.iter().any(|v| env(v).is_some()) {
            let e = entry.email.get_or_insert_with(EmailEntry::default);
            if let Some(v) = env("BACKUP_EMAIL_RECIPIENTS") {
                e.recipients = Some(list(v));
            }
            if let Some(v) = env("BACKUP_SMTP_HOST") {
                e.smtp_host = Some(v);
            }
            if let Some(v) = env("BACKUP_SMTP_PORT") {
                e.smtp_port = Some(v.parse().ok().filter(|p| *p != 0).ok_or_else(|| ConfigError::env("BACKUP_SMTP_PORT", &v, "a port number 1-65535"))?);
            }
            if let Some(v) = env("BACKUP_SMTP_TLS") {
                e.tls = Some(v);
            }
            if let Some(v) = env("BACKUP_SMTP_USER") {
                e.username = Some(v);
            }
            if let Some(v) = env("BACKUP_SMTP_PASSWORD") {
                (e.password, e.password_file) = (Some(v), None);
            }
            if let Some(v) = env("BACKUP_SMTP_FROM") {
                e.from = Some(v);
            }
        }
        if let Some(v) = env("BACKUP_SLACK_WEBHOOK_URL") {
            entry.slack.get_or_insert_with(SlackEntry::default).webhook_url = Some(v);
        }
        let sms_vars = ["BACKUP_SMS_URL", "BACKUP_SMS_TO", "BACKUP_SMS_FROM", "BACKUP_SMS_ACCOUNT", "BACKUP_SMS_TOKEN"];
        if sms_vars.iter().any(|v| env(v).is_some()) {
            let s = entry.sms.get_or_insert_with(SmsEntry::default);
            if let Some(v) = env("BACKUP_SMS_URL") {
                s.url = Some(v);
            }
            if let Some(v) = env("BACKUP_SMS_TO") {
                s.to = Some(list(v));
            }
            if let Some(v) = env("BACKUP_SMS_FROM") {
                s.from = Some(v);
            }
            if let Some(v) = env("BACKUP_SMS_ACCOUNT") {
                s.account = Some(v);
            }
            if let Some(v) = env("BACKUP_SMS_TOKEN") {
                (s.token, s.token_file) = (Some(v), None);
            }
        }
        if let Some(v) = env("BACKUP_WEBHOOK_URL") {
            entry.webhook.get_or_insert_with(WebhookEntry::default).url = Some(v);
        }

        Ok(NotificationsConfig {
            enabled: entry.enabled.unwrap_or(false),
            email: entry.email.map(EmailEntry::validate).transpose()?,
            slack: entry.slack.map(SlackEntry::validate).transpose()?,
            sms: entry.sms.map(SmsEntry::validate).transpose()?,
            webhook: entry.webhook.map(WebhookEntry::validate).transpose()?,
        })
    }
}

/// A required setting of `[notifications.<section>]`; the error names it, its variable (if it
/// has one) and what it is for.
fn required(section: &str, value: Option<String>, field: &str, var: Option<&str>, what: &str) -> Result<String, ConfigError> {
    value.filter(|v| !v.trim().is_empty()).ok_or_else(|| {
        let var = var.map(|v| format!(" ({v})")).unwrap_or_default();
        ConfigError::Invalid(format!("[notifications.{section}] needs {field}{var}: {what}"))
    })
}

fn min_severity(section: &str, value: Option<String>, default: Status) -> Result<Status, ConfigError> {
    match value.as_deref() {
        None => Ok(default),
        Some("warning") => Ok(Status::Warning),
        Some("critical") => Ok(Status::Critical),
        Some(other) => Err(ConfigError::Invalid(format!("[notifications.{section}] min_severity = {other:?}; use \"warning\" or \"critical\""))),
    }
}

fn endpoint_url(section: &str, url: String, field: &str, var: Option<&str>) -> Result<SecretUrl, ConfigError> {
    let what = match var {
        Some(var) => format!("[notifications.{section}] {field} ({var})"),
        None => format!("[notifications.{section}] {field}"),
    };
    SecretUrl::new(url.trim(), &what).map_err(ConfigError::Invalid)
}

/// An e-mail address as lettre will take it (`user@domain` or `Name <user@domain>`).
fn mailbox(field: &str, var: &str, address: &str) -> Result<(), ConfigError> {
    address.parse::<lettre::message::Mailbox>().map(|_| ()).map_err(|e| {
        ConfigError::Invalid(format!("[notifications.email] {field} ({var}): {address:?} is not an e-mail address ({e}); write user@domain or \"Name <user@domain>\""))
    })
}

impl EmailEntry {
    fn validate(self) -> Result<EmailConfig, ConfigError> {
        let s = "email";
        let recipients = self.recipients.unwrap_or_default();
        if recipients.is_empty() {
            return Err(ConfigError::Invalid(
                "[notifications.email] needs recipients (BACKUP_EMAIL_RECIPIENTS, comma-separated): who receives the alerts, e.g. recipients = [\"dba@example.com\"]".into(),
            ));
        }
        for r in &recipients {
            mailbox("recipients", "BACKUP_EMAIL_RECIPIENTS", r)?;
        }
        let smtp_host = required(s, self.smtp_host, "smtp_host", Some("BACKUP_SMTP_HOST"), "the SMTP server to send through, e.g. smtp.example.com")?.trim().to_string();
        let from = required(s, self.from, "from", Some("BACKUP_SMTP_FROM"), "the sender, e.g. from = \"pg_backup_ext <backup@db1.example.com>\"")?;
        mailbox("from", "BACKUP_SMTP_FROM", &from)?;
        let tls = match self.tls.as_deref() {
            None | Some("starttls") => SmtpTls::StartTls,
            Some("tls") => SmtpTls::Implicit,
            Some("none") => SmtpTls::None,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "[notifications.email] tls (BACKUP_SMTP_TLS) = {other:?}; use \"starttls\" (port 587), \"tls\" (implicit TLS, port 465) or \"none\" (a relay on this machine only)"
                )))
            }
        };
        if tls == SmtpTls::None && !crate::storage::https::is_loopback_host(&smtp_host) {
            return Err(ConfigError::Invalid(format!(
                "[notifications.email] tls = \"none\" would send mail (and any password) to {smtp_host} in clear text; it is accepted only for a relay on this machine (localhost, 127.0.0.1, ::1): use tls = \"starttls\" or \"tls\""
            )));
        }
        let smtp_port = match self.smtp_port {
            Some(0) => return Err(ConfigError::Invalid("[notifications.email] smtp_port 0 is not a port".into())),
            Some(p) => p,
            None => tls.default_port(),
        };
        let password = SecretSetting::from_fields(s, self.password, self.password_file, ("password (BACKUP_SMTP_PASSWORD)", "password_file"))?;
        let login = match (self.username.filter(|u| !u.is_empty()), password) {
            (None, None) => None,
            (Some(username), Some(password)) => Some(SmtpLogin { username, password }),
            (Some(_), None) => {
                return Err(ConfigError::Invalid(
                    "[notifications.email] username (BACKUP_SMTP_USER) needs password (BACKUP_SMTP_PASSWORD) or password_file".into(),
                ))
            }
            (None, Some(_)) => return Err(ConfigError::Invalid("[notifications.email] a password needs its username (BACKUP_SMTP_USER)".into())),
        };
        Ok(EmailConfig {
            recipients,
            smtp_host,
            smtp_port,
            tls,
            login,
            from,
            min_severity: min_severity(s, self.min_severity, Status::Warning)?,
            tls_policy: TlsPolicy { ca_file: self.ca_file, allow_tls12: self.allow_tls12.unwrap_or(false) },
        })
    }
}

impl SlackEntry {
    fn validate(self) -> Result<SlackConfig, ConfigError> {
        let url = required("slack", self.webhook_url, "webhook_url", Some("BACKUP_SLACK_WEBHOOK_URL"), "the incoming webhook's URL, https://hooks.slack.com/services/...")?;
        Ok(SlackConfig {
            webhook_url: endpoint_url("slack", url, "webhook_url", Some("BACKUP_SLACK_WEBHOOK_URL"))?,
            min_severity: min_severity("slack", self.min_severity, Status::Critical)?,
            tls_policy: TlsPolicy { ca_file: self.ca_file, allow_tls12: self.allow_tls12.unwrap_or(false) },
        })
    }
}

impl SmsEntry {
    fn validate(self) -> Result<SmsConfig, ConfigError> {
        let s = "sms";
        let url = required(s, self.url, "url", Some("BACKUP_SMS_URL"), "the messages API, e.g. https://api.twilio.com/2010-04-01/Accounts/<account>/Messages.json")?;
        let to = self.to.unwrap_or_default();
        if to.is_empty() {
            return Err(ConfigError::Invalid("[notifications.sms] needs to (BACKUP_SMS_TO, comma-separated): the numbers to text, e.g. to = [\"+15550100\"]".into()));
        }
        let from = required(s, self.from, "from", Some("BACKUP_SMS_FROM"), "the sending number")?;
        let account = required(s, self.account, "account", Some("BACKUP_SMS_ACCOUNT"), "the API account (the user of HTTP basic auth)")?;
        let token = SecretSetting::from_fields(s, self.token, self.token_file, ("token (BACKUP_SMS_TOKEN)", "token_file"))?
            .ok_or_else(|| ConfigError::Invalid("[notifications.sms] needs token (BACKUP_SMS_TOKEN) or token_file: the API's auth token".into()))?;
        Ok(SmsConfig {
            url: endpoint_url(s, url, "url", Some("BACKUP_SMS_URL"))?,
            to,
            from,
            account,
            token,
            min_severity: min_severity(s, self.min_severity, Status::Critical)?,
            tls_policy: TlsPolicy { ca_file: self.ca_file, allow_tls12: self.allow_tls12.unwrap_or(false) },
        })
    }
}

impl WebhookEntry {
    fn validate(self) -> Result<WebhookConfig, ConfigError> {
        let s = "webhook";
        let url = required(s, self.url, "url", Some("BACKUP_WEBHOOK_URL"), "where the JSON is POSTed, e.g. https://ops.example.com/hooks/backup")?;
        Ok(WebhookConfig {
            url: endpoint_url(s, url, "url", Some("BACKUP_WEBHOOK_URL"))?,
            bearer_token: SecretSetting::from_fields(s, self.bearer_token, self.bearer_token_file, ("bearer_token", "bearer_token_file"))?,
            min_severity: min_severity(s, self.min_severity, Status::Warning)?,
            tls_policy: TlsPolicy { ca_file: self.ca_file, allow_tls12: self.allow_tls12.unwrap_or(false) },
        })
    }
}

fn parse_bool(var: &str, v: &str) -> Result<bool, ConfigError> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" => Ok(true),
        "0" | "false" | "off" | "no" => Ok(false),
        _ => Err(ConfigError::env(var, v, "true or false")),
    }
}

/// A repository inside the data directory would be copied into every base backup and deleted
/// by every restore: refuse it outright. Only a local repository can be there.
pub fn refuse_repo_inside_pgdata(repo: &Location, pgdata: &Path) -> Result<(), ConfigError> {
    match repo.local_path() {
        Some(path) => refuse_dir_inside_pgdata(path, pgdata),
        None => Ok(()),
    }
}

fn refuse_dir_inside_pgdata(repo: &Path, pgdata: &Path) -> Result<(), ConfigError> {
    let pgdata = pgdata.canonicalize().unwrap_or_else(|_| pgdata.to_path_buf());
    // The repository may not exist yet: resolve its nearest existing ancestor.
    let mut existing = repo.to_path_buf();
    let mut tail = Vec::new();
    while !existing.exists() {
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                tail.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut resolved = existing.canonicalize().unwrap_or(existing);
    for part in tail.iter().rev() {
        resolved.push(part);
    }
    if resolved.starts_with(&pgdata) {
        return Err(ConfigError::RepoInsidePgdata { repo: resolved.display().to_string(), pgdata: pgdata.display().to_string() });
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}")]
    Read { path: String, #[source] cause: std::io::Error },
    #[error("configuration file {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("environment variable {var}={value:?} is not {expected}")]
    Env { var: String, value: String, expected: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("no repository configured: set repo_path in the configuration file or BACKUP_DIR")]
    NoRepository,
    #[error("no repository is named {name:?}; the configuration has: {known}")]
    UnknownRepository { name: String, known: String },
    #[error("repository {repo} is inside the data directory {pgdata}: it would be copied into backups and wiped by restores; put it elsewhere")]
    RepoInsidePgdata { repo: String, pgdata: String },
}

impl ConfigError {
    fn env(var: &str, value: &str, expected: &str) -> ConfigError {
        ConfigError::Env { var: var.into(), value: value.into(), expected: expected.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_encrypt_and_compress() {
        let c = Config::parse("", "t", no_env).unwrap();
        assert!(c.encryption && c.compression);
        assert_eq!(c.compression(), Compression::Zstd { level: 3 });
        assert!(matches!(c.primary_repo(), Err(ConfigError::NoRepository)));
    }

    #[test]
    fn environment_overrides_file() {
        let file = "repo_path = \"/from/file\"\ncompression_level = 5\nencryption = true\n";
        let env = |k: &str| match k {
            "BACKUP_DIR" => Some("/from/env".to_string()),
            "BACKUP_ENCRYPTION" => Some("off".to_string()),
            "BACKUP_RETENTION_DAYS" => Some("7".to_string()),
            _ => None,
        };
        let c = Config::parse(file, "t", env).unwrap();
        assert_eq!(c.primary_repo().unwrap().location, Location::Local { path: "/from/env".into() });
        assert!(!c.encryption);
        assert_eq!(c.compression_level, 5);
        assert_eq!(c.retention_days, 7);
    }

    #[test]
    fn retention_windows_per_kind() {
        let c = Config::parse("", "t", no_env).unwrap();
        assert_eq!(
            (c.retention_days, c.retention_incremental_days, c.retention_wal_days, c.retention_monthly_months),
            (30, 7, 7, 12),
            "the product document's policy"
        );
        let file = "retention_days = 60\nretention_incremental_days = 14\nretention_monthly_months = 0\n";
        let env = |k: &str| (k == "BACKUP_RETENTION_WAL_DAYS").then(|| "10".to_string());
        let c = Config::parse(file, "t", env).unwrap();
        assert_eq!((c.retention_days, c.retention_incremental_days, c.retention_wal_days, c.retention_monthly_months), (60, 14, 10, 0));
        let err = Config::parse("retention_wal_days = 0", "t", no_env).unwrap_err();
        assert!(err.to_string().contains("retention_wal_days") && err.to_string().contains("at least 1 day"), "{err}");
        let err = Config::parse("", "t", |k| (k == "BACKUP_RETENTION_INCREMENTAL_DAYS").then(|| "a week".into())).unwrap_err();
        assert!(err.to_string().contains("BACKUP_RETENTION_INCREMENTAL_DAYS=\"a week\""), "{err}");
        assert!(Config::parse("retention_days = 0", "t", no_env).is_err());
        assert!(Config::parse("retention_monthly_months = 100000", "t", no_env).is_err());
        let repo0 = "[[repos]]\nname = \"a\"\ntype = \"local\"\npath = \"/a\"\nretention_days = 0\n";
        assert!(Config::parse(repo0, "t", no_env).unwrap_err().to_string().contains("retention_days 0"));
    }

    #[test]
    fn prefetch_depth_from_file_and_environment() {
        assert_eq!(Config::parse("", "t", no_env).unwrap().prefetch, 8);
        assert_eq!(Config::parse("prefetch = 0", "t", no_env).unwrap().prefetch, 0);
        let c = Config::parse("prefetch = 2", "t", |k| (k == "BACKUP_PREFETCH").then(|| "16".into())).unwrap();
        assert_eq!(c.prefetch, 16, "the environment wins");
        let err = Config::parse("", "t", |k| (k == "BACKUP_PREFETCH").then(|| "lots".into())).unwrap_err();
        assert!(err.to_string().contains("BACKUP_PREFETCH=\"lots\""), "{err}");
        let err = Config::parse("prefetch = 100000", "t", no_env).unwrap_err();
        assert!(err.to_string().contains("prefetch") && err.to_string().contains("256"), "{err}");
    }

    #[test]
    fn bad_values_name_their_source() {
        let err = Config::parse("", "t", |k| (k == "BACKUP_COMPRESSION").then(|| "maybe".into())).unwrap_err();
        assert!(err.to_string().contains("BACKUP_COMPRESSION=\"maybe\""), "{err}");
        let err = Config::parse("repo_pth = \"/x\"", "/etc/x.conf", no_env).unwrap_err();
        assert!(err.to_string().contains("/etc/x.conf") && err.to_string().contains("repo_pth"), "{err}");
        assert!(Config::parse("compression_level = 40", "t", no_env).is_err());
    }

    #[test]
    fn repository_inside_pgdata_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pgdata = dir.path().join("data");
        std::fs::create_dir(&pgdata).unwrap();
        let local = |p: PathBuf| Location::Local { path: p };
        assert!(refuse_repo_inside_pgdata(&local(pgdata.join("backups/repo")), &pgdata).is_err());
        assert!(refuse_repo_inside_pgdata(&local(pgdata.join("../data/x")), &pgdata).is_err());
        assert!(refuse_repo_inside_pgdata(&local(dir.path().join("repo")), &pgdata).is_ok());
    }

    #[test]
    fn several_repositories_primary_first() {
        let file = "repo_path = \"/var/repo\"\n[[repos]]\nname = \"second\"\ntype = \"local\"\npath = \"/mnt/other\"\nretention_days = 90\n";
        let c = Config::parse(file, "t", no_env).unwrap();
        let names: Vec<String> = c.repositories().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["local", "second"]);
        assert_eq!(c.repositories()[1].retention_days, Some(90));
        assert_eq!(c.primary_repo().unwrap().name, "local");
        let only = Config::parse("[[repos]]\nname = \"a\"\ntype = \"local\"\npath = \"/a\"\n", "t", no_env).unwrap();
        assert_eq!(only.primary_repo().unwrap().location, Location::Local { path: "/a".into() });
        let dup = "[[repos]]\nname = \"a\"\ntype = \"local\"\npath = \"/a\"\n[[repos]]\nname = \"a\"\ntype = \"local\"\npath = \"/b\"\n";
        assert!(Config::parse(dup, "t", no_env).unwrap_err().to_string().contains("unique"));
        let unknown = "[[repos]]\nname = \"a\"\ntype = \"floppy\"\npath = \"/a\"\n";
        assert!(Config::parse(unknown, "/etc/x.conf", no_env).unwrap_err().to_string().contains("floppy"));
    }

    const S3_REPO: &str = "[[repos]]\nname = \"offsite\"\ntype = \"s3\"\nbucket = \"pg-backups\"\nprefix = \"/cluster1\"\nregion = \"eu-west-1\"\n";

    #[test]
    fn s3_repositories_parse_with_defaults() {
        let c = Config::parse(S3_REPO, "t", no_env).unwrap();
        let Location::S3(s3) = &c.primary_repo().unwrap().location else { panic!("not s3") };
        assert_eq!((s3.bucket.as_str(), s3.prefix.as_str(), s3.region.as_str()), ("pg-backups", "cluster1/", "eu-west-1"));
        assert_eq!(s3.credentials, S3Credentials::DefaultChain);
        assert!(!s3.force_path_style && !s3.allow_tls12 && s3.endpoint.is_none() && s3.ca_file.is_none());
        assert_eq!(c.primary_repo().unwrap().location.to_string(), "s3://pg-backups/cluster1/");
        assert!(c.primary_repo().unwrap().location.local_path().is_none());

        let full = format!(
            "{S3_REPO}endpoint = \"https://minio.internal:9000\"\nforce_path_style = true\naccess_key_id = \"AKIDEXAMPLE\"\n\
             secret_access_key_file = \"/etc/pg_backup_ext/s3.secret\"\nca_file = \"/etc/ssl/private-ca.pem\"\nallow_tls12 = true\nretention_days = 90\n"
        );
        let c = Config::parse(&full, "t", no_env).unwrap();
        let repo = c.primary_repo().unwrap();
        let Location::S3(s3) = &repo.location else { panic!("not s3") };
        assert_eq!(s3.endpoint.as_deref(), Some("https://minio.internal:9000"));
        assert!(s3.force_path_style && s3.allow_tls12);
        assert_eq!(s3.ca_file.as_deref(), Some(Path::new("/etc/ssl/private-ca.pem")));
        assert_eq!(
            s3.credentials,
            S3Credentials::SecretFile { access_key_id: "AKIDEXAMPLE".into(), secret_access_key_file: "/etc/pg_backup_ext/s3.secret".into() }
        );
        assert_eq!(repo.retention_days, Some(90));
    }

    #[test]
    fn s3_errors_say_what_is_missing() {
        let err = |text: &str| Config::parse(text, "/etc/x.conf", no_env).unwrap_err().to_string();
        let no_bucket = "[[repos]]\nname = \"o\"\ntype = \"s3\"\nregion = \"us-east-1\"\n";
        assert!(err(no_bucket).contains("needs a bucket"), "{}", err(no_bucket));
        let no_region = "[[repos]]\nname = \"o\"\ntype = \"s3\"\nbucket = \"pg-backups\"\n";
        assert!(err(no_region).contains("needs a region"), "{}", err(no_region));
        assert!(err(&format!("{S3_REPO}access_key_id = \"AK\"\n")).contains("needs secret_access_key"));
        assert!(err(&format!("{S3_REPO}secret_access_key = \"s\"\n")).contains("access_key_id"));
        assert!(err(&format!("{S3_REPO}access_key_id = \"AK\"\nsecret_access_key = \"s\"\nsecret_access_key_file = \"/f\"\n")).contains("not both"));
        assert!(err(&S3_REPO.replace("pg-backups", "PG_Backups")).contains("not a valid S3 bucket name"));
        assert!(err(&format!("{S3_REPO}path = \"/x\"\n")).contains("not path"));
        assert!(err(&format!("{S3_REPO}bucket_typo = 1\n")).contains("bucket_typo"));
        let local_with_s3 = "[[repos]]\nname = \"a\"\ntype = \"local\"\npath = \"/a\"\nbucket = \"b\"\n";
        assert!(err(local_with_s3).contains("does not take bucket"), "{}", err(local_with_s3));
    }

    #[test]
    fn the_s3_secret_never_shows() {
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let text = format!("{S3_REPO}access_key_id = \"AKIDEXAMPLE\"\nsecret_access_key = \"{secret}\"\n");
        let c = Config::parse(&text, "t", no_env).unwrap();
        let repo = c.primary_repo().unwrap();
        let Location::S3(s3) = &repo.location else { panic!("not s3") };
        assert_eq!(
            s3.credentials,
            S3Credentials::Static { access_key_id: "AKIDEXAMPLE".into(), secret_access_key: Secret::new(secret) }
        );
        for shown in [format!("{c:?}"), format!("{repo:?}"), format!("{:?}", repo.location), repo.location.to_string(), format!("{c:#?}")] {
            assert!(!shown.contains(secret), "secret in {shown}");
        }
        assert!(format!("{repo:?}").contains("<redacted>"));
        // A parse error about the same entry does not echo the secret either.
        let bad = format!("{text}allow_tls12 = \"yes\"\n");
        let e = Config::parse(&bad, "t", no_env).unwrap_err().to_string();
        assert!(!e.contains(secret), "{e}");
    }

    #[test]
    fn wal_archiving_per_repository() {
        let file = "repo_path = \"/var/repo\"\n[[repos]]\nname = \"far\"\ntype = \"local\"\npath = \"/far\"\narchive = \"best_effort\"\n";
        let c = Config::parse(file, "t", no_env).unwrap();
        let modes: Vec<WalArchiving> = c.repositories().iter().map(|r| r.wal).collect();
        assert_eq!(modes, [WalArchiving::Required, WalArchiving::BestEffort]);
        let first = "[[repos]]\nname = \"far\"\ntype = \"local\"\npath = \"/far\"\narchive = \"best_effort\"\n";
        let e = Config::parse(first, "t", no_env).unwrap_err().to_string();
        assert!(e.contains("\"far\" is the primary") && e.contains("best_effort"), "{e}");
        let typo = "[[repos]]\nname = \"far\"\ntype = \"local\"\npath = \"/far\"\narchive = \"sometimes\"\n";
        let e = Config::parse(typo, "t", no_env).unwrap_err().to_string();
        assert!(e.contains("sometimes") && e.contains("best_effort"), "{e}");
        assert_eq!(c.repo_named("far").unwrap().name, "far");
        let e = c.repo_named("nowhere").unwrap_err().to_string();
        assert!(e.contains("\"nowhere\"") && e.contains("local, far"), "{e}");
    }

    #[test]
    fn product_remote_variables_add_an_s3_repository() {
        let env = |k: &str| {
            match k {
                "BACKUP_DIR" => Some("/var/repo"),
                "BACKUP_REMOTE_ENABLED" => Some("true"),
                "BACKUP_REMOTE_PROVIDER" => Some("aws"),
                "AWS_S3_BUCKET" => Some("audiotailoc-backups"),
                "AWS_REGION" => Some("ap-southeast-1"),
                "BACKUP_REMOTE_ARCHIVE" => Some("best_effort"),
                _ => None,
            }
            .map(String::from)
        };
        let c = Config::parse("", "t", env).unwrap();
        let repos = c.repositories();
        assert_eq!(repos.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["local", "remote"]);
        let Location::S3(s3) = &repos[1].location else { panic!("not s3") };
        assert_eq!((s3.bucket.as_str(), s3.region.as_str(), &s3.credentials), ("audiotailoc-backups", "ap-southeast-1", &S3Credentials::DefaultChain));
        assert_eq!(repos[1].wal, WalArchiving::BestEffort);
        let no_bucket = |k: &str| if k == "BACKUP_REMOTE_ENABLED" { Some("1".to_string()) } else { None };
        let e = Config::parse("", "t", no_bucket).unwrap_err().to_string();
        assert!(e.contains("AWS_S3_BUCKET"), "{e}");
        let off = |k: &str| if k == "BACKUP_REMOTE_ENABLED" { Some("false".to_string()) } else { None };
        assert!(Config::parse("", "t", off).unwrap().repositories().is_empty());
    }
    const GCS_REPO: &str = "[[repos]]\nname = \"g\"\ntype = \"gcs\"\nbucket = \"pg-backups\"\n";
    const AZURE_REPO: &str = "[[repos]]\nname = \"z\"\ntype = \"azure\"\naccount = \"pgacct\"\ncontainer = \"backups\"\n";

    fn only_location(text: &str) -> Location {
        let config = Config::parse(text, "/etc/x.conf", no_env).unwrap();
        config.repositories().into_iter().next().unwrap().location
    }

    #[test]
    fn gcs_repositories_parse_with_defaults() {
        let Location::Gcs(gcs) = only_location(GCS_REPO) else { panic!("not gcs") };
        assert_eq!((gcs.bucket.as_str(), gcs.common.prefix.as_str()), ("pg-backups", ""));
        assert_eq!(gcs.credentials, GcsCredentials::DefaultChain);
        assert!(!gcs.common.allow_tls12 && gcs.common.endpoint.is_none() && gcs.common.ca_file.is_none());
        let full = format!(
            "{GCS_REPO}prefix = \"/cluster-a/\"\nendpoint = \"http://127.0.0.1:4443\"\nservice_account_file = \"/etc/sa.json\"\nallow_tls12 = true\nca_file = \"/etc/ca.pem\"\n"
        );
        let Location::Gcs(gcs) = only_location(&full) else { panic!("not gcs") };
        assert_eq!(gcs.common.prefix, "cluster-a/");
        assert_eq!(gcs.credentials, GcsCredentials::ServiceAccountFile("/etc/sa.json".into()));
        assert_eq!(gcs.common.endpoint.as_deref(), Some("http://127.0.0.1:4443"));
        assert!(gcs.common.allow_tls12 && gcs.common.ca_file.is_some());
        assert_eq!(Location::Gcs(gcs).to_string(), "gs://pg-backups/cluster-a/");
    }

    #[test]
    fn azure_repositories_parse_with_defaults() {
        let Location::Azure(az) = only_location(AZURE_REPO) else { panic!("not azure") };
        assert_eq!((az.account.as_str(), az.container.as_str(), az.common.prefix.as_str()), ("pgacct", "backups", ""));
        assert_eq!(az.credentials, AzureCredentials::DefaultChain);
        let Location::Azure(az) = only_location(&format!("{AZURE_REPO}access_key_file = \"/etc/k\"\nprefix = \"a/b\"\n")) else { panic!() };
        assert_eq!(az.credentials, AzureCredentials::AccessKeyFile("/etc/k".into()));
        assert_eq!(Location::Azure(az).to_string(), "azure://pgacct/backups/a/b/");
        let Location::Azure(az) = only_location(&format!("{AZURE_REPO}access_key = \"c2VjcmV0\"\n")) else { panic!() };
        assert_eq!(az.credentials, AzureCredentials::AccessKey(Secret::new("c2VjcmV0")));
        assert!(!format!("{az:?}").contains("c2VjcmV0"), "the key shows in Debug");
        assert!(!Location::Azure(az).to_string().contains("c2VjcmV0"));
    }

    #[test]
    fn gcs_and_azure_errors_say_what_is_wrong() {
        let err = |text: &str| Config::parse(text, "/etc/x.conf", no_env).unwrap_err().to_string();
        let e = err("[[repos]]\nname = \"g\"\ntype = \"gcs\"\nprefix = \"p\"\n");
        assert!(e.contains("type gcs needs a bucket"), "{e}");
        let e = err("[[repos]]\nname = \"z\"\ntype = \"azure\"\naccount = \"pgacct\"\n");
        assert!(e.contains("type azure needs a container"), "{e}");
        let e = err("[[repos]]\nname = \"z\"\ntype = \"azure\"\ncontainer = \"backups\"\n");
        assert!(e.contains("needs an account"), "{e}");
        let e = err(&format!("{GCS_REPO}region = \"us-east-1\"\n"));
        assert!(e.contains("type gcs does not take region (an s3 setting)"), "{e}");
        let e = err(&format!("{GCS_REPO}access_key = \"k\"\n"));
        assert!(e.contains("does not take access_key (an azure setting)"), "{e}");
        let e = err(&format!("{AZURE_REPO}bucket = \"b\"\n"));
        assert!(e.contains("type azure does not take bucket (an s3/gcs setting)"), "{e}");
        let e = err(&format!("{AZURE_REPO}service_account_file = \"/sa.json\"\n"));
        assert!(e.contains("does not take service_account_file (a"), "{e}");
        let e = err(&format!("{AZURE_REPO}access_key = \"k\"\naccess_key_file = \"/k\"\n"));
        assert!(e.contains("access_key or access_key_file, not both"), "{e}");
        let e = err(&format!("{S3_REPO}container = \"c\"\n"));
        assert!(e.contains("type s3 does not take container"), "{e}");
        assert!(err(&AZURE_REPO.replace("backups", "Back_ups")).contains("not a valid container name"));
        assert!(err(&GCS_REPO.replace("pg-backups", "PG")).contains("not a valid GCS bucket name"));
        assert!(err(&format!("{GCS_REPO}path = \"/x\"\n")).contains("not path"));
        let e = err("[[repos]]\nname = \"x\"\ntype = \"ftp\"\n");
        assert!(e.contains("\"local\", \"s3\", \"gcs\" and \"azure\""), "{e}");
        let local = "[[repos]]\nname = \"a\"\ntype = \"local\"\npath = \"/a\"\naccount = \"b\"\n";
        assert!(err(local).contains("type local does not take account (an azure setting)"), "{}", err(local));
    }

    #[test]
    fn s3_object_lock_follows_the_retention_window() {
        let lock = |extra: &str| Config::parse(&format!("retention_days = 45\n{S3_REPO}{extra}"), "t", no_env);
        let c = lock("object_lock = \"compliance\"\n").unwrap();
        let Location::S3(s3) = &c.primary_repo().unwrap().location else { panic!("not s3") };
        assert_eq!(s3.object_lock, Some(ObjectLock { mode: LockMode::Compliance, days: 45 }));
        let c = lock("object_lock = \"governance\"\nretention_days = 90\n").unwrap();
        let Location::S3(s3) = &c.primary_repo().unwrap().location else { panic!("not s3") };
        assert_eq!(s3.object_lock, Some(ObjectLock { mode: LockMode::Governance, days: 90 }));
        let c = lock("object_lock = \"compliance\"\nobject_lock_days = 10\n").unwrap();
        let Location::S3(s3) = &c.primary_repo().unwrap().location else { panic!("not s3") };
        assert_eq!(s3.object_lock.map(|l| l.days), Some(10));
        let e = lock("object_lock = \"forever\"\n").unwrap_err().to_string();
        assert!(e.contains("forever") && e.contains("compliance"), "{e}");
        let e = lock("object_lock_days = 10\n").unwrap_err().to_string();
        assert!(e.contains("object_lock_days needs object_lock"), "{e}");
    }

    const EMAIL: &str = "[notifications]\nenabled = true\n[notifications.email]\nrecipients = [\"admin@example.com\"]\nsmtp_host = \"smtp.example.com\"\nfrom = \"pg_backup_ext <backup@db1.example.com>\"\n";

    fn notifications(text: &str) -> Result<NotificationsConfig, String> {
        let c = Config::parse(text, "/etc/x.conf", no_env).map_err(|e| e.to_string())?;
        // The rest of the file stays usable whatever the section says.
        match c.notifications_error {
            Some(e) => Err(e),
            None => Ok(c.notifications),
        }
    }

    #[test]
    fn notifications_are_off_by_default() {
        let c = Config::parse("", "t", no_env).unwrap();
        assert_eq!(c.notifications, NotificationsConfig::default());
        assert!(!c.notifications.enabled);
        let off = notifications(&EMAIL.replace("enabled = true", "enabled = false")).unwrap();
        assert!(!off.enabled && off.email.is_some(), "a disabled section is still read");
        assert!(!notifications("[notifications]\n").unwrap().enabled);
    }

    #[test]
    fn notification_channels_parse_with_defaults() {
        let n = notifications(EMAIL).unwrap();
        assert!(n.enabled);
        let email = n.email.unwrap();
        assert_eq!(email.recipients, ["admin@example.com"]);
        assert_eq!((email.smtp_host.as_str(), email.smtp_port, email.tls), ("smtp.example.com", 587, SmtpTls::StartTls));
        assert_eq!(email.from, "pg_backup_ext <backup@db1.example.com>");
        assert_eq!(email.min_severity, Status::Warning);
        assert_eq!(email.login, None);
        assert_eq!(email.tls_policy, TlsPolicy { ca_file: None, allow_tls12: false });
        let implicit = notifications(&format!("{EMAIL}tls = \"tls\"\n")).unwrap().email.unwrap();
        assert_eq!((implicit.tls, implicit.smtp_port), (SmtpTls::Implicit, 465));
        let full = format!(
            "{EMAIL}smtp_port = 2525\nusername = \"backup\"\npassword_file = \"/etc/pg_backup_ext/smtp.pass\"\nmin_severity = \"critical\"\nallow_tls12 = true\nca_file = \"/etc/ca.pem\"\n"
        );
        let email = notifications(&full).unwrap().email.unwrap();
        assert_eq!(email.smtp_port, 2525);
        assert_eq!(email.login, Some(SmtpLogin { username: "backup".into(), password: SecretSetting::File("/etc/pg_backup_ext/smtp.pass".into()) }));
        assert_eq!(email.min_severity, Status::Critical);
        assert_eq!(email.tls_policy, TlsPolicy { ca_file: Some("/etc/ca.pem".into()), allow_tls12: true });

        let others = "[notifications]\nenabled = true\n\
            [notifications.slack]\nwebhook_url = \"https://hooks.slack.com/services/T0/B0/abc\"\n\
            [notifications.sms]\nurl = \"https://api.twilio.com/2010-04-01/Accounts/ACxx/Messages.json\"\nto = [\"+84900000001\"]\nfrom = \"+15550199\"\naccount = \"ACxx\"\ntoken_file = \"/etc/pg_backup_ext/sms.token\"\n\
            [notifications.webhook]\nurl = \"https://ops.example.com/hooks/backup\"\nbearer_token = \"b\"\nmin_severity = \"critical\"\n";
        let n = notifications(others).unwrap();
        let slack = n.slack.unwrap();
        assert_eq!((slack.webhook_url.expose(), slack.min_severity), ("https://hooks.slack.com/services/T0/B0/abc", Status::Critical));
        let sms = n.sms.unwrap();
        assert_eq!((sms.to.as_slice(), sms.from.as_str(), sms.account.as_str()), (&["+84900000001".to_string()][..], "+15550199", "ACxx"));
        assert_eq!((sms.token, sms.min_severity), (SecretSetting::File("/etc/pg_backup_ext/sms.token".into()), Status::Critical));
        let webhook = n.webhook.unwrap();
        assert_eq!(webhook.url.origin(), "https://ops.example.com");
        assert_eq!((webhook.bearer_token, webhook.min_severity), (Some(SecretSetting::Value(Secret::new("b"))), Status::Critical));
        assert!(n.email.is_none());
    }

    #[test]
    fn notification_variables_complete_and_override_the_file() {
        let env = |k: &str| {
            match k {
                "BACKUP_NOTIFICATIONS_ENABLED" => Some("true"),
                "BACKUP_EMAIL_RECIPIENTS" => Some("a@example.com, b@example.com,"),
                "BACKUP_SMTP_HOST" => Some("mail.internal"),
                "BACKUP_SMTP_PORT" => Some("465"),
                "BACKUP_SMTP_TLS" => Some("tls"),
                "BACKUP_SMTP_USER" => Some("backup"),
                "BACKUP_SMTP_PASSWORD" => Some("env-password"),
                "BACKUP_SMTP_FROM" => Some("backup@db1.example.com"),
                "BACKUP_SLACK_WEBHOOK_URL" => Some("https://hooks.slack.com/services/T1/B1/envsecret"),
                "BACKUP_SMS_URL" => Some("https://sms.example.com/send"),
                "BACKUP_SMS_TO" => Some("+1555,+1556"),
                "BACKUP_SMS_FROM" => Some("+1999"),
                "BACKUP_SMS_ACCOUNT" => Some("acct"),
                "BACKUP_SMS_TOKEN" => Some("sms-token"),
                "BACKUP_WEBHOOK_URL" => Some("https://ops.example.com/in"),
                _ => None,
            }
            .map(String::from)
        };
        // The file begins the e-mail section (and a password file the variable replaces).
        let file = "[notifications.email]\nmin_severity = \"critical\"\npassword_file = \"/etc/old.pass\"\nsmtp_host = \"smtp.example.com\"\n";
        let n = Config::parse(file, "t", env).unwrap().notifications;
        assert!(n.enabled);
        let email = n.email.unwrap();
        assert_eq!(email.recipients, ["a@example.com", "b@example.com"]);
        assert_eq!((email.smtp_host.as_str(), email.smtp_port, email.tls), ("mail.internal", 465, SmtpTls::Implicit));
        assert_eq!(email.login, Some(SmtpLogin { username: "backup".into(), password: SecretSetting::Value(Secret::new("env-password")) }));
        assert_eq!((email.from.as_str(), email.min_severity), ("backup@db1.example.com", Status::Critical));
        assert_eq!(n.slack.unwrap().webhook_url.expose(), "https://hooks.slack.com/services/T1/B1/envsecret");
        let sms = n.sms.unwrap();
        assert_eq!((sms.to, sms.token), (vec!["+1555".to_string(), "+1556".to_string()], SecretSetting::Value(Secret::new("sms-token"))));
        assert_eq!(n.webhook.unwrap().url.expose(), "https://ops.example.com/in");

        // Variables alone make a section; enabled = true in the file may be turned off.
        let only_slack = |k: &str| (k == "BACKUP_SLACK_WEBHOOK_URL").then(|| "https://hooks.slack.com/services/x".to_string());
        let n = Config::parse("[notifications]\nenabled = true\n", "t", only_slack).unwrap().notifications;
        assert!(n.enabled && n.slack.is_some() && n.email.is_none() && n.sms.is_none());
        let off = |k: &str| (k == "BACKUP_NOTIFICATIONS_ENABLED").then(|| "off".to_string());
        assert!(!Config::parse("[notifications]\nenabled = true\n", "t", off).unwrap().notifications.enabled);
        // Errors are kept beside a usable configuration (archiving goes on), not raised.
        let e = Config::parse("", "t", |k| (k == "BACKUP_NOTIFICATIONS_ENABLED").then(|| "sometimes".into())).unwrap().notifications_error.unwrap();
        assert!(e.contains("BACKUP_NOTIFICATIONS_ENABLED=\"sometimes\""), "{e}");
        let e = Config::parse(EMAIL, "t", |k| (k == "BACKUP_SMTP_PORT").then(|| "smtp".into())).unwrap().notifications_error.unwrap();
        assert!(e.contains("BACKUP_SMTP_PORT=\"smtp\"") && e.contains("port number"), "{e}");
    }

    #[test]
    fn notification_errors_name_the_missing_setting() {
        let err = |text: &str| notifications(text).unwrap_err();
        let e = err("[notifications.email]\nsmtp_host = \"smtp.example.com\"\nfrom = \"a@b.example\"\n");
        assert!(e.contains("[notifications.email] needs recipients (BACKUP_EMAIL_RECIPIENTS"), "{e}");
        let e = err("[notifications.email]\nrecipients = [\"a@example.com\"]\nfrom = \"a@b.example\"\n");
        assert!(e.contains("[notifications.email] needs smtp_host (BACKUP_SMTP_HOST)"), "{e}");
        let e = err(&EMAIL.replace("from = \"pg_backup_ext <backup@db1.example.com>\"\n", ""));
        assert!(e.contains("needs from (BACKUP_SMTP_FROM)"), "{e}");
        let e = err(&EMAIL.replace("admin@example.com", "admin at example"));
        assert!(e.contains("recipients") && e.contains("\"admin at example\" is not an e-mail address"), "{e}");
        let e = err(&format!("{EMAIL}username = \"backup\"\n"));
        assert!(e.contains("username (BACKUP_SMTP_USER) needs password (BACKUP_SMTP_PASSWORD) or password_file"), "{e}");
        let e = err(&format!("{EMAIL}password = \"p\"\n"));
        assert!(e.contains("a password needs its username"), "{e}");
        let e = err(&format!("{EMAIL}username = \"u\"\npassword = \"p\"\npassword_file = \"/f\"\n"));
        assert!(e.contains("give password (BACKUP_SMTP_PASSWORD) or password_file, not both"), "{e}");
        let e = err(&format!("{EMAIL}tls = \"ssl\"\n"));
        assert!(e.contains("tls (BACKUP_SMTP_TLS) = \"ssl\"") && e.contains("\"starttls\""), "{e}");
        let e = err(&format!("{EMAIL}min_severity = \"ok\"\n"));
        assert!(e.contains("min_severity = \"ok\"; use \"warning\" or \"critical\""), "{e}");
        let e = err(&format!("{EMAIL}smtp_hots = \"x\"\n"));
        assert!(e.contains("/etc/x.conf") && e.contains("[notifications]") && e.contains("smtp_hots"), "{e}");
        let e = err("[notifications]\nenable = true\n");
        assert!(e.contains("enable"), "{e}");

        let e = err("[notifications.slack]\nmin_severity = \"warning\"\n");
        assert!(e.contains("[notifications.slack] needs webhook_url (BACKUP_SLACK_WEBHOOK_URL)"), "{e}");
        let e = err("[notifications.sms]\nurl = \"https://sms.example.com/x\"\nto = [\"+1\"]\nfrom = \"+2\"\naccount = \"a\"\n");
        assert!(e.contains("[notifications.sms] needs token (BACKUP_SMS_TOKEN) or token_file"), "{e}");
        let e = err("[notifications.sms]\nurl = \"https://sms.example.com/x\"\nfrom = \"+2\"\naccount = \"a\"\ntoken = \"t\"\n");
        assert!(e.contains("[notifications.sms] needs to (BACKUP_SMS_TO"), "{e}");
        let e = err("[notifications.sms]\nurl = \"https://sms.example.com/x\"\nto = [\"+1\"]\nfrom = \"+2\"\ntoken = \"t\"\n");
        assert!(e.contains("[notifications.sms] needs account (BACKUP_SMS_ACCOUNT)"), "{e}");
        let e = err("[notifications.webhook]\nbearer_token = \"t\"\n");
        assert!(e.contains("[notifications.webhook] needs url (BACKUP_WEBHOOK_URL)"), "{e}");
        let e = err("[notifications.webhook]\nurl = \"https://ops.example.com/x\"\nbearer_token = \"t\"\nbearer_token_file = \"/t\"\n");
        assert!(e.contains("bearer_token or bearer_token_file, not both"), "{e}");
    }

    #[test]
    fn notification_endpoints_must_be_protected() {
        let err = |text: &str| notifications(text).unwrap_err();
        let e = err(&format!("{EMAIL}tls = \"none\"\n"));
        assert!(e.contains("tls = \"none\"") && e.contains("smtp.example.com in clear text") && e.contains("only for a relay on this machine"), "{e}");
        for local in ["localhost", "127.0.0.1", "::1"] {
            let email = notifications(&format!("{}tls = \"none\"\n", EMAIL.replace("smtp.example.com", local))).unwrap().email.unwrap();
            assert_eq!((email.tls, email.smtp_port), (SmtpTls::None, 25));
        }
        let e = err("[notifications.slack]\nwebhook_url = \"http://hooks.example.com/services/T0/B0/plainsecret\"\n");
        assert!(e.contains("webhook_url (BACKUP_SLACK_WEBHOOK_URL) is plain http:// to hooks.example.com; use https://"), "{e}");
        assert!(!e.contains("plainsecret"), "{e}");
        let e = err("[notifications.webhook]\nurl = \"https://user:pw-secret@ops.example.com/x\"\n");
        assert!(e.contains("must not hold credentials") && !e.contains("pw-secret"), "{e}");
        let e = err("[notifications.webhook]\nurl = \"ftp://ops.example.com/x-secret\"\n");
        assert!(e.contains("must start with https://") && !e.contains("x-secret"), "{e}");
        let e = err("[notifications.webhook]\nurl = \"not a url\"\n");
        assert!(e.contains("url (BACKUP_WEBHOOK_URL) is not a URL"), "{e}");
        assert!(notifications("[notifications.webhook]\nurl = \"http://127.0.0.1:8080/in\"\n").is_ok());
        assert!(notifications("[notifications.webhook]\nurl = \"http://[::1]:8080/in\"\n").is_ok());
    }

    #[test]
    fn notification_secrets_never_show() {
        let text = "[notifications]\nenabled = true\n\
            [notifications.email]\nrecipients = [\"a@example.com\"]\nsmtp_host = \"smtp.example.com\"\nfrom = \"b@example.com\"\nusername = \"u\"\npassword = \"smtp-pa55word\"\n\
            [notifications.slack]\nwebhook_url = \"https://hooks.slack.com/services/T0/B0/slack-s3cret\"\n\
            [notifications.sms]\nurl = \"https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json\"\nto = [\"+1\"]\nfrom = \"+2\"\naccount = \"AC1\"\ntoken = \"sms-t0ken\"\n\
            [notifications.webhook]\nurl = \"https://ops.example.com/in?key=hook-k3y\"\nbearer_token = \"bearer-t0ken\"\n";
        let c = Config::parse(text, "t", no_env).unwrap();
        for shown in [format!("{c:?}"), format!("{c:#?}"), format!("{:?}", c.notifications)] {
            for secret in ["smtp-pa55word", "slack-s3cret", "/services/", "sms-t0ken", "hook-k3y", "bearer-t0ken"] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
            assert!(shown.contains("https://hooks.slack.com/<redacted>"), "{shown}");
        }
        // A parse error in the same section does not echo them either.
        let e = Config::parse(&format!("{text}allow_tls12 = \"yes\"\n"), "t", no_env).unwrap().notifications_error.unwrap();
        for secret in ["bearer-t0ken", "hook-k3y"] {
            assert!(!e.contains(secret), "{e}");
        }
        assert_eq!(c.notifications.slack.unwrap().webhook_url.host_port(), "hooks.slack.com");
    }

    #[test]
    fn secret_files_are_read_when_used() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "t0ken\n").unwrap();
        assert_eq!(SecretSetting::File(file.clone()).read().unwrap(), Secret::new("t0ken"));
        std::fs::write(&file, "\n").unwrap();
        assert!(SecretSetting::File(file.clone()).read().unwrap_err().contains("is empty"));
        let e = SecretSetting::File(dir.path().join("missing")).read().unwrap_err();
        assert!(e.contains("cannot read") && e.contains("missing"), "{e}");
    }
}
