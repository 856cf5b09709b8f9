#!/usr/bin/env bash
# Benchmark entry point (`make bench` runs it after `make install`): installs what the harness
# needs when missing (pgbackrest, GNU time, matplotlib for the chart; openssl and moto for the S3
# part), then runs bench/bench.py, then bench/remote.py (the S3 figures; BENCH_REMOTE=0 skips it).
#
#   bash bench/run.sh                                    # full size: scale 50, 4M rows, 3 reps, 64 segments
#   bash bench/run.sh --scale 2 --rows 50000 --reps 1 --wal-segments 8     # a quick try
#   BENCH_SCALE=100 BENCH_REPS=5 make bench             # the same knobs as environment variables
#   BENCH_REMOTE=0 make bench                           # without the S3 part
#
# remote.py gets --reps, --wal-segments and --workers from the arguments given here (or the same
# environment variables); --scale and --rows only when given on the command line (else its own
# smaller defaults, BENCH_REMOTE_SCALE / BENCH_REMOTE_ROWS: moto and the relay are Python); more
# flags in BENCH_REMOTE_ARGS. Everything else is in bench/README.md. Needs root (apt, runuser to
# the postgres OS user).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python3}
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "bench: installing ${missing[*]}"
    if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
        $SUDO apt-get update -qq
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
}

command -v pgbackrest >/dev/null 2>&1 || apt_install pgbackrest
[ -x /usr/bin/time ] || apt_install time
command -v "$PYTHON" >/dev/null 2>&1 || apt_install python3
command -v wal-archiver >/dev/null 2>&1 || [ -n "${WAL_ARCHIVER:-}" ] || {
    echo "bench: wal-archiver not found; run 'make install' first (or 'make bench')" >&2
    exit 1
}

REMOTE=${BENCH_REMOTE:-1}
REMOTE_DIR=${BENCH_REMOTE_DIR:-/tmp/pg_backup_remote_bench}
MOTO=${MOTO_SERVER:-/opt/pg_backup_ext-test/venv/bin/moto_server}
if [ "$REMOTE" != 0 ]; then
    command -v openssl >/dev/null 2>&1 || apt_install openssl
    if [ ! -x "$MOTO" ]; then
        # as `make test-deps` does, moto alone
        echo "bench: installing moto (S3 emulator) into $(dirname "$(dirname "$MOTO")")"
        dpkg -s python3-venv >/dev/null 2>&1 || apt_install python3-venv
        $SUDO python3 -m venv "$(dirname "$(dirname "$MOTO")")" \
            && $SUDO "$(dirname "$MOTO")/pip" install -q 'moto[server]' \
            || { echo "bench: moto unavailable, the S3 part will be skipped" >&2; REMOTE=0; }
    fi
fi

# The chart is optional: without matplotlib the numbers and the JSON are still produced.
if ! "$PYTHON" -c 'import matplotlib' >/dev/null 2>&1; then
    echo "bench: installing matplotlib for the chart"
    "$PYTHON" -m pip install --quiet matplotlib >/dev/null 2>&1 \
        || apt_install python3-matplotlib >/dev/null 2>&1 \
        || echo "bench: matplotlib unavailable, the chart will be skipped"
fi

# bench.py stops its cluster and the processes it started on any failure or signal; this is the
# last resort should the interpreter itself be killed.
WORKDIR=${BENCH_DIR:-/tmp/pg_backup_bench}
PREV=""
for arg in "$@"; do
    case "$PREV" in --workdir) WORKDIR=$arg ;; esac
    case "$arg" in --workdir=*) WORKDIR=${arg#--workdir=} ;; esac
    PREV=$arg
done
# The same for remote.py: its clusters (the primary, the copies being recovered) and moto.
REMOTE_ARGS=()
PREV=""
for arg in "$@"; do
    case "$PREV" in --reps|--wal-segments|--workers|--scale|--rows) REMOTE_ARGS+=("$PREV" "$arg") ;; esac
    case "$arg" in --reps=*|--wal-segments=*|--workers=*|--scale=*|--rows=*) REMOTE_ARGS+=("$arg") ;; esac
    PREV=$arg
done
last_resort() {
    local pgdata
    for pgdata in "$WORKDIR/primary" "$REMOTE_DIR/primary" "$REMOTE_DIR"/rec-*; do
        if [ -f "$pgdata/postmaster.pid" ]; then
            runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$pgdata" -m immediate stop >/dev/null 2>&1 || true
        fi
    done
    if [ -f "$REMOTE_DIR/moto.pid" ]; then
        kill "$(cat "$REMOTE_DIR/moto.pid")" 2>/dev/null || true
    fi
}
trap last_resort EXIT

# Runs one harness in the background so that a signal to this script reaches it (as SIGTERM,
# which it turns into a clean stop); a Ctrl-C in the terminal goes the same way.
INTERRUPTED=0
run_harness() {
    local rc
    "$PYTHON" "$@" &
    CHILD=$!
    trap 'INTERRUPTED=1; kill -TERM "$CHILD" 2>/dev/null || true' INT TERM HUP
    set +e
    while :; do
        wait "$CHILD"
        rc=$?
        kill -0 "$CHILD" 2>/dev/null || break
    done
    set -e
    return "$rc"
}

RC=0
run_harness "$HERE/bench.py" "$@" || RC=$?
if [ "$REMOTE" != 0 ] && [ "$INTERRUPTED" = 0 ]; then
    # shellcheck disable=SC2086 # BENCH_REMOTE_ARGS: flags, split on purpose
    run_harness "$HERE/remote.py" "${REMOTE_ARGS[@]}" ${BENCH_REMOTE_ARGS:-} || { R=$?; [ "$RC" != 0 ] || RC=$R; }
fi
exit "$RC"
