-- Runs first in CREATE EXTENSION pg_backup_ext, before the functions pgrx generates.
-- The control file names schema "backup"; PostgreSQL creates it if needed.
COMMENT ON SCHEMA backup IS 'pg_backup_ext: backups and point-in-time recovery, driven from SQL';

-- The catalog mirrors the repository for fast queries; the repository stays the truth
-- (backup.resync() rebuilds this table from it). Only background workers write rows.
CREATE TABLE backup.backups (
    id             text PRIMARY KEY CHECK (id ~ '^backup_\d{8}_\d{6}$'),
    type           text NOT NULL DEFAULT 'full' CHECK (type IN ('full', 'incremental')),
    status         text NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    start_lsn      pg_lsn,
    stop_lsn       pg_lsn,
    timeline       int,
    start_time     timestamptz,
    stop_time      timestamptz,
    size_bytes     bigint,
    stored_bytes   bigint,
    file_count     bigint,
    duration       interval,
    error          text,
    page_checksum_failures int NOT NULL DEFAULT 0,
    -- incremental backups: the backup this one builds on, how far from its full backup, and
    -- how many relation blocks it stored
    parent         text,
    chain_depth    int NOT NULL DEFAULT 0,
    changed_blocks bigint,
    -- the last verification (backup.verify(), the scheduler's verify job)
    verified_at    timestamptz,
    verify_ok      boolean,
    -- the repositories holding it, by name ([[repos]] names; 'local' for repo_path): where it
    -- was taken, then where backup.copy() put it
    repos          text[] NOT NULL DEFAULT '{}',
    -- live progress of a running backup
    worker_pid     int,
    phase          text,
    bytes_done     bigint,
    bytes_total    bigint,
    progress_at    timestamptz
);
COMMENT ON TABLE backup.backups IS 'Backups known to pg_backup_ext; rebuilt from the repository by backup.resync()';

CREATE TABLE backup.events (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    backup_id  text,
    level      text NOT NULL CHECK (level IN ('info', 'warning', 'error')),
    message    text NOT NULL
);
COMMENT ON TABLE backup.events IS 'Job log: what the backup workers did and what went wrong';

-- The scheduler's jobs. The scheduler worker re-reads this table every second: a change made
-- with backup.schedule() takes effect without a restart. updated_at is where the job's
-- schedule starts counting from: a changed or re-enabled job never catches up runs from before.
CREATE TABLE backup.schedules (
    name        text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$'),
    kind        text NOT NULL CHECK (kind IN ('full', 'incremental', 'verify', 'cleanup', 'health', 'copy', 'restore_test')),
    cron        text NOT NULL,
    time_zone   text NOT NULL,
    enabled     boolean NOT NULL DEFAULT true,
    -- catch_up (bool): run a run missed while the server was down once on start-up
    --   (default: true for full, false for the others); count (int): backups per verify run;
    --   repo (text): the repository full/incremental backups go to (default: the primary);
    --   to (text, required for copy): the repository a copy job copies backups into
    options     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(options) = 'object'),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE backup.schedules IS 'Scheduled jobs; change them with backup.schedule(), backup.unschedule(), backup.schedule_enable()';

-- One row per scheduled run: run, skipped (with the reason) or interrupted. Pruned after
-- backup.job_history_days.
CREATE TABLE backup.job_runs (
    id             bigserial PRIMARY KEY,
    job            text NOT NULL,
    kind           text NOT NULL,
    scheduled_for  timestamptz NOT NULL,
    started_at     timestamptz,
    finished_at    timestamptz,
    status         text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'skipped', 'interrupted')),
    backup_id      text,
    message        text
);
CREATE INDEX job_runs_job_scheduled_for ON backup.job_runs (job, scheduled_for);
COMMENT ON TABLE backup.job_runs IS 'History of scheduled runs (the scheduler worker writes it)';

