#!/usr/bin/env python3
"""Remote repositories (S3): wal-archiver against pgBackRest, both on the same S3 emulator (moto
on loopback) in the same run, three figures as ratios (issue #11; bench/README.md, "Remote
repositories (S3)"):

  1. WAL archiving rate to S3: N full segments made while archiving is paused, then the tool's
     archive_command is set and the clock runs until the last of them is archived.
       ours        wal-archiver push %p                 target: >= 1.5 x pgBackRest sync
       ours_module archive_library = 'pg_backup_ext' (the same push in the archiver process,
                   repositories and connections kept open; skipped when the library is not
                   installed)                           target: >= 1.5 x pgBackRest sync
       pgBackRest  archive-push %p, sync and async (archive-async=y, spool-path)
  2. Recovery from S3: the same base backup (one pg_basebackup copy, the same files for both)
     started with recovery.signal and the tool's restore_command; N segments made once and
     archived into both tools' recovery repositories by one archive_command. Timed from
     `pg_ctl start` until the server accepts connections (recovery over, end-of-recovery
     checkpoint done); the time to "redo done" is kept too.
       ours        wal-archiver fetch %f %p (prefetch, default 8)      target: <= 0.7 x pgBackRest
       pgBackRest  archive-get %f "%p" with archive-async=y (archive-get-queue-max, default 128 MiB)
  3. Full backup to S3:
       ours        wal-archiver backup --workers W                      target: <= 0.6 x pgBackRest
       pgBackRest  backup --type=full (process-max W)

moto answers every request with `Connection: close` and pgBackRest speaks only HTTPS to S3, so
both tools go through a keep-alive relay in this process (s3_restore.Relay): ours over plain
HTTP, pgBackRest over TLS (self-signed, repo1-storage-verify-tls=n). Same hop for both.

Per rep, the tools of each figure run in an order rotated from a shuffle made with --seed
(printed; given again, the same orders). Before every timed step: sync, until Dirty + Writeback
stay under 16 MB, then two seconds of quiet; for the whole run freed memory stays in the guest
(free page reporting held, common.free_pages_held), and one untimed recovery comes first. Ratios are per rep (ours / theirs of the same rep);
the value reported is their median. CPU: user/system seconds of the tool's process tree where
it is a child (backups, from /usr/bin/time), and for every step the machine's (/proc/stat)
minus moto's and this harness's (the relays): the tool, PostgreSQL and anything else running.

    python3 bench/remote.py                        # scale 30 + 2M md5 rows, 3 reps, 64 segments
    python3 bench/remote.py --scale 2 --rows 0 --reps 1 --wal-segments 8        # a quick try

Needs root (runuser to postgres), PostgreSQL 15, pgbackrest, openssl, GNU time and moto
(/opt/pg_backup_ext-test/venv/bin/moto_server or MOTO_SERVER). Results: stdout, and
bench/results/remote-<timestamp>.json and remote-latest.json.
"""

import argparse
import datetime
import json
import os
import platform
import pwd
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import T_START, Terminated, env_int, fmt, free_pages_held, log, on_signal, settle_machine  # noqa: E402
from s3_restore import (MOTO, PG_BIN, PG_USER, Failed, Relay, free_port, gnu_time, ours_s3_conf,  # noqa: E402
                        pgbackrest_s3_conf, run, self_signed_cert, start_moto)

RESULTS_DIR = os.path.join(HERE, "results")
TIME_BIN = "/usr/bin/time"
STANZA = "bench"      # pgBackRest: WAL runs and backups
REC_STANZA = "rec"    # pgBackRest: the recovery WAL only
CLK = os.sysconf("SC_CLK_TCK")
MB = 1024 * 1024

TOOLS = {
    # ours: archive_command = 'wal-archiver push %p'; ours_module: archive_library = 'pg_backup_ext'
    # (the same push inside the archiver process, repositories and connections kept open)
    "wal": ["ours", "ours_module", "pgbackrest_sync", "pgbackrest_async"],
    # plain_cp: restore_command = 'cp' from a local directory of the plain segments, the floor
    # any tool meets (no download, no decoding; PostgreSQL's replay and a process per segment)
    "recovery": ["ours", "pgbackrest_async", "plain_cp"],
    "backup": ["ours", "pgbackrest"],
}

# key, label, ours (test, tool, field), theirs (test, tool, field), better, target
RATIOS = [
    ("wal_rate_vs_pgbackrest_sync", "WAL rate to S3 / pgBackRest sync", ("wal", "ours", "segments_per_s"),
     ("wal", "pgbackrest_sync", "segments_per_s"), "higher", 1.5),
    ("wal_rate_vs_pgbackrest_async", "WAL rate to S3 / pgBackRest async", ("wal", "ours", "segments_per_s"),
     ("wal", "pgbackrest_async", "segments_per_s"), "higher", None),
    ("wal_module_rate_vs_pgbackrest_sync", "  archive module / pgBackRest sync", ("wal", "ours_module", "segments_per_s"),
     ("wal", "pgbackrest_sync", "segments_per_s"), "higher", 1.5),
    ("wal_module_rate_vs_pgbackrest_async", "  archive module / pgBackRest async", ("wal", "ours_module", "segments_per_s"),
     ("wal", "pgbackrest_async", "segments_per_s"), "higher", None),
    ("recovery_time_vs_pgbackrest_async", "recovery from S3 / pgBackRest async get", ("recovery", "ours", "seconds"),
     ("recovery", "pgbackrest_async", "seconds"), "lower", 0.7),
    ("recovery_redo_vs_pgbackrest_async", "  start to 'redo done' / pgBackRest", ("recovery", "ours", "redo_s"),
     ("recovery", "pgbackrest_async", "redo_s"), "lower", None),
    ("recovery_floor_vs_pgbackrest_async", "  floor (cp of plain WAL) / pgBackRest", ("recovery", "plain_cp", "seconds"),
     ("recovery", "pgbackrest_async", "seconds"), "lower", None),
    ("recovery_time_vs_floor", "  ours / floor (cp of plain WAL)", ("recovery", "ours", "seconds"),
     ("recovery", "plain_cp", "seconds"), "lower", None),
    ("backup_time_vs_pgbackrest", "full backup to S3 / pgBackRest", ("backup", "ours", "seconds"),
     ("backup", "pgbackrest", "seconds"), "lower", 0.6),
]


