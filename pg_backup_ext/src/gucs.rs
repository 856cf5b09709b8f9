//! `backup.*` settings. The repository, keys and codec settings come from the configuration file
//! shared with `wal-archiver` (so archive_command and the extension can never disagree); the
//! GUCs say where that file is and how the server-side work runs. All reload on SIGHUP.

use std::ffi::CString;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};

pub static CONFIG_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static WORKERS: GucSetting<i32> = GucSetting::<i32>::new(2);
pub static WAL_TIMEOUT_S: GucSetting<i32> = GucSetting::<i32>::new(300);
pub static VERIFY_CHECKSUMS: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static MAX_RATE_KB: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static SCHEDULER: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static SCHEDULER_DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));
pub static JOB_HISTORY_DAYS: GucSetting<i32> = GucSetting::<i32>::new(90);
// backup.health() thresholds (defaults: backup_core::health::Thresholds::default()).
pub static HEALTH_ARCHIVE_LAG_WARNING_S: GucSetting<i32> = GucSetting::<i32>::new(300);
pub static HEALTH_ARCHIVE_LAG_CRITICAL_S: GucSetting<i32> = GucSetting::<i32>::new(1800);
pub static HEALTH_BACKUP_AGE_GRACE_S: GucSetting<i32> = GucSetting::<i32>::new(3600);
pub static HEALTH_DURATION_FACTOR: GucSetting<f64> = GucSetting::<f64>::new(3.0);
pub static HEALTH_SPACE_WARNING_PCT: GucSetting<f64> = GucSetting::<f64>::new(20.0);
pub static HEALTH_SPACE_CRITICAL_PCT: GucSetting<f64> = GucSetting::<f64>::new(10.0);
// Alerts (crate::alerter) and the metrics / status page server (crate::http_server).
pub static ALERT_INTERVAL_S: GucSetting<i32> = GucSetting::<i32>::new(60);
pub static ALERT_REPEAT_INTERVAL_S: GucSetting<i32> = GucSetting::<i32>::new(86400);
pub static ALERT_MAX_ATTEMPTS: GucSetting<i32> = GucSetting::<i32>::new(10);
pub static HTTP_LISTEN: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
// Scratch restores (crate::restore_worker).
pub static SCRATCH_DIR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static WAL_ARCHIVER: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"/usr/local/bin/wal-archiver"));

