#!/usr/bin/env bash
# The main job, end to end, on throwaway clusters: set up a cluster with the extension and
# encrypted WAL archiving, load data, take a full backup from SQL, make a mistake, and restore
# to the moment before it into a second data directory, then start that copy and show the data.
#
# Run by `make demo` after `make install`. Everything lives under $DEMO_DIR (default
# /tmp/pg_backup_ext_demo) and runs as the OS user postgres, as a real server would.
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
DEMO_DIR=${DEMO_DIR:-/tmp/pg_backup_ext_demo}
ARCHIVER=${WAL_ARCHIVER:-$(command -v wal-archiver)}
PORT=${DEMO_PORT:-54400}
RESTORE_PORT=$((PORT + 1))
AS_PG=(runuser -u postgres --)
[ "$(id -un)" = postgres ] && AS_PG=()

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
pg() { "${AS_PG[@]}" "$@"; }
psql_at() { local port=$1; shift; pg "$PGBIN/psql" -X -q -h "$DEMO_DIR" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }

stop_all() {
    for d in "$DEMO_DIR/primary" "$DEMO_DIR/restored"; do
        [ -f "$d/postmaster.pid" ] && pg "$PGBIN/pg_ctl" -D "$d" -m fast stop >/dev/null 2>&1 || true
    done
}

say "Fresh demo directory $DEMO_DIR"
stop_all
rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR"
chown postgres: "$DEMO_DIR" 2>/dev/null || true

say "A PostgreSQL 15 cluster with data checksums"
pg "$PGBIN/initdb" --data-checksums --auth=trust -U postgres -D "$DEMO_DIR/primary" >/dev/null

say "A master key and a repository for this cluster"
pg "$ARCHIVER" keygen --output "$DEMO_DIR/keys.json" >/dev/null
cat > "$DEMO_DIR/pg_backup_ext.conf" <<EOF
repo_path = "$DEMO_DIR/repository"
key_file = "$DEMO_DIR/keys.json"
compression_level = 3

# A second repository for the off-site copy. A directory here so that the demo runs anywhere;
# in production type = "s3", "gcs" or "azure" (README: Several repositories). WAL goes to both.
[[repos]]
name = "offsite"
type = "local"
path = "$DEMO_DIR/offsite"
retention_days = 90
EOF
chown postgres: "$DEMO_DIR/pg_backup_ext.conf" 2>/dev/null || true
pg "$ARCHIVER" --config "$DEMO_DIR/pg_backup_ext.conf" init --pgdata "$DEMO_DIR/primary"

cat >> "$DEMO_DIR/primary/postgresql.conf" <<EOF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$DEMO_DIR'
shared_preload_libraries = 'pg_backup_ext'
backup.config_file = '$DEMO_DIR/pg_backup_ext.conf'
wal_level = replica
archive_mode = on
archive_command = '$ARCHIVER --config $DEMO_DIR/pg_backup_ext.conf push %p'
EOF
pg "$PGBIN/pg_ctl" -D "$DEMO_DIR/primary" -l "$DEMO_DIR/primary.log" -w start >/dev/null
psql_at "$PORT" -c "CREATE EXTENSION pg_backup_ext" -At -c "SELECT backup.version()"

say "The default schedule, run by the scheduler worker (Asia/Ho_Chi_Minh time)"
psql_at "$PORT" -c "SELECT job, kind, cron, next_run_local, next_run FROM backup.scheduler_status()"
# This demo drives its own backups: pause the default jobs so none starts in the middle.
psql_at "$PORT" -At -c "SELECT count(backup.schedule_enable(name, false)) || ' jobs paused for the demo' FROM backup.schedules"

say "Checking the archive path end to end"
pg "$ARCHIVER" --config "$DEMO_DIR/pg_backup_ext.conf" check --pgdata "$DEMO_DIR/primary" \
    --dbname "host=$DEMO_DIR port=$PORT user=postgres dbname=postgres"

say "Sample data: 100,000 orders"
psql_at "$PORT" -c "CREATE TABLE orders (id int PRIMARY KEY, customer text, amount numeric(10,2), placed timestamptz DEFAULT now())" \
    -c "INSERT INTO orders (id, customer, amount) SELECT g, 'customer-' || (g % 977), (g % 500) + 0.99 FROM generate_series(1, 100000) g"

say "Full backup from SQL: SELECT backup.start_full()"
BACKUP_ID=$(psql_at "$PORT" -At -c "SELECT backup.start_full()")
echo "started $BACKUP_ID"
while :; do
    row=$(psql_at "$PORT" -At -F ' ' -c "SELECT coalesce(round(percent)::int, 0), replace(phase, ' ', '_'), coalesce(rate_bytes_per_sec, 0) FROM backup.progress WHERE id = '$BACKUP_ID'")
    [ -z "$row" ] && break
    read -r pct phase rate <<<"$row"
    bar=$(printf '%*s' $((pct / 5)) '' | tr ' ' '#')
    printf '\r  [%-20s] %3s%%  %-18s %5s MB/s' "$bar" "$pct" "$phase" "$((rate / 1048576))"
    sleep 0.3
done
echo
psql_at "$PORT" -c "SELECT id, status, start_lsn, stop_lsn, pg_size_pretty(size_bytes) AS size, pg_size_pretty(stored_bytes) AS stored, file_count, duration, error FROM backup.list()"
psql_at "$PORT" -At -c "SELECT CASE WHEN (backup.verify('$BACKUP_ID')->>'ok')::bool THEN 'verify: every object authenticated and checksummed, WAL range archived' ELSE 'verify FAILED' END"

