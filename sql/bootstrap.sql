-- Runs first in CREATE EXTENSION pg_backup_ext, before the functions pgrx generates.
-- The control file names schema "backup"; PostgreSQL creates it if needed.
COMMENT ON SCHEMA backup IS 'pg_backup_ext: backups and point-in-time recovery, driven from SQL';