pub fn init() {
    GucRegistry::define_string_guc(
        c"backup.config_file",
        c"Configuration file shared with wal-archiver (repository, keys, compression).",
        c"Empty: $BACKUP_CONFIG of the server's environment, else /etc/pg_backup_ext/pg_backup_ext.conf.",
        &CONFIG_FILE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"backup.workers",
        c"Threads copying files during a backup.",
        c"Compression is the bound: one per core is a good start.",
        &WORKERS,
        1,
        64,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"backup.wal_timeout",
        c"Seconds a backup waits for its last WAL segment to reach the repository.",
        c"",
        &WAL_TIMEOUT_S,
        1,
        86400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"backup.max_rate",
        c"Most a backup reads from the data directory per second (0: no limit).",
        c"Like pg_basebackup --max-rate: spares the I/O of a busy server.",
        &MAX_RATE_KB,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_bool_guc(
        c"backup.verify_checksums",
        c"Verify data page checksums while backing up.",
        c"",
        &VERIFY_CHECKSUMS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"backup.scheduler",
        c"Run the scheduled jobs of backup.schedules.",
        c"Off: the scheduler worker idles. Default from $BACKUP_SCHEDULER_ENABLED, else on.",
        &SCHEDULER,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"backup.scheduler_database",
        c"Database the scheduler worker connects to: the one where CREATE EXTENSION pg_backup_ext ran.",
        c"",
        &SCHEDULER_DATABASE,
        // Fixed at server start, when the worker is registered. A library loaded later (by
        // CREATE EXTENSION, without shared_preload_libraries: no scheduler) may not define a
        // start-only setting, so there it is an ordinary one.
        if crate::postgres::loading_shared_preload_libraries() { GucContext::Postmaster } else { GucContext::Sighup },
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"backup.job_history_days",
        c"Days of backup.job_runs history the scheduler keeps.",
        c"",
        &JOB_HISTORY_DAYS,
        1,
        36500,
        GucContext::Sighup,
        GucFlags::default(),
    );
    for (name, short, setting, default_max) in [
        (c"backup.health_archive_lag_warning", c"backup.health(): age of the oldest WAL file waiting for archive_command that is a warning.", &HEALTH_ARCHIVE_LAG_WARNING_S, 86400 * 30),
        (c"backup.health_archive_lag_critical", c"backup.health(): age of the oldest WAL file waiting for archive_command that is critical.", &HEALTH_ARCHIVE_LAG_CRITICAL_S, 86400 * 30),
        (c"backup.health_backup_age_grace", c"backup.health(): time past a job's schedule before its newest backup counts as too old.", &HEALTH_BACKUP_AGE_GRACE_S, 86400 * 30),
    ] {
        GucRegistry::define_int_guc(name, short, c"", setting, 0, default_max, GucContext::Sighup, GucFlags::UNIT_S);
    }
    GucRegistry::define_float_guc(
        c"backup.health_duration_factor",
        c"backup.health(): a backup taking more than this many times the median of the previous ones of its type is a performance degradation.",
        c"",
        &HEALTH_DURATION_FACTOR,
        1.0,
        1000.0,
        GucContext::Sighup,
        GucFlags::default(),
    );
    for (name, short, setting) in [
        (c"backup.health_space_warning", c"backup.health(): percent free on a local repository's filesystem below which it is a warning.", &HEALTH_SPACE_WARNING_PCT),
        (c"backup.health_space_critical", c"backup.health(): percent free on a local repository's filesystem below which it is critical.", &HEALTH_SPACE_CRITICAL_PCT),
    ] {
        GucRegistry::define_float_guc(name, short, c"", setting, 0.0, 100.0, GucContext::Sighup, GucFlags::default());
    }
    GucRegistry::define_int_guc(
        c"backup.alert_interval",
        c"How often the alert worker evaluates backup.health() and delivers what is owed.",
        c"",
        &ALERT_INTERVAL_S,
        1,
        86400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"backup.alert_repeat_interval",
        c"An alert still firing after this long is told again (0: only when it gets worse or is resolved).",
        c"",
        &ALERT_REPEAT_INTERVAL_S,
        0,
        86400 * 365,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"backup.alert_max_attempts",
        c"Attempts to deliver one notification to one channel before giving it up (backoff from 30 s to 1 h).",
        c"",
        &ALERT_MAX_ATTEMPTS,
        1,
        1000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"backup.http_listen",
        c"Address:port of the /metrics and status page server, e.g. 127.0.0.1:9187 (empty: off).",
        c"Read-only and unauthenticated: keep it on a local or monitoring network. Needs a restart, like listen_addresses.",
        &HTTP_LISTEN,
        if crate::postgres::loading_shared_preload_libraries() { GucContext::Postmaster } else { GucContext::Sighup },
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"backup.scratch_dir",
        c"Directory scratch restores (backup.restore()) are made in; empty: beside the data directory (DATADIR_scratch).",
        c"Never inside the data directory; the OS user postgres must be able to create it.",
        &SCRATCH_DIR,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"backup.wal_archiver",
        c"The wal-archiver program a scratch restore's restore_command runs (make install puts it in /usr/local/bin).",
        c"",
        &WAL_ARCHIVER,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // The product's variable is the default; postgresql.conf (a higher-priority source) wins.
    if let Ok(v) = std::env::var("BACKUP_SCHEDULER_ENABLED") {
        crate::postgres::set_config_default("backup.scheduler", &v);
    }
}

/// The primary repository of that configuration, opened; errors as one line with their causes.
pub fn open_repo() -> Result<backup_core::pg::PgRepo, String> {
    use backup_core::error::report;
    let config = load_config().map_err(|e| report(&e))?;
    backup_core::pg::PgRepo::open(&config).map_err(|e| report(&e))
}

/// The `backup.health_*` thresholds, as set now.
pub fn health_thresholds() -> backup_core::health::Thresholds {
    let secs = |g: &GucSetting<i32>| chrono::Duration::seconds(i64::from(g.get()));
    backup_core::health::Thresholds {
        archive_lag_warning: secs(&HEALTH_ARCHIVE_LAG_WARNING_S),
        archive_lag_critical: secs(&HEALTH_ARCHIVE_LAG_CRITICAL_S),
        backup_age_grace: secs(&HEALTH_BACKUP_AGE_GRACE_S),
        duration_factor: HEALTH_DURATION_FACTOR.get(),
        space_warning_pct: HEALTH_SPACE_WARNING_PCT.get(),
        space_critical_pct: HEALTH_SPACE_CRITICAL_PCT.get(),
    }
}

/// Every configured repository, in order, opened (or why it could not be), and what the primary
/// notes as owed to each (WAL archived while a best-effort one was down). `backup.repositories()`
/// and `backup.health()` both show this.
pub fn open_all(config: &backup_core::config::Config) -> Opened {
    use backup_core::error::report;
    let repos: Vec<_> = config
        .repositories()
        .into_iter()
        .map(|rc| {
            let opened = backup_core::pg::PgRepo::open_repo(config, &rc).map_err(|e| report(&e));
            (rc, opened)
        })
        .collect();
    let owed = match repos.first() {
        Some((_, Ok(primary))) => primary.wal().owed().map_err(|e| report(&e)),
        Some((_, Err(e))) => Err(e.clone()),
        None => Ok(Default::default()),
    };
    Opened { repos, owed }
}

/// What [`open_all`] found.
pub struct Opened {
    pub repos: Vec<(backup_core::config::RepoConfig, Result<backup_core::pg::PgRepo, String>)>,
    /// By repository name; `Err` when the primary could not say.
    pub owed: Result<std::collections::BTreeMap<String, u64>, String>,
}

/// Where scratch restores go: `backup.scratch_dir`, else beside the data directory.
pub fn scratch_dir() -> std::path::PathBuf {
    match SCRATCH_DIR.get().map(|c| c.to_string_lossy().trim().to_string()).filter(|s| !s.is_empty()) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => {
            let data = crate::postgres::data_directory();
            let mut name = data.file_name().map(|n| n.to_os_string()).unwrap_or_default();
            name.push("_scratch");
            data.with_file_name(name)
        }
    }
}

/// `backup.wal_archiver`.
pub fn wal_archiver() -> String {
    WAL_ARCHIVER.get().map(|c| c.to_string_lossy().into_owned()).unwrap_or_else(|| "wal-archiver".into())
}

/// `backup.http_listen`, when set.
pub fn http_listen() -> Option<String> {
    HTTP_LISTEN.get().map(|c| c.to_string_lossy().trim().to_string()).filter(|s| !s.is_empty())
}

/// The database the scheduler works in.
pub fn scheduler_database() -> String {
    SCHEDULER_DATABASE.get().map(|c| c.to_string_lossy().into_owned()).unwrap_or_else(|| "postgres".to_string())
}

/// The configuration file `wal-archiver` must be told to read to see what this server sees:
/// `backup.config_file`, else none (it then looks where the server did: `$BACKUP_CONFIG`, the
/// default path).
pub fn config_file() -> Option<std::path::PathBuf> {
    CONFIG_FILE.get().map(|c| std::path::PathBuf::from(c.to_string_lossy().into_owned())).filter(|p| !p.as_os_str().is_empty())
}

/// The configuration file named by `backup.config_file`, read now (never cached: a reload may
/// have changed it).
pub fn load_config() -> Result<backup_core::config::Config, backup_core::config::ConfigError> {
    let path = CONFIG_FILE.get().map(|c| std::path::PathBuf::from(c.to_string_lossy().into_owned()));
    backup_core::config::Config::load(path.as_deref())
}
