-- Runs last in CREATE EXTENSION pg_backup_ext: SQL wrappers over the Rust functions.

CREATE FUNCTION backup.find(target timestamptz) RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT backup.find_at(to_char(target AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
$$;
COMMENT ON FUNCTION backup.find(timestamptz) IS 'The backup to restore from to reach this moment';

CREATE FUNCTION backup.create_restore_point(name text) RETURNS pg_lsn LANGUAGE sql VOLATILE AS $$
    SELECT backup.record_restore_point(name, pg_create_restore_point(name)::text)::pg_lsn
$$;
COMMENT ON FUNCTION backup.create_restore_point(text) IS
    'pg_create_restore_point, also recorded in the repository so that restore --target-name picks the right backup';

-- The product's default schedule (BACKUP_FULL_SCHEDULE / BACKUP_INCREMENTAL_SCHEDULE in the
-- server's environment override full and incremental), installed once; change it with
-- backup.schedule().
INSERT INTO backup.schedules (name, kind, cron, time_zone)
SELECT name, kind, cron, time_zone FROM backup.default_schedules();

CREATE FUNCTION backup.stats_daily(period interval DEFAULT '30 days')
RETURNS TABLE (day date, completed bigint, failed bigint, size_bytes bigint, stored_bytes bigint,
               duration_s numeric, wal_files bigint, wal_bytes bigint)
LANGUAGE sql VOLATILE AS $$
    SELECT * FROM jsonb_to_recordset(backup.stats(period)->'daily')
        AS d(day date, completed bigint, failed bigint, size_bytes bigint, stored_bytes bigint,
             duration_s numeric, wal_files bigint, wal_bytes bigint)
    ORDER BY day
$$;
COMMENT ON FUNCTION backup.stats_daily(interval) IS 'backup.stats()''s series per day, as rows: for charts';

CREATE FUNCTION backup.restore(backup_id text DEFAULT NULL, target_time timestamptz DEFAULT NULL,
                               target_lsn pg_lsn DEFAULT NULL, target_xid text DEFAULT NULL,
                               target_name text DEFAULT NULL, target_immediate boolean DEFAULT false,
                               "into" text DEFAULT NULL, port int DEFAULT NULL)
RETURNS bigint LANGUAGE sql VOLATILE AS $$
    SELECT backup.restore_scratch(backup_id,
                                  -- the form recovery_target_time takes (not ISO 8601's T and Z)
                                  to_char(target_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US"+00:00"'),
                                  target_lsn::text, target_xid, target_name, target_immediate, "into", port)
$$;
COMMENT ON FUNCTION backup.restore(text, timestamptz, pg_lsn, text, text, boolean, text, int) IS
    'Restore a backup into a scratch instance beside the live cluster (backup.restores shows it; backup.restore_stop() removes it)';

CREATE FUNCTION backup.restore_table(table_name text, target_time timestamptz DEFAULT NULL,
                                     backup_id text DEFAULT NULL, target_lsn pg_lsn DEFAULT NULL,
                                     target_xid text DEFAULT NULL, target_name text DEFAULT NULL,
                                     mode text DEFAULT 'new_table', "into" text DEFAULT NULL,
                                     where_clause text DEFAULT NULL)
RETURNS bigint LANGUAGE sql VOLATILE AS $$
    SELECT backup.restore_table_scratch(table_name, backup_id,
                                        to_char(target_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US"+00:00"'),
                                        target_lsn::text, target_xid, target_name, mode, "into", where_clause)
$$;
COMMENT ON FUNCTION backup.restore_table(text, timestamptz, text, pg_lsn, text, text, text, text, text) IS
    'Restore a table as of a target into the live database: new_table, merge_missing (rows whose key is gone) or replace; follow it in backup.restores';