say "More business after the backup: 5,000 new orders, 1,000 refunds"
psql_at "$PORT" -c "INSERT INTO orders (id, customer, amount) SELECT g, 'customer-' || (g % 977), 42.00 FROM generate_series(100001, 105000) g" \
    -c "UPDATE orders SET amount = 0 WHERE id % 100 = 0"

say "Incremental backup: SELECT backup.start_incremental(wait => true) stores only the changed pages"
INCR_ID=$(psql_at "$PORT" -At -c "SELECT backup.start_incremental(wait => true)")
echo "took $INCR_ID"
psql_at "$PORT" -c "SELECT id, type, parent, chain_depth, changed_blocks, pg_size_pretty(size_bytes) AS size, pg_size_pretty(stored_bytes) AS stored, duration FROM backup.list()"

say "Off-site: SELECT backup.copy(id, 'offsite') copies a finished backup with its chain, no second backup taken"
psql_at "$PORT" -c "SELECT c->'copied' AS copied, c->'objects' AS objects, c->'wal_files' AS wal_files, pg_size_pretty((c->>'bytes')::bigint) AS bytes FROM backup.copy('$INCR_ID', 'offsite') c"
psql_at "$PORT" -c "SELECT name, location, archive, is_primary, reachable, backups, owed_wal FROM backup.repositories()" \
    -c "SELECT id, type, repos FROM backup.list()"

say "Unattended: a job every 15 seconds, taken by the scheduler worker by itself"
psql_at "$PORT" -At -c "SELECT 'next run: ' || backup.schedule('demo', '15 seconds', kind => 'incremental', time_zone => 'UTC')"
for _ in $(seq 1 90); do
    [ "$(psql_at "$PORT" -At -c "SELECT count(*) FROM backup.job_runs WHERE job = 'demo' AND status = 'succeeded'")" -ge 1 ] && break
    sleep 1
done
psql_at "$PORT" -At -c "SELECT backup.unschedule('demo')"
psql_at "$PORT" -c "SELECT job, scheduled_for, status, backup_id, message FROM backup.job_runs WHERE job = 'demo' ORDER BY id"
[ "$(psql_at "$PORT" -At -c "SELECT count(*) FROM backup.job_runs WHERE job = 'demo' AND status = 'succeeded'")" -ge 1 ] \
    || { echo "the scheduler did not run the demo job (see $DEMO_DIR/primary.log)"; exit 1; }
say "Retention: what backup.cleanup() would delete now, and why (a dry run)"
psql_at "$PORT" -c "SELECT action, kind, name, pg_size_pretty(bytes) AS size, reason FROM backup.cleanup()"
sleep 1
GOOD_TIME=$(psql_at "$PORT" -At -c "SELECT now()")
BEFORE=$(psql_at "$PORT" -At -c "SELECT count(*) || ' orders, total ' || sum(amount) FROM orders")
echo "at $GOOD_TIME: $BEFORE"
sleep 1

say "The mistake: DELETE without a WHERE clause"
psql_at "$PORT" -c "DELETE FROM orders"
psql_at "$PORT" -At -c "SELECT 'now: ' || count(*) || ' orders' FROM orders"
# Close the current segment so the WAL holding the mistake reaches the archive too.
SWITCHED=$(psql_at "$PORT" -At -c "SELECT pg_walfile_name(pg_switch_wal())")
for _ in $(seq 1 60); do
    [ "$(psql_at "$PORT" -At -c "SELECT last_archived_wal FROM pg_stat_archiver")" = "$SWITCHED" ] && break
    sleep 1
done

say "The repository"
pg "$ARCHIVER" --config "$DEMO_DIR/pg_backup_ext.conf" info
pg "$ARCHIVER" --config "$DEMO_DIR/pg_backup_ext.conf" list
echo "backup.find('$GOOD_TIME') = $(psql_at "$PORT" -At -c "SELECT backup.find('$GOOD_TIME')") (an incremental: restored through its chain)"

say "Point-in-time restore to $GOOD_TIME into $DEMO_DIR/restored"
pg "$ARCHIVER" --config "$DEMO_DIR/pg_backup_ext.conf" restore --pgdata "$DEMO_DIR/restored" \
    --target-time "$GOOD_TIME" --target-action promote --archive-mode off
echo "port = $RESTORE_PORT" | pg tee -a "$DEMO_DIR/restored/postgresql.auto.conf" >/dev/null
pg "$PGBIN/pg_ctl" -D "$DEMO_DIR/restored" -l "$DEMO_DIR/restored.log" -w -t 300 start >/dev/null
for _ in $(seq 1 300); do
    [ "$(psql_at "$RESTORE_PORT" -At -c "SELECT pg_is_in_recovery()" 2>/dev/null)" = f ] && break
    sleep 1
done
AFTER=$(psql_at "$RESTORE_PORT" -At -c "SELECT count(*) || ' orders, total ' || sum(amount) FROM orders")
echo "restored: $AFTER"
echo "expected: $BEFORE"

stop_all
if [ "$AFTER" = "$BEFORE" ]; then
    say "The restored cluster has the data exactly as it was at $GOOD_TIME"
else
    say "MISMATCH: restored data differs (see $DEMO_DIR/restored.log)"
    exit 1
fi
