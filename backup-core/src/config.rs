//! One configuration for `wal-archiver` and the extension: a TOML file, then environment
//! variables (the product document's `BACKUP_*` names) on top.
//!
//! The file is found through `--config`, else `$BACKUP_CONFIG`, else
//! `/etc/pg_backup_ext/pg_backup_ext.conf` if it exists. An `archive_command` runs with the
//! postmaster's environment, so the file is the dependable place; the variables suit containers.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::codec::Compression;
use crate::storage::{Location, S3Credentials, S3Location, Secret};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/pg_backup_ext/pg_backup_ext.conf";

/// Retention windows beyond this are typing mistakes (and would overflow date arithmetic).
const MAX_RETENTION_DAYS: u32 = 36_500;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Repository directory (`BACKUP_DIR`): the single local repository, named `local`.
    pub repo_path: Option<PathBuf>,
    /// More repositories (`[[repos]]`), after `repo_path` if both are given. The first
    /// repository is the primary one: backups, WAL and restores use it.
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
        let mut c: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: source.to_string(), reason: e.message().to_string() })?;
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
        let repos = c.repositories();
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
        });
        implicit.into_iter().chain(self.repos.iter().cloned()).collect()
    }

    /// The repository backups, WAL archiving and restores use.
    pub fn primary_repo(&self) -> Result<RepoConfig, ConfigError> {
        self.repositories().into_iter().next().ok_or(ConfigError::NoRepository)
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
}

impl RepoEntry {
    /// The S3 fields that were given, by name (a local repository takes none of them).
    fn s3_fields(&self) -> Vec<&'static str> {
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
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect()
    }

    fn s3_location(self) -> Result<S3Location, String> {
        let name = &self.name;
        if self.path.is_some() {
            return Err(format!("repository {name:?} of type s3 takes bucket and prefix, not path"));
        }
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
        Ok(location)
    }
}

impl TryFrom<RepoEntry> for RepoConfig {
    type Error = String;
    fn try_from(e: RepoEntry) -> Result<RepoConfig, String> {
        let (name, retention_days) = (e.name.clone(), e.retention_days);
        let location = match e.kind.as_str() {
            "local" => {
                if let Some(field) = e.s3_fields().first() {
                    return Err(format!("repository {name:?} of type local does not take {field} (an s3 setting)"));
                }
                Location::Local { path: e.path.ok_or_else(|| format!("repository {name:?} of type local needs a path"))? }
            }
            "s3" => Location::S3(Box::new(e.s3_location()?)),
            other => return Err(format!("repository {name:?} has type {other:?}; the supported types are \"local\" and \"s3\"")),
        };
        Ok(RepoConfig { name, location, retention_days })
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
}