-- Alerts (the alert worker writes them; backup_core::alerts decides): one row per condition
-- from the moment a health check turns bad until it is ok again. key is the check's name;
-- severity the worst it reached (what routing reads, so the resolve reaches whoever heard of it).
CREATE TABLE backup.alerts (
    id             bigserial PRIMARY KEY,
    key            text NOT NULL,
    severity       text NOT NULL CHECK (severity IN ('warning', 'critical')),
    status         text NOT NULL CHECK (status IN ('firing', 'resolved')),
    summary        text NOT NULL,
    message        text NOT NULL,
    value          text,
    threshold      text,
    opened_at      timestamptz NOT NULL DEFAULT now(),
    last_notified  timestamptz NOT NULL DEFAULT now(),
    resolved_at    timestamptz
);
-- At most one open alert per condition.
CREATE UNIQUE INDEX alerts_one_open_per_key ON backup.alerts (key) WHERE status = 'firing';
COMMENT ON TABLE backup.alerts IS 'Alerts raised from backup.health(): firing until the check is ok again';

-- Every notification to every channel, and each attempt to deliver it (attempt_log: one
-- {"at", "ok", "error"} per attempt). A channel that is down is retried with backoff
-- (next_attempt_at) and given up after backup.alert_max_attempts.
CREATE TABLE backup.alert_deliveries (
    id              bigserial PRIMARY KEY,
    alert_id        bigint REFERENCES backup.alerts (id) ON DELETE CASCADE,
    event           text NOT NULL CHECK (event IN ('firing', 'escalated', 'reminder', 'resolved', 'test')),
    channel         text NOT NULL CHECK (channel IN ('email', 'slack', 'sms', 'webhook')),
    severity        text NOT NULL CHECK (severity IN ('ok', 'warning', 'critical')),
    summary         text NOT NULL,
    message         text NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'gave_up')),
    attempts        int NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    last_error      text,
    attempt_log     jsonb NOT NULL DEFAULT '[]'
);
CREATE INDEX alert_deliveries_pending ON backup.alert_deliveries (next_attempt_at) WHERE status = 'pending';
COMMENT ON TABLE backup.alert_deliveries IS 'Alert notifications per channel and every delivery attempt';