# ---------------------------------------------------------------------------------------------
# CPU accounting

def machine_cpu():
    """(user, system) seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1]) / CLK, (v[2] + v[5] + v[6]) / CLK


def proc_cpu(pid):
    """(user, system) seconds of process pid (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) / CLK, int(fields[12]) / CLK
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0


class CpuClock:
    """Machine-wide user/system CPU over a step, with moto's and this process's (the relays) apart:
    `tool_*` = machine - moto - harness, i.e. the tool's processes, PostgreSQL and anything else
    that ran meanwhile (reported with the load average, so a busy machine shows)."""

    def __init__(self, moto_pid):
        self.moto_pid = moto_pid
        self.start = self.snap()

    def snap(self):
        t = os.times()
        return {"machine": machine_cpu(), "moto": proc_cpu(self.moto_pid), "harness": (t.user, t.system)}

    def stop(self):
        end = self.snap()
        d = {k: (end[k][0] - self.start[k][0], end[k][1] - self.start[k][1]) for k in end}
        out = {}
        for k, (u, s) in d.items():
            out[f"{k}_user_s"], out[f"{k}_sys_s"] = round(u, 2), round(s, 2)
        out["tool_user_s"] = round(max(0.0, d["machine"][0] - d["moto"][0] - d["harness"][0]), 2)
        out["tool_sys_s"] = round(max(0.0, d["machine"][1] - d["moto"][1] - d["harness"][1]), 2)
        with open("/proc/loadavg") as f:
            out["loadavg_1m_after"] = float(f.read().split()[0])
        return out


# ---------------------------------------------------------------------------------------------

