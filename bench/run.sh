#!/usr/bin/env bash
# Benchmark entry point (`make bench` runs it after `make install`): installs what the harness
# needs when missing (pgbackrest, GNU time, matplotlib for the chart), then runs bench/bench.py.
#
#   bash bench/run.sh                                    # full size: scale 50, 4M rows, 3 reps, 64 segments
#   bash bench/run.sh --scale 2 --rows 50000 --reps 1 --wal-segments 8     # a quick try
#   BENCH_SCALE=100 BENCH_REPS=5 make bench             # the same knobs as environment variables
#
# Everything else is in bench/README.md. Needs root (apt, runuser to the postgres OS user).
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
last_resort() {
    local pgdata="$WORKDIR/primary"
    if [ -f "$pgdata/postmaster.pid" ]; then
        runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$pgdata" -m immediate stop >/dev/null 2>&1 || true
    fi
}
trap last_resort EXIT

# In the background so that a signal to this script reaches the harness (as SIGTERM, which it
# turns into a clean stop); a Ctrl-C in the terminal goes the same way.
"$PYTHON" "$HERE/bench.py" "$@" &
CHILD=$!
trap 'kill -TERM "$CHILD" 2>/dev/null || true' INT TERM HUP
set +e
while :; do
    wait "$CHILD"
    RC=$?
    kill -0 "$CHILD" 2>/dev/null || break
done
exit "$RC"