-- Scratch restores (backup.restore()): a backup restored beside the live cluster into
-- backup.scratch_dir and started there as its own instance (local connections only, archiving
-- off) once recovered to its target; backup.restore_stop() removes it. The restore worker
-- writes the row; status: starting → restoring → recovering → ready, or failed, or stopped;
-- a table restore (backup.restore_table()) goes on: ready → copying → done, its instance gone.
CREATE TABLE backup.restores (
    id            bigserial PRIMARY KEY,
    backup_id     text,
    -- what recovery stops at: latest (the end of the archive), immediate (the backup's end),
    -- time, lsn, xid or name, and the value for the last four
    target_kind   text NOT NULL CHECK (target_kind IN ('latest', 'immediate', 'time', 'lsn', 'xid', 'name')),
    target_value  text,
    status        text NOT NULL DEFAULT 'starting'
                  CHECK (status IN ('starting', 'restoring', 'recovering', 'ready', 'copying', 'done', 'failed', 'stopped')),
    -- backup.restore_table(): the table, how its rows come back (new_table, merge_missing,
    -- replace), where to, which rows, and how many were copied; the scratch instance is removed
    -- once they are in ('done')
    -- instance (backup.restore()), table (backup.restore_table()), test (backup.restore_test())
    purpose       text NOT NULL DEFAULT 'instance' CHECK (purpose IN ('instance', 'table', 'test')),
    table_name    text,
    mode          text CHECK (mode IN ('new_table', 'merge_missing', 'replace')),
    into_table    text,
    where_clause  text,
    rows_copied   bigint,
    pgdata        text NOT NULL,
    socket_dir    text NOT NULL,
    port          int NOT NULL,
    listen_tcp    boolean NOT NULL DEFAULT false,
    bytes_done    bigint,
    bytes_total   bigint,
    wal_replayed_bytes bigint,
    requested_by  text NOT NULL DEFAULT current_user,
    started_at    timestamptz NOT NULL DEFAULT now(),
    restored_at   timestamptz,
    ready_at      timestamptz,
    stopped_at    timestamptz,
    worker_pid    int,
    error         text
);
COMMENT ON TABLE backup.restores IS 'Scratch restores: backup.restore() starts one, backup.restore_stop() removes it';

-- Restore tests (backup.restore_test(), the scheduler's restore_test job): a scratch restore of
-- the newest backup, checked (pg_amcheck on every database, the schema against the live one,
-- backup.restore_checks), timed by phase, then removed. rto_seconds: from the start to a
-- promoted, queryable instance.
CREATE TABLE backup.restore_tests (
    id                bigserial PRIMARY KEY,
    restore_id        bigint NOT NULL,
    backup_id         text,
    status            text NOT NULL CHECK (status IN ('passed', 'failed')),
    problems          text[] NOT NULL DEFAULT '{}',
    rto_seconds       double precision,
    restore_seconds   double precision,
    recovery_seconds  double precision,
    check_seconds     double precision,
    started_at        timestamptz NOT NULL,
    finished_at       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE backup.restore_tests IS 'Restore tests: what was checked, what failed, and the measured recovery time';

-- Queries a restore test runs on the restored instance, in `database`; each must return true.
CREATE TABLE backup.restore_checks (
    name      text PRIMARY KEY,
    database  text NOT NULL DEFAULT current_database(),
    query     text NOT NULL
);
COMMENT ON TABLE backup.restore_checks IS 'User checks for restore tests: a query returning true on a sound restore';

-- Keep the catalog in pg_dump output.
SELECT pg_catalog.pg_extension_config_dump('backup.backups', '');
SELECT pg_catalog.pg_extension_config_dump('backup.events', '');
-- Not backup.schedules: CREATE EXTENSION installs the default jobs, so a restored dump would
-- collide with them. A physical backup (ours) keeps the table like any other.
SELECT pg_catalog.pg_extension_config_dump('backup.job_runs', '');
SELECT pg_catalog.pg_extension_config_dump('backup.alerts', '');
SELECT pg_catalog.pg_extension_config_dump('backup.restores', '');
SELECT pg_catalog.pg_extension_config_dump('backup.restore_tests', '');
SELECT pg_catalog.pg_extension_config_dump('backup.restore_checks', '');
SELECT pg_catalog.pg_extension_config_dump('backup.alert_deliveries', '');

-- A worker that died (kill -9, crash restart, server stop) cannot mark its own row: whoever
-- looks next does, so a dead backup never shows as running, let alone completed.
CREATE FUNCTION backup.reap_stale() RETURNS int LANGUAGE sql AS $$
    WITH dead AS (
        UPDATE backup.backups b
           SET status = 'failed', phase = NULL, stop_time = coalesce(b.progress_at, now()),
               error = coalesce(b.error, 'the backup worker ended without finishing (killed, crashed, or the server stopped)')
         WHERE b.status = 'running'
           AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                            WHERE a.pid = b.worker_pid AND a.backend_type = 'pg_backup_ext backup')
        RETURNING b.id)
    SELECT count(*)::int FROM dead
$$;

CREATE FUNCTION backup.list()
RETURNS TABLE (id text, type text, status text, start_lsn pg_lsn, stop_lsn pg_lsn, timeline int,
               start_time timestamptz, stop_time timestamptz, size_bytes bigint, stored_bytes bigint,
               file_count bigint, duration interval, error text, parent text, chain_depth int,
               changed_blocks bigint, repos text[])
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_is_in_recovery() THEN
        PERFORM backup.reap_stale();
    END IF;
    RETURN QUERY
        SELECT b.id, b.type, b.status, b.start_lsn, b.stop_lsn, b.timeline, b.start_time, b.stop_time,
               b.size_bytes, b.stored_bytes, b.file_count, b.duration, b.error, b.parent, b.chain_depth,
               b.changed_blocks, b.repos
          FROM backup.backups b ORDER BY b.id;
END
$$;
COMMENT ON FUNCTION backup.list() IS 'Backups, newest last; running ones show their status live';

CREATE VIEW backup.progress AS
SELECT b.id, b.phase, b.bytes_done, b.bytes_total,
       CASE WHEN b.bytes_total > 0 THEN round(100.0 * b.bytes_done / b.bytes_total, 1) END AS percent,
       CASE WHEN b.progress_at > b.start_time
            THEN (b.bytes_done / extract(epoch FROM b.progress_at - b.start_time))::bigint END AS rate_bytes_per_sec,
       b.worker_pid, b.start_time, b.progress_at AS updated_at
  FROM backup.backups b
 WHERE b.status = 'running';