class Remote:
    def __init__(self, a):
        self.a = a
        self.w = os.path.abspath(a.workdir)
        self.pgdata = f"{self.w}/primary"
        self.pg_log = f"{self.w}/logs/primary.log"
        self.base = f"{self.w}/base"
        self.logs = f"{self.w}/logs"
        self.port = free_port()
        self.bin = f"{self.w}/bin/wal-archiver"
        self.ours_dir = f"{self.w}/ours"
        self.ours_keys = f"{self.ours_dir}/keys.json"
        self.ours_conf = f"{self.ours_dir}/main.conf"      # prefix "ours": WAL runs, backups
        self.ours_rec_conf = f"{self.ours_dir}/rec.conf"   # prefix "ours-rec": the recovery WAL only
        self.plain_wal = f"{self.w}/plain-wal"             # the recovery WAL, plain (the floor)
        self.br_dir = f"{self.w}/pgbackrest"
        self.br_sync = f"{self.br_dir}/sync.conf"
        self.br_async = f"{self.br_dir}/async.conf"
        pw = pwd.getpwnam(PG_USER)
        self.pg_uid, self.pg_gid = pw.pw_uid, pw.pw_gid
        self.moto_proc = None
        self.relays = []
        self.clusters = set()
        self.seg_size = None
        self.rec = None           # the recovery WAL: first/last segment, count
        self.skip = {}            # (test, tool) -> why, after a failure
        self.results = {
            "status": "running",
            "started_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "params": {"scale": a.scale, "rows": a.rows, "reps": a.reps, "wal_segments": a.wal_segments,
                       "workers": a.workers, "seed": a.seed, "tests": a.tests,
                       "prefetch": a.prefetch if a.prefetch is not None else "default (8)",
                       "archive_get_queue_max": "default (128MiB = 8 segments)",
                       "compression": "zstd level 3 (both)", "encryption": {"ours": "AES-256-GCM",
                                                                            "pgbackrest": "aes-256-cbc"},
                       "transport": "moto behind a keep-alive relay in the harness: ours plain HTTP, "
                                    "pgBackRest TLS (self-signed, not verified)"},
            "environment": {},
            "dataset": {},
            "orders": {},
            "raw": {test: {tool: [] for tool in tools} for test, tools in TOOLS.items()},
            "failures": [],
            "notes": [],
        }

    # -- running things --------------------------------------------------------------------

    def sh(self, cmd, as_pg=True, timeout=None, check=True):
        cmd = [str(c) for c in cmd]
        try:
            return run(cmd, as_pg=as_pg, check=check, timeout=timeout or self.a.timeout)
        except subprocess.TimeoutExpired as e:
            raise Failed(f"timed out after {timeout or self.a.timeout}s: {' '.join(cmd)}") from e

    def psql(self, sql, port=None, timeout=None):
        return self.sh([f"{PG_BIN}/psql", "-X", "-q", "-At", "-h", self.w, "-p", port or self.port, "-U", PG_USER,
                        "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql], timeout=timeout).stdout.strip()

    def chown_pg(self, path):
        os.chown(path, self.pg_uid, self.pg_gid)

    def mkdir_pg(self, path, mode=0o700):
        os.makedirs(path, mode=mode, exist_ok=True)
        os.chmod(path, mode)
        self.chown_pg(path)

    def write_pg(self, path, text, mode=0o600, append=False):
        with open(path, "a" if append else "w") as f:
            f.write(text)
        os.chmod(path, mode)
        self.chown_pg(path)

    def pg_ctl(self, pgdata, *args, timeout=None, check=True):
        return self.sh([f"{PG_BIN}/pg_ctl", "-D", pgdata, *args], timeout=timeout, check=check)

    def stop_cluster(self, pgdata, mode="fast"):
        if not os.path.exists(f"{pgdata}/postmaster.pid"):
            return
        p = self.pg_ctl(pgdata, "-m", mode, "-w", "-t", "120", "stop", timeout=180, check=False)
        if p.returncode != 0 and mode != "immediate":
            self.pg_ctl(pgdata, "-m", "immediate", "-w", "stop", timeout=120, check=False)

    def cpu_clock(self):
        return CpuClock(self.moto_proc.pid)

    @staticmethod
    def ancestors():
        pids, pid = set(), os.getpid()
        while pid > 1 and pid not in pids:
            pids.add(pid)
            try:
                with open(f"/proc/{pid}/stat") as f:
                    pid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                break
        return pids

    def kill_leftovers(self, needle):
        """Processes whose command line names `needle` (a directory of this run): pgBackRest's
        async archive-push/-get, our prefetcher. Never this process nor its ancestors."""
        spared, needle, found = self.ancestors(), needle.encode(), []
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) in spared:
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if needle in f.read():
                        found.append(int(pid))
            except OSError:
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in found:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while found and time.monotonic() < deadline:
                found = [p for p in found if os.path.exists(f"/proc/{p}") and not self.zombie(p)]
                time.sleep(0.1)
        return found

    @staticmethod
    def zombie(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True

    # -- archiving -------------------------------------------------------------------------

    def archive_cmds(self):
        ours = f"{self.bin} --config {self.ours_conf} push %p"
        br = "pgbackrest --config={} --stanza={} archive-push %p"
        return {
            "pause": "",
            "ours_module": "",  # archive_library set instead (set_archive)
            "discard": "/bin/true",  # after a failed run: its backlog dropped
            "ours": ours,
            "pgbackrest_sync": br.format(self.br_sync, STANZA),
            "pgbackrest_async": br.format(self.br_async, STANZA),
            # the recovery WAL: every segment into both tools' recovery repositories, or fails
            "both_rec": f"{self.bin} --config {self.ours_rec_conf} push %p && " + br.format(self.br_sync, REC_STANZA)
                        + f" && cp %p {self.plain_wal}/%f",
        }

    def set_archive(self, name, reload=True):
        cmd = self.archive_cmds()[name]
        self.psql("ALTER SYSTEM SET archive_command = '" + cmd.replace("'", "''") + "'")
        # PostgreSQL 15 ignores archive_command while archive_library is set; a change of
        # archive_library restarts the archiver at the reload
        self.psql("ALTER SYSTEM SET archive_library = '" + ("pg_backup_ext" if name == "ours_module" else "") + "'")
        if reload:
            self.psql("SELECT pg_reload_conf()")
            time.sleep(0.5)

    def ready_files(self):
        d = f"{self.pgdata}/pg_wal/archive_status"
        return sorted(f[:-6] for f in os.listdir(d) if f.endswith(".ready"))

    def archiver_stats(self):
        a, la, fc, lf = self.psql("SELECT archived_count, coalesce(last_archived_wal, ''), failed_count, "
                                  "coalesce(last_failed_wal, '') FROM pg_stat_archiver").split("|")
        return {"archived_count": int(a), "last_archived_wal": la, "failed_count": int(fc), "last_failed_wal": lf}

    def drain(self, what, switch=True):
        """Until every finished segment is archived (no .ready left)."""
        if switch:
            self.psql("SELECT pg_switch_wal()")
        t0 = last = time.monotonic()
        failed0 = self.archiver_stats()["failed_count"]
        while self.ready_files():
            now = time.monotonic()
            if now - t0 > self.a.timeout:
                raise Failed(f"{what}: WAL not archived after {self.a.timeout}s; pending {self.ready_files()[:3]}")
            if now - last > 2:
                last = now
                st = self.archiver_stats()
                if st["failed_count"] - failed0 >= 5:
                    raise Failed(f"{what}: archive_command keeps failing (last failed {st['last_failed_wal']}); "
                                 f"server log: {self.log_tail(self.pg_log)}")
            time.sleep(0.05)

    @staticmethod
    def log_tail(path, n=15):
        try:
            with open(path, errors="replace") as f:
                return "\n" + "".join(f.readlines()[-n:])
        except OSError:
            return f"({path} unreadable)"

    def produce_segments(self, n):
        """As bench.py: with archiving paused, n segments full of md5 rows, the last one ending
        exactly at a segment boundary; a CHECKPOINT kept out of any clock. Returns the last one."""
        self.psql("TRUNCATE walgen")
        self.drain("before producing WAL")
        self.set_archive("pause")
        start = int(self.psql("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint"))
        target = (start // self.seg_size + n) * self.seg_size
        target_lsn = f"{target >> 32:X}/{target & 0xFFFFFFFF:X}"
        self.psql("DO $$ BEGIN "
                  f"WHILE pg_current_wal_insert_lsn() < '{target_lsn}'::pg_lsn LOOP "
                  "INSERT INTO walgen SELECT md5(random()::text), md5(random()::text) FROM generate_series(1, 2000); "
                  "END LOOP; END $$")
        last = self.psql(f"SELECT pg_walfile_name('{target_lsn}'::pg_lsn)")
        self.psql("CHECKPOINT")
        deadline = time.monotonic() + 60
        while last not in self.ready_files():
            if time.monotonic() > deadline:
                raise Failed(f"segment {last} never became ready for archiving")
            time.sleep(0.05)
        return last

    # -- setup -----------------------------------------------------------------------------

    def setup(self):
        a = self.a
        log(f"work directory {self.w}")
        for d in (self.pgdata, *(f"{self.w}/rec-{t}" for t in TOOLS["recovery"])):
            self.stop_cluster(d, "immediate")  # a cluster left by a killed run
        shutil.rmtree(self.w, ignore_errors=True)
        self.mkdir_pg(self.w, 0o755)
        for d in (f"{self.w}/bin", self.logs, self.ours_dir, self.br_dir, f"{self.br_dir}/log", f"{self.br_dir}/lock",
                  f"{self.br_dir}/spool", self.plain_wal):
            self.mkdir_pg(d, 0o755 if d.endswith("/bin") else 0o700)
        os.chmod(self.logs, 0o755)
        # our binary copied in: a rebuild during the run cannot change it, and its detached
        # prefetchers name the work directory (kill_leftovers)
        shutil.copy2(a.wal_archiver, self.bin)
        os.chmod(self.bin, 0o755)

        env = self.results["environment"]
        env.update(host=platform.node(), kernel=platform.release(), cpus=os.cpu_count(), python=platform.python_version())
        with open("/proc/meminfo") as f:
            env["mem_total_kb"] = int(f.readline().split()[1])
        env["postgres"] = self.sh([f"{PG_BIN}/postgres", "--version"], as_pg=False).stdout.strip()
        env["wal_archiver"] = self.sh([self.bin, "--version"], as_pg=False).stdout.strip()
        env["wal_archiver_path"] = a.wal_archiver
        env["pgbackrest"] = self.sh(["pgbackrest", "version"], as_pg=False).stdout.strip()
        env["moto"] = MOTO
        with open("/proc/loadavg") as f:
            env["loadavg_at_start"] = f.read().strip()

        self.moto_proc, self.moto = start_moto(f"{self.logs}/moto.log", tmpdir=f"{self.w}/moto-tmp")
        with open(f"{self.w}/moto.pid", "w") as f:  # run.sh's last resort
            f.write(f"{self.moto_proc.pid}\n")
        http = Relay(self.moto)
        self.relays.append(http)
        tls = Relay(self.moto, *self_signed_cert(self.w))
        self.relays.append(tls)
        self.results["setup"] = {"moto_port": self.moto, "relay_http_port": http.port, "relay_tls_port": tls.port}
        log(f"moto on 127.0.0.1:{self.moto}; relays: plain HTTP :{http.port} (ours), TLS :{tls.port} (pgBackRest)")

        log(f"initdb --data-checksums ({env['postgres']})")
        self.sh([f"{PG_BIN}/initdb", "--data-checksums", "--auth=trust", "-U", PG_USER, "-D", self.pgdata])
        max_wal_mb = max(4096, 3 * a.wal_segments * 16)
        with open(f"{self.pgdata}/postgresql.conf", "a") as f:
            f.write(f"\n# --- bench/remote.py ---\nport = {self.port}\nlisten_addresses = ''\n"
                    f"unix_socket_directories = '{self.w}'\nmax_wal_size = '{max_wal_mb}MB'\n"
                    "checkpoint_timeout = '1h'\nlog_checkpoints = on\nlog_line_prefix = '%m [%p] %b '\n"
                    # the load runs with minimal WAL; archiving is switched on afterwards
                    "wal_level = minimal\nmax_wal_senders = 0\narchive_mode = off\n")
        self.clusters.add(self.pgdata)
        self.pg_ctl(self.pgdata, "-l", self.pg_log, "-w", "-t", "300", "start")

        log(f"loading: pgbench -i -s {a.scale}, md5 table of {a.rows:,} rows")
        self.sh([f"{PG_BIN}/pgbench", "-i", "-q", "-s", a.scale, "-h", self.w, "-p", self.port, "-U", PG_USER, "postgres"])
        if a.rows:
            self.psql("CREATE TABLE md5_data AS SELECT md5(random()::text) AS a, md5(random()::text) AS b "
                      f"FROM generate_series(1, {a.rows})")
            self.psql("VACUUM ANALYZE md5_data")
        self.psql("CREATE TABLE walgen (a text, b text) WITH (autovacuum_enabled = off)")

        # ours: key, two configurations (two prefixes in the bucket), both repositories created
        self.sh([self.bin, "keygen", "--output", self.ours_keys])
        prefetch = f"prefetch = {a.prefetch}\n" if a.prefetch is not None else ""
        self.write_pg(self.ours_conf, ours_s3_conf(self.ours_keys, http.port, "ours"))
        self.write_pg(self.ours_rec_conf, ours_s3_conf(self.ours_keys, http.port, "ours-rec", extra=prefetch))
        for conf in (self.ours_conf, self.ours_rec_conf):
            self.sh([self.bin, "--config", conf, "init", "--pgdata", self.pgdata])
        # the archive module: the installed extension library (make bench installs it)
        libdir = self.sh([f"{PG_BIN}/pg_config", "--pkglibdir"], as_pg=False).stdout.strip()
        env["archive_module"] = f"{libdir}/pg_backup_ext.so"
        if os.path.exists(env["archive_module"]):
            # (in the file: ALTER SYSTEM knows no parameter of a library the backend has not loaded)
            self.write_pg(f"{self.pgdata}/postgresql.conf", f"backup.config_file = '{self.ours_conf}'\n", append=True)
        else:
            self.skip[("wal", "ours_module")] = f"{env['archive_module']} is not installed (make install-ext)"

        # pgBackRest: two stanzas of the same cluster in one repository, sync and async configs
        pg = {"pg1-path": self.pgdata, "pg1-socket-path": self.w, "pg1-port": self.port, "pg1-user": PG_USER}
        stanzas = {STANZA: pg, REC_STANZA: pg}
        self.write_pg(self.br_sync, pgbackrest_s3_conf(tls.port, a.workers, self.br_dir, stanzas,
                                                       extra="repo1-retention-full=9999\n"))
        self.write_pg(self.br_async, pgbackrest_s3_conf(tls.port, a.workers, self.br_dir, stanzas,
                                                        extra="repo1-retention-full=9999\narchive-async=y\n"))

        self.psql("ALTER SYSTEM SET wal_level = 'replica'")
        self.psql("ALTER SYSTEM SET max_wal_senders = 10")
        self.psql("ALTER SYSTEM SET archive_mode = 'on'")
        self.set_archive("ours", reload=False)
        self.stop_cluster(self.pgdata)
        self.pg_ctl(self.pgdata, "-l", self.pg_log, "-w", "-t", "300", "start")
        self.psql("CHECKPOINT")
        self.seg_size = int(self.psql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'"))
        for stanza in (STANZA, REC_STANZA):
            self.sh(["pgbackrest", f"--config={self.br_sync}", f"--stanza={stanza}", "stanza-create"])
        self.drain("initial archive")
        ds = self.results["dataset"]
        ds["database_bytes"] = int(self.psql("SELECT sum(pg_database_size(datname))::bigint FROM pg_database"))
        ds["wal_segment_size"] = self.seg_size
        log(f"cluster up, archiving on: databases {ds['database_bytes'] / MB:.0f} MB")

    def prepare_recovery(self):
        """The base and the WAL both tools recover: archiving into both recovery repositories
        (prefix ours-rec, stanza rec; nothing else ever goes there), pg_basebackup -X none (it
        waits for its WAL to be archived), N segments made, archived into both, then archiving
        switched back to our main repository: the recovery repositories end at the N-th segment."""
        n = self.a.wal_segments
        log(f"recovery: base backup, then {n} segments archived into both tools' recovery repositories")
        self.set_archive("both_rec")
        self.drain("before the base backup")
        self.sh([f"{PG_BIN}/pg_basebackup", "-h", self.w, "-p", self.port, "-U", PG_USER, "-D", self.base,
                 "-X", "none", "-c", "fast"])
        with open(f"{self.base}/backup_label") as f:
            first = re.search(r"START WAL LOCATION: \S+ \(file ([0-9A-F]{24})\)", f.read()).group(1)
        last = self.produce_segments(n)
        self.set_archive("both_rec")
        self.drain("recovery WAL into both repositories", switch=False)
        self.set_archive("ours")
        self.psql("TRUNCATE walgen")
        st = self.archiver_stats()
        if st["last_archived_wal"] != last:
            raise Failed(f"recovery WAL: last archived {st['last_archived_wal']}, expected {last}")
        count = int(last[8:16], 16) * 0x100000000 // self.seg_size + int(last[16:], 16) \
            - int(first[8:16], 16) * 0x100000000 // self.seg_size - int(first[16:], 16) + 1
        self.rec = {"first_segment": first, "last_segment": last, "segments": count,
                    "base_bytes": sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(self.base) for f in fs)}
        self.results["dataset"]["recovery"] = self.rec
        log(f"        base {self.rec['base_bytes'] / MB:.0f} MB; WAL {first} .. {last} ({count} segments) in both")

    # -- 1. WAL archiving rate ---------------------------------------------------------------

    def wal_run(self, tool, rep):
        n = self.a.wal_segments
        last = self.produce_segments(n)
        pending = self.ready_files()
        self.set_archive(tool, reload=False)
        status_dir = f"{self.pgdata}/pg_wal/archive_status"
        settle_machine()
        cpu = self.cpu_clock()
        t0 = time.monotonic()
        self.psql("SELECT pg_reload_conf()")
        last_check, failed0 = t0, None
        while os.path.exists(f"{status_dir}/{last}.ready") or any(
                f.endswith(".ready") and f[:24] <= last for f in os.listdir(status_dir)):
            now = time.monotonic()
            if now - t0 > self.a.timeout:
                raise Failed(f"WAL run {tool}: not done after {self.a.timeout}s")
            if now - last_check > 5:
                last_check = now
                st = self.archiver_stats()
                failed0 = st["failed_count"] if failed0 is None else failed0
                if st["failed_count"] - failed0 >= 3:
                    raise Failed(f"WAL run {tool}: archive_command keeps failing ({st['last_failed_wal']}); "
                                 f"server log: {self.log_tail(self.pg_log)}")
            time.sleep(0.01)
        secs = time.monotonic() - t0
        c = cpu.stop()
        st = self.archiver_stats()
        if st["last_archived_wal"] < last:
            raise Failed(f"WAL run {tool}: pg_stat_archiver says {st['last_archived_wal']}, expected {last}")
        self.psql("TRUNCATE walgen")  # the backups see the same data in every rep
        return {"rep": rep, "seconds": secs, "segments": len(pending), "last_segment": last,
                "segments_per_s": len(pending) / secs, "mb_per_s": len(pending) * self.seg_size / MB / secs, **c}

    # -- 2. recovery -------------------------------------------------------------------------

    def restore_command(self, tool, dest):
        if tool == "ours":
            return f"{self.bin} --config {self.ours_rec_conf} fetch %f %p"
        if tool == "plain_cp":
            return f'cp {self.plain_wal}/%f "%p"'
        return f'pgbackrest --config={self.br_async} --stanza={REC_STANZA} --pg1-path={dest} archive-get %f "%p"'

    def recovery_run(self, tool, rep):
        dest = f"{self.w}/rec-{tool}"
        self.stop_cluster(dest, "immediate")
        shutil.rmtree(dest, ignore_errors=True)
        self.sh(["cp", "-a", self.base, dest], as_pg=False)
        port = free_port()
        cmd = self.restore_command(tool, dest)
        self.write_pg(f"{dest}/postgresql.auto.conf",
                      "\n# --- bench/remote.py: recovery ---\n"
                      f"port = {port}\nlisten_addresses = ''\nunix_socket_directories = '{self.w}'\n"
                      "archive_mode = off\narchive_command = ''\nhot_standby = off\n"
                      "restore_command = '" + cmd.replace("'", "''") + "'\n", append=True)
        self.write_pg(f"{dest}/recovery.signal", "")
        # pgBackRest's async queue from an earlier run must not serve (or mark missing) anything
        shutil.rmtree(f"{self.br_dir}/spool/archive/{REC_STANZA}", ignore_errors=True)
        self.kill_leftovers(dest)
        logf = f"{self.logs}/recovery-{tool}-{rep}.log"
        if os.path.exists(logf):
            os.remove(logf)
        self.clusters.add(dest)
        settle_machine()
        cpu = self.cpu_clock()
        t0 = time.monotonic()
        self.pg_ctl(dest, "-l", logf, "-W", "start")
        t_redo = t_ready = None
        text, pos = "", 0
        while t_ready is None:
            time.sleep(0.02)
            now = time.monotonic()
            try:
                with open(logf, errors="replace") as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos = f.tell()
            except FileNotFoundError:
                chunk = ""
            # what arrived, with the end of what came before (a line may come in two reads)
            recent = text[-300:] + chunk
            text += chunk
            if t_redo is None and "redo done at" in recent:
                t_redo = now
            if "database system is ready to accept connections" in recent:
                t_ready = now
                break
            bad = re.search(r"(FATAL|PANIC):  .*", recent)
            if bad or (now - t0 > 5 and not os.path.exists(f"{dest}/postmaster.pid")):
                raise Failed(f"recovery with {tool}: {bad.group(0) if bad else 'the server is gone'}; "
                             f"log {logf}:{self.log_tail(logf, 25)}")
            if now - t0 > self.a.timeout:
                raise Failed(f"recovery with {tool}: not over after {self.a.timeout}s; log {logf}:{self.log_tail(logf)}")
        secs = t_ready - t0
        c = cpu.stop()
        in_recovery = self.psql("SELECT pg_is_in_recovery()", port=port)
        timeline = self.psql("SELECT timeline_id FROM pg_control_checkpoint()", port=port)
        restored = re.findall(r'restored log file "([0-9A-F]{24})" from archive', text)
        last = self.rec["last_segment"]
        if in_recovery != "f" or last not in restored:
            raise Failed(f"recovery with {tool}: in recovery {in_recovery}, last restored "
                         f"{restored[-1] if restored else None}, expected {last}; log {logf}")
        redo = re.search(r"redo done at (\S+)", text)
        spool = text.count("restored from the prefetch spool")
        self.stop_cluster(dest, "immediate")
        self.kill_leftovers(dest)
        shutil.rmtree(dest, ignore_errors=True)
        self.clusters.discard(dest)
        return {"rep": rep, "seconds": secs, "redo_s": (t_redo - t0) if t_redo else None,
                "segments_restored": len(set(restored)), "first_restored": restored[0], "last_restored": restored[-1],
                "redo_done_at": redo.group(1) if redo else None, "timeline_after": int(timeline),
                "served_from_prefetch_spool": spool if tool == "ours" else None, "restore_command": cmd, **c}

    # -- 3. full backup ----------------------------------------------------------------------

    def backup_run(self, tool, rep):
        self.set_archive("ours" if tool == "ours" else "pgbackrest_sync")
        self.drain(f"before backup ({tool})")
        self.psql("CHECKPOINT")
        if tool == "ours":
            conninfo = f"host={self.w} port={self.port} user={PG_USER} dbname=postgres"
            cmd = [self.bin, "--config", self.ours_conf, "backup", "--pgdata", self.pgdata, "--dbname", conninfo,
                   "--workers", self.a.workers]
        else:
            cmd = ["pgbackrest", f"--config={self.br_sync}", f"--stanza={STANZA}", "backup", "--type=full"]
        settle_machine()
        cpu = self.cpu_clock()
        t0 = time.monotonic()
        p = self.sh([TIME_BIN, "-v"] + cmd, check=False)
        secs = time.monotonic() - t0
        c = cpu.stop()
        if p.returncode != 0:
            raise Failed(f"backup {tool} failed ({p.returncode}): {' '.join(map(str, cmd))}\n"
                         f"{(p.stdout + p.stderr)[-3000:]}")
        t = gnu_time(p.stderr)
        r = {"rep": rep, "seconds": secs, "user_s": t["user_s"], "sys_s": t["sys_s"], "peak_rss_mib": t["peak_rss_mib"],
             **c}
        if tool == "ours":
            bid = p.stdout.strip().splitlines()[-1].split(":")[0]
            listing = json.loads(self.sh([self.bin, "--config", self.ours_conf, "list", "--output", "json"]).stdout)
            row = next((b for b in listing.get("backups", []) if b.get("id") == bid), {})
            r.update(id=bid, size_bytes=row.get("bytes"), stored_bytes=row.get("stored_bytes"))
        else:
            info = json.loads(self.sh(["pgbackrest", f"--config={self.br_sync}", f"--stanza={STANZA}", "info",
                                       "--output=json"]).stdout)
            b = info[0]["backup"][-1]
            r.update(id=b["label"], size_bytes=b["info"]["size"], stored_bytes=b["info"]["repository"]["size"])
        return r

    # -- after a failure ---------------------------------------------------------------------

    def recover_from(self, test, tool):
        """Leave the cluster as the next run expects it, whatever the failed run left behind."""
        try:
            if test == "recovery":
                dest = f"{self.w}/rec-{tool}"
                self.stop_cluster(dest, "immediate")
                self.kill_leftovers(dest)
                self.clusters.discard(dest)
                if not self.a.keep:
                    shutil.rmtree(dest, ignore_errors=True)
            else:
                # whatever the failed archive_command left pending is dropped
                self.set_archive("discard")
                self.drain("dropping the failed run's backlog")
        except Failed as e:
            log(f"        (could not tidy up after the failure: {str(e).splitlines()[0]})")

    # -- the whole run -----------------------------------------------------------------------

    def orders(self):
        rng = random.Random(self.a.seed)
        base = {test: rng.sample(TOOLS[test], len(TOOLS[test])) for test in TOOLS}
        out = {}
        for test in self.a.tests:
            b = base[test]
            out[test] = {rep: b[(rep - 1) % len(b):] + b[:(rep - 1) % len(b)] for rep in range(1, self.a.reps + 1)}
        self.results["orders"] = {t: {str(k): v for k, v in o.items()} for t, o in out.items()}
        return out

    def run_all(self):
        a = self.a
        orders = self.orders()
        log(f"seed {a.seed} (--seed {a.seed} repeats these orders): "
            + "; ".join(f"{t}: {' / '.join(o[1])} rotated per rep" for t, o in orders.items()))
        self.setup()
        if "recovery" in a.tests:
            self.prepare_recovery()
            # The run's first recovery was 1.5x slower than the same tool's later ones (the
            # base copy and page cache of the first): one untimed, by the floor, for no tool
            # to draw that rep.
            log("recovery warm-up (plain_cp, not counted)")
            self.recovery_run("plain_cp", 0)
        steps = {"wal": self.wal_run, "recovery": self.recovery_run, "backup": self.backup_run}
        for rep in range(1, a.reps + 1):
            for test in a.tests:
                for tool in orders[test][rep]:
                    tag = f"{test:<8} {tool:<16} rep {rep}/{a.reps}"
                    if (test, tool) in self.skip:
                        log(f"{tag}: skipped ({self.skip[(test, tool)]})")
                        continue
                    log(f"{tag}")
                    try:
                        r = steps[test](tool, rep)
                    except Failed as e:
                        msg = str(e)
                        log(f"        FAILED: {msg}")
                        self.results["failures"].append({"test": test, "tool": tool, "rep": rep, "error": msg})
                        self.skip[(test, tool)] = f"failed in rep {rep}"
                        self.recover_from(test, tool)
                        continue
                    self.results["raw"][test][tool].append(r)
                    log("        -> " + describe(test, r))

    def cleanup(self, ok):
        for d in sorted(self.clusters, key=lambda d: d == self.pgdata):  # restored copies first
            try:
                self.stop_cluster(d, "immediate" if d != self.pgdata else "fast")
            except Exception as e:  # noqa: BLE001 -- cleanup goes on
                log(f"stopping {d} failed: {e}")
        left = self.kill_leftovers(self.w)
        if left:
            log(f"processes still there: {left}")
        for r in self.relays:
            r.close()
        if self.moto_proc is not None:
            self.moto_proc.terminate()
            try:
                self.moto_proc.wait(15)
            except subprocess.TimeoutExpired:
                self.moto_proc.kill()
                self.moto_proc.wait()
        if self.a.keep:
            log(f"kept {self.w}")
        elif ok:
            shutil.rmtree(self.w, ignore_errors=True)
        else:
            for d in os.listdir(self.w) if os.path.isdir(self.w) else []:
                if d not in ("logs", "pgbackrest"):
                    shutil.rmtree(f"{self.w}/{d}", ignore_errors=True)
                    if os.path.isfile(f"{self.w}/{d}"):
                        os.remove(f"{self.w}/{d}")
            shutil.rmtree(f"{self.br_dir}/spool", ignore_errors=True)
            log(f"logs kept in {self.w} (logs/, pgbackrest/log/); remove it when done")


def describe(test, r):
    cpu = f"CPU tool side {r['tool_user_s']:.1f}u {r['tool_sys_s']:.1f}s, moto {r['moto_user_s'] + r['moto_sys_s']:.1f}, " \
          f"relays {r['harness_user_s'] + r['harness_sys_s']:.1f}"
    if test == "wal":
        return f"{r['segments']} segments in {r['seconds']:.2f}s = {r['segments_per_s']:.2f} seg/s; {cpu}"
    if test == "recovery":
        redo = f"{r['redo_s']:.2f}" if r["redo_s"] is not None else "?"
        spool = f", {r['served_from_prefetch_spool']} from the prefetch spool" if r["served_from_prefetch_spool"] is not None else ""
        return (f"open after {r['seconds']:.2f}s (redo done after {redo}s), {r['segments_restored']} segments restored "
                f"({r['first_restored']} .. {r['last_restored']}){spool}; {cpu}")
    return (f"{r['seconds']:.2f}s, user {r['user_s']:.1f}s sys {r['sys_s']:.1f}s (process tree), "
            f"stored {(r['stored_bytes'] or 0) / MB:.0f} MB of {(r['size_bytes'] or 0) / MB:.0f} MB; {cpu}")


# ---------------------------------------------------------------------------------------------
# analysis and output

def spread(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def analyse(results):
    raw = results["raw"]
    summary = {}
    for test, tools in raw.items():
        for tool, rows in tools.items():
            if rows:
                keys = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "rep"]
                summary[f"{test}.{tool}"] = {k: spread([r.get(k) for r in rows]) for k in keys}
    ratios = []
    for key, label, o, t, better, target in RATIOS:
        ours = {r["rep"]: r.get(o[2]) for r in raw[o[0]][o[1]]}
        theirs = {r["rep"]: r.get(t[2]) for r in raw[t[0]][t[1]]}
        per_rep = {k: ours[k] / theirs[k] for k in sorted(ours) if ours[k] is not None and theirs.get(k)}
        value = statistics.median(per_rep.values()) if per_rep else None
        mo = spread(ours.values())
        mt = spread(theirs.values())
        met = None if target is None or value is None else (value <= target if better == "lower" else value >= target)
        ratios.append({"key": key, "label": label.strip(), "value": value, "per_rep": per_rep,
                       "min": min(per_rep.values()) if per_rep else None, "max": max(per_rep.values()) if per_rep else None,
                       "ratio_of_medians": mo["median"] / mt["median"] if mo and mt and mt["median"] else None,
                       "better": better, "target": target, "target_met": met})
    results["summary"] = summary
    results["ratios"] = ratios


def print_tables(results):
    print()
    print("Ratios ours / pgBackRest, per rep (same rep), and their median.")
    hdr = f"{'measure':<44} {'per rep':<24} {'median':>7}  {'better':<7} {'target':<8} met"
    print(hdr)
    print("-" * len(hdr))
    label_of = {k: lab for k, lab, *_ in RATIOS}
    for r in results["ratios"]:
        per = " ".join(fmt(v, 2) for v in r["per_rep"].values()) or "-"
        tgt = "-" if r["target"] is None else ("<= " if r["better"] == "lower" else ">= ") + f"{r['target']}"
        met = {True: "yes", False: "NO", None: ""}[r["target_met"]]
        print(f"{label_of[r['key']]:<44} {per:<24} {fmt(r['value']):>7}  {r['better']:<7} {tgt:<8} {met}")
    print()
    print("Medians (min..max): wall seconds; user/system seconds: the tool's process tree (backups) and the")
    print("machine minus moto and the relays ('tool side': the tool, PostgreSQL and anything else running).")
    s = results["summary"]
    for test, tools in TOOLS.items():
        for tool in tools:
            d = s.get(f"{test}.{tool}")
            if not d:
                continue

            def m(k, digits=2, scale=1.0):
                x = d.get(k)
                if not x:
                    return "-"
                return f"{x['median'] / scale:.{digits}f} ({x['min'] / scale:.{digits}f}..{x['max'] / scale:.{digits}f})"
            line = f"  {test:<8} {tool:<16} wall {m('seconds')} s"
            if test == "wal":
                line += f", {m('segments_per_s')} seg/s"
            if test == "recovery":
                line += f", redo done {m('redo_s')} s"
            if test == "backup":
                line += f", tree user {m('user_s', 1)} sys {m('sys_s', 1)}, stored {m('stored_bytes', 0, MB)} MB"
            line += f"; tool side user {m('tool_user_s', 1)} sys {m('tool_sys_s', 1)}; moto user {m('moto_user_s', 1)}" \
                    f" sys {m('moto_sys_s', 1)}; relays user {m('harness_user_s', 1)} sys {m('harness_sys_s', 1)}"
            print(line)
    if results["failures"]:
        print()
        print("Failures:")
        for f in results["failures"]:
            print(f"  {f['test']} {f['tool']} rep {f['rep']}: {f['error'][:2000]}")
    print()


def write_results(results, ts, latest):
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"remote-{ts}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    if latest:
        shutil.copyfile(path, os.path.join(RESULTS_DIR, "remote-latest.json"))
    return path


def default_binary():
    for c in (os.environ.get("WAL_ARCHIVER"), shutil.which("wal-archiver"),
              os.path.join(HERE, "..", "target", "release", "wal-archiver")):
        if c and os.path.exists(c):
            return os.path.abspath(c)
    return None


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=env_int("BENCH_REMOTE_SCALE", 30),
                    help="pgbench scale (env BENCH_REMOTE_SCALE, 30)")
    ap.add_argument("--rows", type=int, default=env_int("BENCH_REMOTE_ROWS", 2_000_000),
                    help="rows of the md5 table (env BENCH_REMOTE_ROWS, 2000000)")
    ap.add_argument("--reps", type=int, default=env_int("BENCH_REPS", 3), help="repetitions (env BENCH_REPS, 3)")
    ap.add_argument("--wal-segments", type=int, default=env_int("BENCH_WAL_SEGMENTS", 64),
                    help="segments per archiving run, and recovered (env BENCH_WAL_SEGMENTS, 64)")
    ap.add_argument("--workers", type=int, default=env_int("BENCH_WORKERS", 2),
                    help="backup --workers / pgBackRest process-max (env BENCH_WORKERS, 2)")
    ap.add_argument("--prefetch", type=int, default=None,
                    help="our prefetch setting for the recovery (default: the configuration's default, 8)")
    ap.add_argument("--tests", default="wal,recovery,backup",
                    help="which figures, in this order within each rep (default wal,recovery,backup)")
    ap.add_argument("--seed", type=int, default=None, help="seed of the tool orders (default: random, printed)")
    ap.add_argument("--workdir", default=os.environ.get("BENCH_REMOTE_DIR", "/tmp/pg_backup_remote_bench"),
                    help="scratch directory, wiped first (env BENCH_REMOTE_DIR)")
    ap.add_argument("--timeout", type=int, default=env_int("BENCH_TIMEOUT", 900),
                    help="seconds any one step may take (env BENCH_TIMEOUT, 900)")
    ap.add_argument("--wal-archiver", default=default_binary(),
                    help="wal-archiver binary (default: $WAL_ARCHIVER, PATH, target/release)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args(argv)
    a.tests = [t.strip() for t in a.tests.split(",") if t.strip()]
    if any(t not in TOOLS for t in a.tests) or not a.tests:
        ap.error(f"--tests: a comma-separated subset of {','.join(TOOLS)}")
    if a.reps < 1 or a.wal_segments < 1 or a.scale < 1 or a.rows < 0 or a.workers < 1:
        ap.error("scale, reps, wal-segments and workers must be positive")
    if not a.wal_archiver or not os.path.exists(a.wal_archiver):
        ap.error("no wal-archiver binary: --wal-archiver PATH (or make install)")
    a.wal_archiver = os.path.abspath(a.wal_archiver)
    if a.seed is None:
        a.seed = random.SystemRandom().randrange(1, 2**31)
    return a


def main(argv):
    a = parse_args(argv)
    if os.getuid() != 0:
        sys.exit("run as root (runuser to the postgres OS user)")
    if not os.access(MOTO, os.X_OK):
        sys.exit(f"no moto at {MOTO} (make test-deps installs it, or set MOTO_SERVER)")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    ts = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    b = Remote(a)
    log(f"remote (S3) benchmark: scale {a.scale}, {a.rows:,} md5 rows, {a.reps} rep(s), {a.wal_segments} segments, "
        f"{a.workers} workers; {', '.join(a.tests)}")
    ok = False
    try:
        with free_pages_held() as held:
            b.results["free_page_reporting"] = held
            b.run_all()
        ok = True
    except (Failed, KeyboardInterrupt, Terminated) as e:
        b.results["status"] = "failed"
        b.results["error"] = str(e) or type(e).__name__
        log(f"FAILED: {b.results['error']}")
    except Exception as e:
        b.results["status"] = "failed"
        b.results["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        try:
            b.cleanup(ok and not b.results["failures"])
        finally:
            b.results["finished_at"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
            b.results["elapsed_s"] = round(time.monotonic() - T_START, 1)
            if ok:
                b.results["status"] = "partial" if b.results["failures"] else "ok"
            try:
                analyse(b.results)
            except Exception as e:  # noqa: BLE001 -- the raw numbers are still written
                b.results["analysis_error"] = f"{type(e).__name__}: {e}"
            path = write_results(b.results, ts, latest=ok)
            log(f"results: {path}" + (" (and remote-latest.json)" if ok else " (failed run)"))
    if "ratios" in b.results:
        print_tables(b.results)
    return 0 if ok and not b.results["failures"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
