#!/usr/bin/env python3
"""Benchmark harness: pg_backup_ext / wal-archiver against pgBackRest and pg_basebackup.

One throwaway PostgreSQL 15 cluster (data checksums, pgbench + an md5 table), every tool on
the same cluster in the same run, interleaved per repetition:

  1. full backup: wall time and stored bytes
       ours            SELECT backup.start_full(wait => true)   (zstd-3, AES-256-GCM, backup.workers)
       pgBackRest      backup --type=full                        (zst-3, aes-256-cbc, process-max)
       pg_basebackup   -Ft --compress=server-zstd:3 -X none
  2. restore of that backup into an empty directory: wall time (ours vs pgBackRest)
  3. WAL archiving rate: N full segments produced while archiving is paused, then the tool's
     archive_command is set and the clock runs until the last of them is archived
       ours (wal-archiver push) vs pgBackRest archive-push sync vs async (archive-async=y)
  4. peak RSS: our push (/usr/bin/time around archive_command), our backup worker (VmHWM
     polled in /proc while it runs), our restore (/usr/bin/time)
  5. incremental backups (skip with --no-incremental), per rep after the full backups: 5 rounds
     of (1 % of the rows of the big tables updated, CHECKPOINT, one incremental by each tool)
       ours            SELECT backup.start_incremental(wait => true) in round 1, then
                       wal-archiver backup --incremental (kernel read counters of the process)
       pgBackRest      backup --type=incr (options of its full)
     stored bytes, wall time (also against our full), bytes read against the databases' size;
     then the restore of full + 5 incrementals against the restore of a full of the same state

Output: a table of ratios (ours / theirs) on stdout, raw numbers + ratios as JSON in
bench/results/<timestamp>.json and bench/results/latest.json, a bar chart in
bench/results/latest.png when matplotlib is available.

Run through bench/run.sh (installs pgbackrest, time, matplotlib when missing). Standard
library only; matplotlib is optional.
"""

import argparse
import datetime
import json
import os
import platform
import pwd
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import T_START, Terminated, env_int, fmt, free_pages_held, log, on_signal, settle_machine  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, "results")
PGBIN = os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin")
TIME_BIN = "/usr/bin/time"
PG_USER = "postgres"
STANZA = "bench"
MB = 1024 * 1024
INCR_ROUNDS = 5  # the chain restored: a full backup + 5 incrementals



# ---------------------------------------------------------------------------------------------
# small helpers

def fmt_bytes(n):
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024.0


def dir_bytes(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass
    return total


def spread(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# the benchmark

class Bench:
    def __init__(self, args):
        self.args = args
        self.work = os.path.abspath(args.workdir)
        self.port = args.port
        self.pgdata = os.path.join(self.work, "primary")
        self.sock = self.work
        self.pg_log = os.path.join(self.work, "postgres.log")
        self.as_pg = [] if pwd.getpwuid(os.getuid()).pw_name == PG_USER else ["runuser", "-u", PG_USER, "--"]
        pw = pwd.getpwnam(PG_USER)
        self.pg_uid, self.pg_gid = pw.pw_uid, pw.pw_gid
        self.archiver = args.wal_archiver or shutil.which("wal-archiver") or "/usr/local/bin/wal-archiver"
        self.pgbackrest = shutil.which("pgbackrest") or "/usr/bin/pgbackrest"
        # ours
        self.our_dir = os.path.join(self.work, "ours")
        self.our_conf = os.path.join(self.our_dir, "pg_backup_ext.conf")
        self.our_keys = os.path.join(self.our_dir, "keys.json")
        self.our_repo = os.path.join(self.our_dir, "repository")
        # pgBackRest
        self.br_dir = os.path.join(self.work, "pgbackrest")
        self.br_conf_sync = os.path.join(self.br_dir, "pgbackrest.conf")
        self.br_conf_async = os.path.join(self.br_dir, "pgbackrest-async.conf")
        self.br_repo = os.path.join(self.br_dir, "repo")
        # scratch
        self.rss_dir = os.path.join(self.work, "rss")
        self.push_rss_file = os.path.join(self.rss_dir, "push.txt")
        self.restore_dir = os.path.join(self.work, "restore")
        self.basebackup_dir = os.path.join(self.work, "basebackup")
        self.started_cluster = False
        self.children = []
        # archive_library currently set (set_archive), and whether the archiver must be awaited
        self.archive_library = ""
        self.library_changed = False
        self.archiver_before = ""
        self.seg_size = None
        self.restore_target_ok = True
        self.results = {
            "status": "running",
            "started_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "params": {
                "scale": args.scale,
                "rows": args.rows,
                "reps": args.reps,
                "wal_segments": args.wal_segments,
                "workers": args.workers,
                "compression": "zstd level 3 (all tools)",
                "encryption": {"ours": "AES-256-GCM", "pgbackrest": "aes-256-cbc", "pg_basebackup": "none"},
            },
            "notes": [],
            "environment": {},
            "dataset": {},
            "raw": {
                "backup": {"ours": [], "pgbackrest": [], "pg_basebackup": []},
                "restore": {"ours": [], "pgbackrest": []},
                "wal": {"ours": [], "ours_module": [], "pgbackrest_sync": [], "pgbackrest_async": []},
                "rss": {"push_kb": [], "backup_worker": [], "restore_kb": []},
                "floor": {"compress": [], "write": []},
            },
            # section 5 (bench/README.md): raw rows here, ratios and summary added by analyse()
            "incremental": {
                "skipped": bool(args.no_incremental),
                "rounds": INCR_ROUNDS,
                "change": "per round: UPDATE 1 % of pgbench_accounts (abalance + 1) and of md5_data (a = md5(a)), "
                          "rows picked by random() < 0.01 after setseed(round / 10); then CHECKPOINT",
                "raw": {"change": [], "ours": [], "pgbackrest": [], "full_after_chain": [], "restore": [],
                        "restore_pgbackrest_chain": []},
            },
        }
        self.incr = self.results["incremental"]["raw"]

    # -- running things --------------------------------------------------------------------

    def run(self, cmd, as_pg=True, timeout=None, check=True, capture=True, input=None):
        full = (self.as_pg if as_pg else []) + [str(c) for c in cmd]
        try:
            p = subprocess.run(full, capture_output=capture, text=True, timeout=timeout, input=input)
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"timed out after {timeout}s: {' '.join(full)}") from e
        if check and p.returncode != 0:
            out = ((p.stdout or "") + (p.stderr or "")).strip()
            raise BenchError(f"command failed ({p.returncode}): {' '.join(full)}\n{out[-3000:]}")
        return p

    def psql_cmd(self, sql):
        return [f"{PGBIN}/psql", "-X", "-q", "-At", "-h", self.sock, "-p", str(self.port), "-U", PG_USER,
                "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql]

    def psql(self, sql, timeout=600):
        return self.run(self.psql_cmd(sql), timeout=timeout).stdout.strip()

    def pgbr(self, *args, conf=None, timeout=None):
        return self.run([self.pgbackrest, f"--config={conf or self.br_conf_sync}", f"--stanza={STANZA}", *args],
                        timeout=timeout)

    def chown_pg(self, path):
        if os.getuid() == 0:
            os.chown(path, self.pg_uid, self.pg_gid)

    def mkdir_pg(self, path, mode=0o700):
        os.makedirs(path, mode=mode, exist_ok=True)
        os.chmod(path, mode)
        self.chown_pg(path)

    def write_pg(self, path, text, mode=0o600):
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        self.chown_pg(path)

    def rmtree(self, path):
        shutil.rmtree(path, ignore_errors=True)

    # -- cluster -----------------------------------------------------------------------------

    def postmaster_pid(self):
        try:
            with open(os.path.join(self.pgdata, "postmaster.pid")) as f:
                return int(f.readline().strip())
        except (FileNotFoundError, ValueError):
            return None

    def pg_ctl(self, *args, timeout=600):
        return self.run([f"{PGBIN}/pg_ctl", "-D", self.pgdata, *args], timeout=timeout)

    def start(self):
        self.started_cluster = True
        self.pg_ctl("-l", self.pg_log, "-w", "-t", "300", "start")

    def stop(self, mode="fast"):
        if self.postmaster_pid() is None:
            return
        try:
            self.pg_ctl("-m", mode, "-w", "-t", "120", "stop", timeout=180)
        except BenchError:
            if mode != "immediate":
                self.run([f"{PGBIN}/pg_ctl", "-D", self.pgdata, "-m", "immediate", "-w", "stop"],
                         timeout=120, check=False)

    def archive_cmds(self):
        ours = f"{self.archiver} --config {self.our_conf} push %p"
        return {
            "pause": "",
            "ours": ours,
            "ours_rss": f"{TIME_BIN} -f %%M -a -o {self.push_rss_file} {ours}",
            "pgbackrest_sync": f"{self.pgbackrest} --config={self.br_conf_sync} --stanza={STANZA} archive-push %p",
            "pgbackrest_async": f"{self.pgbackrest} --config={self.br_conf_async} --stanza={STANZA} archive-push %p",
            # the incremental section: every segment into both repositories, so that each tool
            # has all the WAL between its backups (ours reads its block summaries from there)
            "both": f"{ours} && {self.pgbackrest} --config={self.br_conf_sync} --stanza={STANZA} archive-push %p",
        }

    def set_archive(self, name, reload=True, settle=0.5):
        # "ours_module": archive_library = 'pg_backup_ext' (no archive_command); all others
        # are archive_commands. The archiver restarts when archive_library changes.
        library = "pg_backup_ext" if name == "ours_module" else ""
        cmd = "" if library else self.archive_cmds()[name]
        self.library_changed = library != self.archive_library
        if self.library_changed:
            self.psql(f"ALTER SYSTEM SET archive_library = '{library}'")
            self.archive_library = library
            self.archiver_before = self.archiver_pid()
        self.psql("ALTER SYSTEM SET archive_command = '" + cmd.replace("'", "''") + "'")
        self.archive_mode = name
        if reload:
            self.psql("SELECT pg_reload_conf()")
            self.wait_archiver_restart()
            time.sleep(settle)  # the archiver re-reads its configuration on SIGHUP

    def archiver_pid(self):
        return self.psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'archiver'")

    def wait_archiver_restart(self):
        """After archive_library changed: the archiver exits, and PostgreSQL 15's postmaster
        starts the new one only when something wakes it (a connection does): connect until it
        is there, so no run is timed against a missing archiver."""
        if not self.library_changed:
            return
        self.library_changed = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pid = self.archiver_pid()
            if pid and pid != self.archiver_before:
                return
            time.sleep(0.02)
        raise BenchError("the archiver did not restart after archive_library changed")

    def ready_files(self):
        d = os.path.join(self.pgdata, "pg_wal", "archive_status")
        return sorted(f[:-6] for f in os.listdir(d) if f.endswith(".ready"))

    def archiver_stats(self):
        row = self.psql("SELECT archived_count, coalesce(last_archived_wal, ''), failed_count, "
                        "coalesce(last_failed_wal, '') FROM pg_stat_archiver")
        a, la, fcount, lf = row.split("|")
        return {"archived_count": int(a), "last_archived_wal": la, "failed_count": int(fcount), "last_failed_wal": lf}

    def drain(self, what, timeout=None, switch=True):
        """Wait until every finished WAL segment is archived (no .ready left)."""
        timeout = timeout or self.args.timeout
        if switch:
            self.psql("SELECT pg_switch_wal()")
        start = time.monotonic()
        failed0 = self.archiver_stats()["failed_count"]
        last_check = start
        while self.ready_files():
            now = time.monotonic()
            if now - start > timeout:
                raise BenchError(f"{what}: WAL not archived after {timeout}s; pending {self.ready_files()[:5]}")
            if now - last_check > 2:
                last_check = now
                st = self.archiver_stats()
                if st["failed_count"] - failed0 >= 5:
                    raise BenchError(f"{what}: archive_command keeps failing (last failed {st['last_failed_wal']}); "
                                     f"see {self.pg_log} and {self.br_dir}/log")
            time.sleep(0.05)

    def setup(self):
        a = self.args
        log(f"work directory {self.work} (port {self.port})")
        if self.postmaster_pid() is not None:
            log("a cluster from an earlier run is still up there: stopping it")
            self.stop("immediate")
        self.rmtree(self.work)
        self.mkdir_pg(self.work, 0o755)
        for d in (self.our_dir, self.br_dir, self.rss_dir, self.restore_dir,
                  os.path.join(self.br_dir, "log"), os.path.join(self.br_dir, "lock"), os.path.join(self.br_dir, "spool")):
            self.mkdir_pg(d)

        env = self.results["environment"]
        env["host"] = platform.node()
        env["kernel"] = platform.release()
        env["cpus"] = os.cpu_count()
        try:
            with open("/proc/meminfo") as f:
                env["mem_total_kb"] = int(f.readline().split()[1])
        except OSError:
            pass
        env["postgres"] = self.run([f"{PGBIN}/postgres", "--version"], as_pg=False).stdout.strip()
        env["wal_archiver"] = self.run([self.archiver, "--version"], as_pg=False).stdout.strip()
        env["pgbackrest"] = self.run([self.pgbackrest, "version"], as_pg=False).stdout.strip()
        env["python"] = platform.python_version()

        log(f"initdb --data-checksums ({env['postgres']})")
        self.run([f"{PGBIN}/initdb", "--data-checksums", "--auth=trust", "-U", PG_USER, "-D", self.pgdata])

        # ours: key + config + repository
        self.run([self.archiver, "keygen", "--output", self.our_keys])
        self.write_pg(self.our_conf,
                      f'repo_path = "{self.our_repo}"\nkey_file = "{self.our_keys}"\n'
                      f"compression = true\ncompression_level = 3\nencryption = true\n")
        self.run([self.archiver, "--config", self.our_conf, "init", "--pgdata", self.pgdata])

        # pgBackRest: one config for sync archive-push (and backup/restore), one for async
        cipher = secrets.token_hex(24)
        common = (
            "[global]\n"
            f"repo1-path={self.br_repo}\n"
            "repo1-cipher-type=aes-256-cbc\n"
            f"repo1-cipher-pass={cipher}\n"
            "repo1-retention-full=9999\n"
            "compress-type=zst\n"
            "compress-level=3\n"
            f"process-max={a.workers}\n"
            "start-fast=y\n"
            f"log-path={self.br_dir}/log\n"
            f"lock-path={self.br_dir}/lock\n"
            f"spool-path={self.br_dir}/spool\n"
            "log-level-console=warn\n"
            "log-level-file=info\n"
        )
        stanza = (
            f"\n[{STANZA}]\n"
            f"pg1-path={self.pgdata}\n"
            f"pg1-socket-path={self.sock}\n"
            f"pg1-port={self.port}\n"
            f"pg1-user={PG_USER}\n"
        )
        self.write_pg(self.br_conf_sync, common + stanza)
        self.write_pg(self.br_conf_async, common + "archive-async=y\n" + stanza)

        max_wal_mb = max(4096, 3 * a.wal_segments * 16)
        conf = (
            "\n# --- bench/bench.py ---\n"
            f"port = {self.port}\n"
            "listen_addresses = ''\n"
            f"unix_socket_directories = '{self.sock}'\n"
            "shared_preload_libraries = 'pg_backup_ext'\n"
            f"backup.config_file = '{self.our_conf}'\n"
            # the default schedule must not start a backup in the middle of a timed step
            "backup.scheduler = off\n"
            f"backup.workers = {a.workers}\n"
            f"max_wal_size = '{max_wal_mb}MB'\n"
            "checkpoint_timeout = '1h'\n"
            "log_checkpoints = on\n"
            "log_line_prefix = '%m [%p] %b '\n"
            # the load runs with minimal WAL; archiving is switched on afterwards
            "wal_level = minimal\n"
            "max_wal_senders = 0\n"
            "archive_mode = off\n"
        )
        with open(os.path.join(self.pgdata, "postgresql.conf"), "a") as f:
            f.write(conf)
        self.start()
        log("cluster up (wal_level = minimal for the load)")

    def load(self):
        a = self.args
        log(f"loading: pgbench -i -s {a.scale}")
        t = time.monotonic()
        self.run([f"{PGBIN}/pgbench", "-i", "-q", "-s", a.scale, "-h", self.sock, "-p", self.port, "-U", PG_USER, "postgres"])
        log(f"  pgbench done in {time.monotonic() - t:.1f}s; md5 table of {a.rows:,} rows")
        t = time.monotonic()
        self.psql("CREATE TABLE md5_data AS SELECT md5(random()::text) AS a, md5(random()::text) AS b "
                  f"FROM generate_series(1, {a.rows})", timeout=None)
        self.psql("VACUUM ANALYZE md5_data", timeout=None)
        # the WAL generator's table: no autovacuum noise while segments are produced or archived
        self.psql("CREATE TABLE walgen (a text, b text) WITH (autovacuum_enabled = off)")
        self.psql("CREATE EXTENSION pg_backup_ext")
        log(f"  md5 table done in {time.monotonic() - t:.1f}s")

        # archiving on: needs a restart (wal_level, archive_mode)
        self.psql("ALTER SYSTEM SET wal_level = 'replica'")
        self.psql("ALTER SYSTEM SET max_wal_senders = 10")
        self.psql("ALTER SYSTEM SET archive_mode = 'on'")
        self.set_archive("ours", reload=False)
        self.stop()
        self.start()
        self.psql("CHECKPOINT")
        self.seg_size = int(self.psql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'"))
        log("restarted with wal_level = replica, archive_mode = on; creating the pgBackRest stanza")
        self.pgbr("stanza-create", timeout=600)
        self.drain("initial archive")

        ds = self.results["dataset"]
        ds["database_bytes"] = int(self.psql("SELECT sum(pg_database_size(datname))::bigint FROM pg_database"))
        ds["pgdata_bytes"] = dir_bytes(self.pgdata)
        ds["md5_table_bytes"] = int(self.psql("SELECT pg_total_relation_size('md5_data')"))
        ds["pgbench_bytes"] = int(self.psql(
            "SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c WHERE c.relname LIKE 'pgbench_%' AND c.relkind = 'r'"))
        ds["wal_segment_size"] = self.seg_size
        ds["block_size"] = int(self.psql("SELECT current_setting('block_size')"))
        log(f"dataset: databases {fmt_bytes(ds['database_bytes'])}, data directory {fmt_bytes(ds['pgdata_bytes'])}")

    # -- 1. backups --------------------------------------------------------------------------

    def prepare_backup(self, archive):
        """Same starting line for every tool: its own archiver, nothing pending, a fresh checkpoint."""
        self.set_archive(archive)
        self.drain(f"before backup ({archive})")
        self.psql("CHECKPOINT", timeout=None)

    def find_worker_pid(self, pm_pid):
        try:
            with open(f"/proc/{pm_pid}/task/{pm_pid}/children") as f:
                kids = f.read().split()
        except OSError:
            kids = [p for p in os.listdir("/proc") if p.isdigit()]
        for pid in kids:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ")
            except OSError:
                continue
            if b"pg_backup_ext backup" in cmd:
                return int(pid)
        return None

    @staticmethod
    def proc_status(pid):
        out = {}
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                        out[k] = int(v.split()[0])
        except (OSError, ValueError):
            return None
        return out

    @staticmethod
    def proc_io(pid):
        """/proc/PID/io: rchar counts every byte read() returned (page cache or not), read_bytes
        what the process made the block layer fetch."""
        try:
            with open(f"/proc/{pid}/io") as f:
                return {k: int(v) for k, _, v in (line.partition(":") for line in f) if v.strip()}
        except (OSError, ValueError):
            return None

    def sql_backup(self, function):
        """SELECT backup.<function>(wait => true), timed until it returns; the backup worker's
        memory and I/O counters are polled in /proc every 20 ms while it runs. Returns the
        seconds, the backup id and what the polling saw (samples = 0: the worker was too quick)."""
        pm = self.postmaster_pid()
        t0 = time.monotonic()
        p = subprocess.Popen(self.as_pg + self.psql_cmd(f"SELECT backup.{function}(wait => true)"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.children.append(p)
        worker_pid, peak, io = None, {"VmHWM": 0, "RssAnon": 0, "VmRSS": 0}, None
        samples = 0
        while p.poll() is None:
            if worker_pid is None:
                worker_pid = self.find_worker_pid(pm)
            if worker_pid is not None:
                st = self.proc_status(worker_pid)
                if st:
                    samples += 1
                    for k in peak:
                        peak[k] = max(peak[k], st.get(k, 0))
                    io = self.proc_io(worker_pid) or io
            time.sleep(0.02)
            if time.monotonic() - t0 > self.args.timeout:
                p.kill()
                raise BenchError(f"our backup took more than {self.args.timeout}s")
        secs = time.monotonic() - t0
        out, err = p.communicate()
        self.children.remove(p)
        if p.returncode != 0:
            raise BenchError(f"backup.{function} failed: {err.strip()}")
        bid = out.strip().splitlines()[-1]
        return secs, bid, {"pid": worker_pid, "samples": samples, "peak": peak, "io": io}

    def backup_ours(self, rep):
        self.prepare_backup("ours_rss")
        secs, bid, probe = self.sql_backup("start_full")
        row = self.psql("SELECT size_bytes, stored_bytes, file_count, extract(epoch FROM duration) "
                        f"FROM backup.list() WHERE id = '{bid}' AND status = 'completed'")
        if not row:
            raise BenchError(f"backup {bid} is not listed as completed")
        size, stored, files, dur = row.split("|")
        r = {"rep": rep, "seconds": secs, "id": bid, "size_bytes": int(size), "stored_bytes": int(stored),
             "file_count": int(files), "reported_duration_s": float(dur) if dur else None}
        self.results["raw"]["backup"]["ours"].append(r)
        peak = probe["peak"]
        if not probe["samples"]:
            log("  (backup worker not seen in /proc: too quick to sample its memory)")
            self.results["raw"]["backup"]["ours"][-1]["worker_rss_sampled"] = False
        else:
            self.results["raw"]["rss"]["backup_worker"].append(
                {"rep": rep, "pid": probe["pid"], "samples": probe["samples"], "vmhwm_kb": peak["VmHWM"],
                 "max_rss_kb": peak["VmRSS"], "max_rss_anon_kb": peak["RssAnon"],
                 # polled every 20 ms: a lower bound, as for the incrementals
                 "io_last_sample": probe["io"]})
        return r, peak if probe["samples"] else None

    def backup_pgbackrest(self, rep):
        self.prepare_backup("pgbackrest_sync")
        t0 = time.monotonic()
        self.pgbr("backup", "--type=full", timeout=self.args.timeout)
        secs = time.monotonic() - t0
        info = json.loads(self.pgbr("info", "--output=json").stdout)
        st = next(s for s in info if s["name"] == STANZA)
        b = st["backup"][-1]
        label = b["label"]
        r = {"rep": rep, "seconds": secs, "label": label,
             "size_bytes": b["info"]["size"], "stored_bytes": b["info"]["repository"]["size"],
             "stored_bytes_du": dir_bytes(os.path.join(self.br_repo, "backup", STANZA, label))}
        self.results["raw"]["backup"]["pgbackrest"].append(r)
        return r

    def backup_basebackup(self, rep):
        self.prepare_backup("ours")  # -X none: the backup waits for its WAL to be archived
        self.rmtree(self.basebackup_dir)
        t0 = time.monotonic()
        self.run([f"{PGBIN}/pg_basebackup", "-h", self.sock, "-p", self.port, "-U", PG_USER, "-D", self.basebackup_dir,
                  "-Ft", "--compress=server-zstd:3", "-X", "none", "-c", "fast"], timeout=self.args.timeout)
        secs = time.monotonic() - t0
        files = {f: os.path.getsize(os.path.join(self.basebackup_dir, f)) for f in os.listdir(self.basebackup_dir)}
        r = {"rep": rep, "seconds": secs, "stored_bytes": sum(files.values()), "files": files}
        self.results["raw"]["backup"]["pg_basebackup"].append(r)
        self.rmtree(self.basebackup_dir)
        return r

    # -- 2. restores -------------------------------------------------------------------------

    def restore_ours_into(self, target, backup_id, rss_file, settle=False):
        """Our restore of backup_id into the empty directory target, timed until the command
        returns; peak RSS from /usr/bin/time. settle: sync and pause first (see common.settle_machine())."""
        self.rmtree(target)
        cmd = [self.archiver, "--config", self.our_conf, "restore", "--pgdata", target, "--backup-id", backup_id,
               "--target", "immediate", "--archive-mode", "off", "--workers", self.args.workers]
        if not self.restore_target_ok:
            # a wal-archiver older than "--backup-id combines with a target": the files written are
            # the same, only the recovery settings differ
            cmd = [c for c in cmd if c not in ("--target", "immediate")]
        if settle:
            settle_machine()
        t0 = time.monotonic()
        p = self.run([TIME_BIN, "-f", "%M", "-o", rss_file] + cmd, timeout=self.args.timeout, check=False)
        secs = time.monotonic() - t0
        if p.returncode != 0 and self.restore_target_ok and "cannot be used with" in (p.stderr or ""):
            log("  this wal-archiver refuses --backup-id with --target: restoring without --target immediate")
            self.restore_target_ok = False
            self.results["notes"].append("our restore ran without --target immediate (older wal-archiver)")
            return self.restore_ours_into(target, backup_id, rss_file, settle)
        if p.returncode != 0:
            raise BenchError(f"our restore failed ({p.returncode}): {' '.join(cmd)}\n{(p.stdout + p.stderr)[-3000:]}")
        with open(rss_file) as f:
            rss_kb = int(f.read().split()[-1])
        return {"seconds": secs, "backup_id": backup_id, "restored_bytes": dir_bytes(target), "peak_rss_kb": rss_kb,
                "stderr": (p.stderr or "").strip()}

    def restore_ours(self, rep, backup_id):
        target = os.path.join(self.restore_dir, "ours")
        rr = self.restore_ours_into(target, backup_id, os.path.join(self.rss_dir, f"restore-{rep}.txt"))
        r = {"rep": rep, "seconds": rr["seconds"], "backup_id": backup_id, "restored_bytes": rr["restored_bytes"],
             "peak_rss_kb": rr["peak_rss_kb"]}
        self.results["raw"]["restore"]["ours"].append(r)
        self.results["raw"]["rss"]["restore_kb"].append(rr["peak_rss_kb"])
        self.floor_write(rep, target)
        self.rmtree(target)
        return r

    # -- floors: the same bytes through the bare tools, nothing else ---------------------------

    def floor_write(self, rep, restored):
        """What writing the restored bytes durably costs on this disk with no decoding at all:
        cp -a of the directory just restored (still in the page cache), then syncfs."""
        copy = restored.rstrip("/") + "-floor"
        self.rmtree(copy)
        t0 = time.monotonic()
        self.run(["cp", "-a", restored, copy], as_pg=False)
        self.run(["sync", "-f", copy], as_pg=False)
        secs = time.monotonic() - t0
        self.results["raw"]["floor"]["write"].append({"rep": rep, "seconds": secs, "bytes": dir_bytes(copy)})
        self.rmtree(copy)
        log(f"        (floor: cp -a + sync of the same files {secs:.2f}s)")

    def floor_compress(self, rep):
        """What zstd level 3 alone costs on these files with every core: tar of the data
        directory (WAL excluded) into `zstd -3 -T<workers> -B1M`, output discarded. No hashing,
        no encryption, no page checks, nothing stored."""
        cmd = (f"tar -C {self.pgdata} --exclude=./pg_wal -cf - . 2>/dev/null "
               f"| zstd -3 -T{self.args.workers} -B1M -q -c | wc -c")
        t0 = time.monotonic()
        stored = int(self.run(["bash", "-c", cmd], as_pg=False).stdout.split()[0])
        secs = time.monotonic() - t0
        r = {"rep": rep, "seconds": secs, "stored_bytes": stored}
        self.results["raw"]["floor"]["compress"].append(r)
        return r

    def restore_pgbackrest_into(self, target, label, settle=False):
        self.rmtree(target)
        self.mkdir_pg(target)  # pgBackRest restores into an existing, empty directory
        if settle:
            settle_machine()
        t0 = time.monotonic()
        self.pgbr("restore", f"--pg1-path={target}", f"--set={label}", "--type=immediate", "--archive-mode=off",
                  timeout=self.args.timeout)
        secs = time.monotonic() - t0
        return {"seconds": secs, "label": label, "restored_bytes": dir_bytes(target)}

    def restore_pgbackrest(self, rep, label):
        target = os.path.join(self.restore_dir, "pgbackrest")
        r = dict(rep=rep, **self.restore_pgbackrest_into(target, label))
        self.results["raw"]["restore"]["pgbackrest"].append(r)
        self.rmtree(target)
        return r

    # -- 3. WAL archiving --------------------------------------------------------------------

    def produce_segments(self, n):
        """With archiving paused: n WAL segments full of md5 rows; returns the last one's name."""
        # start on a fresh segment, with nothing pending, under whatever archiver is set now
        self.psql("TRUNCATE walgen")
        self.drain("before producing WAL")
        self.set_archive("pause")
        start = int(self.psql("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint"))
        first_seg = start // self.seg_size
        target = (first_seg + n) * self.seg_size
        target_lsn = f"{target >> 32:X}/{target & 0xFFFFFFFF:X}"
        self.psql(
            "DO $$ BEGIN "
            f"WHILE pg_current_wal_insert_lsn() < '{target_lsn}'::pg_lsn LOOP "
            "INSERT INTO walgen SELECT md5(random()::text), md5(random()::text) FROM generate_series(1, 2000); "
            "END LOOP; END $$", timeout=None)
        # the segment ending at target_lsn (pg_walfile_name of a boundary names the one before it)
        last = self.psql(f"SELECT pg_walfile_name('{target_lsn}'::pg_lsn)")
        # keep the checkpoint these inserts call for out of the timed part
        self.psql("CHECKPOINT", timeout=None)
        deadline = time.monotonic() + 60
        while last not in self.ready_files():
            if time.monotonic() > deadline:
                raise BenchError(f"segment {last} never became ready for archiving")
            time.sleep(0.05)
        return last

    def wal_run(self, tool, rep, n):
        last = self.produce_segments(n)
        pending = self.ready_files()
        # the clock starts with the reload that hands the backlog to the tool
        self.set_archive(tool, reload=False)
        status_dir = os.path.join(self.pgdata, "pg_wal", "archive_status")
        ready_last = os.path.join(status_dir, last + ".ready")
        t0 = time.monotonic()
        self.psql("SELECT pg_reload_conf()")
        self.wait_archiver_restart()  # inside the clock: switching to/from the module costs that
        last_check = t0
        failed0 = None
        while os.path.exists(ready_last) or any(f.endswith(".ready") and f[:24] <= last for f in os.listdir(status_dir)):
            now = time.monotonic()
            if now - t0 > self.args.timeout:
                raise BenchError(f"WAL run {tool}: not done after {self.args.timeout}s")
            if now - last_check > 5:
                last_check = now
                st = self.archiver_stats()
                failed0 = st["failed_count"] if failed0 is None else failed0
                if st["failed_count"] - failed0 >= 5:
                    raise BenchError(f"WAL run {tool}: archive_command keeps failing ({st['last_failed_wal']})")
            time.sleep(0.01)
        secs = time.monotonic() - t0
        st = self.archiver_stats()
        if st["last_archived_wal"] < last:
            raise BenchError(f"WAL run {tool}: pg_stat_archiver says {st['last_archived_wal']}, expected {last}")
        nseg = len(pending)
        r = {"rep": rep, "seconds": secs, "segments": nseg, "bytes": nseg * self.seg_size, "last_segment": last,
             "segments_per_s": nseg / secs, "mb_per_s": nseg * self.seg_size / MB / secs}
        self.results["raw"]["wal"][tool].append(r)
        return r

    def push_rss_pass(self):
        """Full segments through the /usr/bin/time-wrapped push (kept out of the timed runs)."""
        n = min(8, self.args.wal_segments)
        self.set_archive("ours")
        self.produce_segments(n)
        self.set_archive("ours_rss")
        self.drain("push RSS pass", switch=False)

    def collect_push_rss(self):
        vals = []
        try:
            with open(self.push_rss_file) as f:
                for line in f:
                    line = line.strip()
                    if line.isdigit():
                        vals.append(int(line))
        except FileNotFoundError:
            pass
        self.results["raw"]["rss"]["push_kb"] = vals

    # -- 5. incremental backups -------------------------------------------------------------
    #
    # After each tool's full backup of the rep: INCR_ROUNDS rounds of (1 % of the rows of the big
    # tables updated, CHECKPOINT, one incremental by each tool). Round 1 is the comparison: ours
    # through SQL as the full backup, pgBackRest backup --type=incr with the options of its full.
    # Rounds 2.. run ours through the CLI (same engine) so the kernel's I/O counters of the
    # process can be read when it exits. Then the chain (full + INCR_ROUNDS incrementals) is
    # restored, and a full backup of the same state, and the two restores are compared.

    def change_rows(self, rnd):
        """1 % of the rows of pgbench_accounts and md5_data, picked by random() under a fixed
        seed per round (the same rows for every tool: the change is made once, both back it up)."""
        seed = rnd / 10.0
        cmd = self.psql_cmd(f"SELECT setseed({seed})")
        cmd += ["-c", "WITH u AS (UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE random() < 0.01 "
                      "RETURNING 1) SELECT count(*) FROM u",
                "-c", "WITH u AS (UPDATE md5_data SET a = md5(a) WHERE random() < 0.01 RETURNING 1) SELECT count(*) FROM u"]
        t0 = time.monotonic()
        out = self.run(cmd, timeout=self.args.timeout).stdout.split()
        secs = time.monotonic() - t0
        self.psql("CHECKPOINT", timeout=None)
        return {"seed": seed, "accounts_rows": int(out[-2]), "md5_rows": int(out[-1]), "seconds": secs}

    def database_size(self):
        """What an incremental's reads are set against: every database (pg_database_size), and
        the data directory without pg_wal."""
        db = int(self.psql("SELECT sum(pg_database_size(datname))::bigint FROM pg_database"))
        return {"database_bytes": db,
                "pgdata_bytes_no_wal": dir_bytes(self.pgdata) - dir_bytes(os.path.join(self.pgdata, "pg_wal"))}

    def run_measured(self, cmd):
        """Runs cmd as the postgres OS user and reads the kernel's count of what it read: the
        child's exit is awaited without reaping it (waitid WNOWAIT), so /proc/PID/io is still
        there and final (it includes the threads and the children the process reaped itself),
        then it is reaped (wait4: peak RSS). Timed from the start to the exit."""
        if os.getuid() == 0:
            who = {"user": self.pg_uid, "group": self.pg_gid, "extra_groups": []}
            env = dict(os.environ, HOME=pwd.getpwnam(PG_USER).pw_dir, USER=PG_USER, LOGNAME=PG_USER)
        else:
            who, env = {}, None
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        cmd = [str(c) for c in cmd]
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=self.work, env=env, **who)
        self.children.append(p)
        killer = threading.Timer(self.args.timeout, p.kill)
        killer.start()
        try:
            os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
            secs = time.monotonic() - t0
            io = self.proc_io(p.pid)
            _pid, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
        finally:
            killer.cancel()
            if p.returncode is None:  # interrupted (signal): the child must not outlive the run
                p.kill()
                p.wait()
            self.children.remove(p)
        if secs >= self.args.timeout:
            raise BenchError(f"timed out after {self.args.timeout}s: {' '.join(cmd)}")
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        out.close()
        err.close()
        if p.returncode != 0:
            raise BenchError(f"command failed ({p.returncode}): {' '.join(cmd)}\n{(stdout + stderr)[-3000:]}")
        return {"seconds": secs, "io": io, "maxrss_kb": usage.ru_maxrss, "stdout": stdout.strip(), "stderr": stderr.strip()}

    def our_manifest(self, bid):
        doc = json.loads(self.psql(f"SELECT backup.get('{bid}')"))
        if "manifest" not in doc:
            raise BenchError(f"backup {bid}: no manifest in backup.get(): {doc}")
        return doc["manifest"]

    def incremental_ours(self, rep, rnd, size, via):
        self.prepare_backup("both")
        if via == "sql":
            secs, bid, probe = self.sql_backup("start_incremental")
            extra = {"worker_samples": probe["samples"], "worker_vmhwm_kb": probe["peak"]["VmHWM"],
                     "worker_max_rss_anon_kb": probe["peak"]["RssAnon"],
                     # polled every 20 ms: the reads of its last moments are missing (a lower bound)
                     "worker_io_last_sample": probe["io"]}
            row = self.psql(f"SELECT type, parent, chain_depth, changed_blocks, stored_bytes FROM backup.list() "
                            f"WHERE id = '{bid}' AND status = 'completed'")
            if not row:
                raise BenchError(f"incremental backup {bid} is not listed as completed")
            kind, parent, depth, changed, stored = row.split("|")
            extra["list"] = {"type": kind, "parent": parent, "chain_depth": int(depth),
                             "changed_blocks": int(changed or 0), "stored_bytes": int(stored)}
        else:
            conninfo = f"host={self.sock} port={self.port} user={PG_USER} dbname=postgres"
            cmd = [self.archiver, "--config", self.our_conf, "backup", "--pgdata", self.pgdata,
                   "--dbname", conninfo, "--workers", self.args.workers, "--incremental"]
            if via == "cli-scan":
                # the page-LSN scan, for its figure: every page of every relation file read
                cmd.append("--no-wal-summaries")
            m = self.run_measured(cmd)
            secs, bid = m["seconds"], m["stdout"].splitlines()[-1].split(":")[0]
            io = m["io"] or {}
            extra = {"output": m["stdout"].splitlines()[-1], "io": m["io"], "rchar": io.get("rchar"),
                     "read_bytes": io.get("read_bytes"), "peak_rss_kb": m["maxrss_kb"]}
        man = self.our_manifest(bid)
        if man.get("type") != "incremental" or not man.get("parent"):
            raise BenchError(f"backup {bid} was asked to be incremental but its manifest says "
                             f"type {man.get('type')}, parent {man.get('parent')}")
        r = {"rep": rep, "round": rnd, "via": via, "seconds": secs, "id": bid, "parent": man["parent"],
             "chain_depth": man["chain_depth"], "size_bytes": man["bytes"], "stored_bytes": man["stored_bytes"],
             "changed_blocks": man["changed_blocks"], "bytes_read": man["bytes_read"],
             "path": "scan" if (man.get("incremental") or {}).get("wal_unusable") else "wal-summaries",
             "incremental": man.get("incremental"),
             "reported_duration_s": man["duration_ms"] / 1000.0 if man.get("duration_ms") is not None else None,
             **size, **extra}
        self.incr["ours"].append(r)
        return r

    def incremental_pgbackrest(self, rep, rnd, size):
        self.prepare_backup("both")
        m = self.run_measured([self.pgbackrest, f"--config={self.br_conf_sync}", f"--stanza={STANZA}", "backup",
                               "--type=incr"])
        info = json.loads(self.pgbr("info", "--output=json").stdout)
        b = next(s for s in info if s["name"] == STANZA)["backup"][-1]
        if b["type"] != "incr":
            raise BenchError(f"pgBackRest's newest backup {b['label']} is a {b['type']}, not the incr just taken")
        io = m["io"] or {}
        r = {"rep": rep, "round": rnd, "seconds": m["seconds"], "label": b["label"], "prior": b.get("prior"),
             "size_bytes": b["info"]["size"], "delta_bytes": b["info"]["delta"],
             "stored_bytes": b["info"]["repository"]["delta"], "repository_size_bytes": b["info"]["repository"]["size"],
             "stored_bytes_du": dir_bytes(os.path.join(self.br_repo, "backup", STANZA, b["label"])),
             "io": m["io"], "rchar": io.get("rchar"), "read_bytes": io.get("read_bytes"), "peak_rss_kb": m["maxrss_kb"],
             **size}
        self.incr["pgbackrest"].append(r)
        return r

    def incremental_rep(self, rep):
        tag = f"rep {rep}/{self.args.reps}"
        last_ours = last_br = None
        # Fresh bases, with every segment from here on archived into both repositories: the
        # main section's backups each archive into their own tool's repository only, which
        # leaves the other's WAL with holes an incremental would have to span.
        self.prepare_backup("both")
        secs, base_id, _probe = self.sql_backup("start_full")
        self.pgbr("backup", "--type=full")
        self.incr.setdefault("base", []).append({"rep": rep, "seconds": secs, "id": base_id})
        log(f"incr    bases {tag}: ours {base_id} ({secs:.2f}s), pgBackRest full, archiving into both from here")
        for rnd in range(1, INCR_ROUNDS + 1):
            ch = self.change_rows(rnd)
            size = self.database_size()
            self.incr["change"].append({"rep": rep, "round": rnd, **ch, **size})
            log(f"incr    round {rnd}/{INCR_ROUNDS} {tag}: updated {ch['accounts_rows']:,} + {ch['md5_rows']:,} rows "
                f"(1 %, seed {ch['seed']}), databases {fmt_bytes(size['database_bytes'])}")
            # round 1 through SQL (its time compares with the SQL full); round 2 by the page-LSN
            # scan (its read figure); the others through the CLI with the WAL summaries
            via = {1: "sql", 2: "cli-scan"}.get(rnd, "cli")
            r = self.incremental_ours(rep, rnd, size, via)
            read = f"read {fmt_bytes(r['bytes_read'])} (own count)"
            if r.get("rchar") is not None:
                read += f", rchar {fmt_bytes(r['rchar'])}"
            log(f"        ours ({via}, {r['path']}) -> {r['seconds']:.2f}s, stored {fmt_bytes(r['stored_bytes'])}, "
                f"{r['changed_blocks']:,} changed blocks, {read}, on {r['parent']} (depth {r['chain_depth']})")
            rb = self.incremental_pgbackrest(rep, rnd, size)
            log(f"        pgbackrest   -> {rb['seconds']:.2f}s, stored {fmt_bytes(rb['stored_bytes'])} "
                f"(changed files {fmt_bytes(rb['delta_bytes'])}), rchar {fmt_bytes(rb['rchar'])}")
            last_ours, last_br = r, rb

        # a full backup of the very state the last incremental saw, then both restored
        self.prepare_backup("both")
        secs, full_id, _probe = self.sql_backup("start_full")
        man = self.our_manifest(full_id)
        self.incr["full_after_chain"].append({"rep": rep, "seconds": secs, "id": full_id,
                                              "stored_bytes": man["stored_bytes"], "size_bytes": man["bytes"]})
        log(f"incr    full of the same state {tag} -> {secs:.2f}s, stored {fmt_bytes(man['stored_bytes'])}")
        target = os.path.join(self.restore_dir, "ours")
        order = ["chain", "full"] if rep % 2 else ["full", "chain"]
        for i, what in enumerate(order, 1):
            bid = last_ours["id"] if what == "chain" else full_id
            rr = self.restore_ours_into(target, bid, os.path.join(self.rss_dir, f"incr-restore-{what}-{rep}.txt"),
                                        settle=True)
            chain = re.search(r"through a chain of (\d+) backups", rr.pop("stderr"))
            rr.update(rep=rep, what=what, order=i, chain_length=int(chain.group(1)) if chain else 1)
            self.incr["restore"].append(rr)
            self.rmtree(target)
            log(f"incr    restore ours {what:<5} {tag} ({bid}, {rr['chain_length']} backup(s)) -> "
                f"{rr['seconds']:.2f}s, {fmt_bytes(rr['restored_bytes'])}")
            if what == "chain" and rr["chain_length"] != INCR_ROUNDS + 1:
                raise BenchError(f"restore of {bid} went through {rr['chain_length']} backups, "
                                 f"expected {INCR_ROUNDS + 1} (full + {INCR_ROUNDS} incrementals)")
        target = os.path.join(self.restore_dir, "pgbackrest")
        rr = dict(rep=rep, **self.restore_pgbackrest_into(target, last_br["label"], settle=True))
        self.incr["restore_pgbackrest_chain"].append(rr)
        self.rmtree(target)
        log(f"incr    restore pgbackrest chain {tag} ({last_br['label']}) -> {rr['seconds']:.2f}s, "
            f"{fmt_bytes(rr['restored_bytes'])}")

    # -- the whole run -----------------------------------------------------------------------

    def run_all(self):
        a = self.args
        self.setup()
        self.load()
        for rep in range(1, a.reps + 1):
            tag = f"rep {rep}/{a.reps}"
            log(f"backup  ours           {tag}")
            r, peak = self.backup_ours(rep)
            log(f"        -> {r['seconds']:.2f}s, stored {fmt_bytes(r['stored_bytes'])} of {fmt_bytes(r['size_bytes'])}"
                + (f", worker VmHWM {peak['VmHWM'] / 1024:.1f} MB" if peak else ""))
            log(f"backup  pgbackrest     {tag}")
            rb = self.backup_pgbackrest(rep)
            log(f"        -> {rb['seconds']:.2f}s, stored {fmt_bytes(rb['stored_bytes'])} of {fmt_bytes(rb['size_bytes'])}")
            log(f"backup  pg_basebackup  {tag}")
            r2 = self.backup_basebackup(rep)
            log(f"        -> {r2['seconds']:.2f}s, stored {fmt_bytes(r2['stored_bytes'])}")
            log(f"floor   zstd -3 alone  {tag}")
            rf = self.floor_compress(rep)
            log(f"        -> {rf['seconds']:.2f}s, {fmt_bytes(rf['stored_bytes'])}")
            log(f"restore ours           {tag} ({r['id']})")
            rr = self.restore_ours(rep, r["id"])
            log(f"        -> {rr['seconds']:.2f}s, {fmt_bytes(rr['restored_bytes'])}, peak RSS {rr['peak_rss_kb'] / 1024:.1f} MB")
            log(f"restore pgbackrest     {tag} ({rb['label']})")
            rr = self.restore_pgbackrest(rep, rb["label"])
            log(f"        -> {rr['seconds']:.2f}s, {fmt_bytes(rr['restored_bytes'])}")
            if not a.no_incremental:
                self.incremental_rep(rep)
        # the WAL phase starts from the archiver of the last backup (ours); each run drains first
        for rep in range(1, a.reps + 1):
            for tool in ("ours", "ours_module", "pgbackrest_sync", "pgbackrest_async"):
                log(f"WAL     {tool:<16} rep {rep}/{a.reps}: producing {a.wal_segments} segments (archiving paused)")
                r = self.wal_run(tool, rep, a.wal_segments)
                log(f"        -> {r['segments']} segments in {r['seconds']:.2f}s = {r['segments_per_s']:.1f} seg/s, "
                    f"{r['mb_per_s']:.1f} MB/s")
        log("RSS     ours push (full segments through /usr/bin/time)")
        self.push_rss_pass()
        self.collect_push_rss()
        pk = self.results["raw"]["rss"]["push_kb"]
        log(f"        -> {len(pk)} pushes, peak {max(pk) / 1024 if pk else float('nan'):.1f} MB")
        self.set_archive("ours")

    # -- clean up ----------------------------------------------------------------------------

    def cleanup(self, success):
        for p in list(self.children):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        if self.started_cluster or self.postmaster_pid() is not None:
            log("stopping the cluster")
            try:
                self.stop("fast")
            except Exception as e:  # noqa: BLE001 -- cleanup must go on
                log(f"  stop failed: {e}")
        self.kill_leftovers()
        if success and not self.args.keep:
            self.rmtree(self.work)
        elif not self.args.keep:
            # keep the logs for a post-mortem, drop the bulk
            for d in (self.pgdata, self.our_repo, self.br_repo, self.restore_dir, self.basebackup_dir,
                      os.path.join(self.br_dir, "spool")):
                self.rmtree(d)
            log(f"logs kept in {self.work} (postgres.log, pgbackrest/log)")

    @staticmethod
    def ancestors():
        pids, pid = set(), os.getpid()
        while pid > 1 and pid not in pids:
            pids.add(pid)
            try:
                with open(f"/proc/{pid}/stat") as f:
                    # the field after the parenthesised command name is the state, then the ppid
                    pid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                break
        return pids

    def kill_leftovers(self):
        """Processes still running from this run's work directory (e.g. pgBackRest's async
        archive-push started by the archiver): everything that names our directory, except this
        process and its ancestors (run.sh names the directory too when given --workdir)."""
        spared = self.ancestors()
        needle = self.work.encode()
        found = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) in spared:
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if needle in f.read():
                        found.append(int(pid))
            except OSError:
                pass
        for pid in found:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while found and time.monotonic() < deadline:
            found = [p for p in found if os.path.exists(f"/proc/{p}")]
            time.sleep(0.1)
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---------------------------------------------------------------------------------------------
# analysis and output

RATIO_ROWS = [
    # key, label, ours (section, tool, field), theirs (section, tool, field), better, target
    ("backup_time_vs_pgbackrest", "backup time / pgBackRest", ("backup", "ours", "seconds"),
     ("backup", "pgbackrest", "seconds"), "lower", 0.33),
    ("backup_time_vs_pg_basebackup", "backup time / pg_basebackup", ("backup", "ours", "seconds"),
     ("backup", "pg_basebackup", "seconds"), "lower", None),
    ("stored_bytes_vs_pgbackrest", "stored bytes / pgBackRest", ("backup", "ours", "stored_bytes"),
     ("backup", "pgbackrest", "stored_bytes"), "lower", None),
    ("stored_bytes_vs_pg_basebackup", "stored bytes / pg_basebackup", ("backup", "ours", "stored_bytes"),
     ("backup", "pg_basebackup", "stored_bytes"), "lower", None),
    ("restore_time_vs_pgbackrest", "restore time / pgBackRest", ("restore", "ours", "seconds"),
     ("restore", "pgbackrest", "seconds"), "lower", 0.5),
    # floors: the bare work on the same bytes (bench/README.md); a target below the floor's own
    # ratio cannot be met on this machine
    ("compress_floor_vs_pgbackrest", "floor: zstd-3 alone / pgBackRest backup", ("floor", "compress", "seconds"),
     ("backup", "pgbackrest", "seconds"), "lower", None),
    ("backup_time_vs_compress_floor", "backup time / zstd-3 alone", ("backup", "ours", "seconds"),
     ("floor", "compress", "seconds"), "lower", None),
    ("write_floor_vs_pgbackrest", "floor: cp + sync / pgBackRest restore", ("floor", "write", "seconds"),
     ("restore", "pgbackrest", "seconds"), "lower", None),
    ("restore_time_vs_write_floor", "restore time / cp + sync alone", ("restore", "ours", "seconds"),
     ("floor", "write", "seconds"), "lower", None),
    ("wal_rate_vs_pgbackrest_sync", "WAL rate / pgBackRest sync", ("wal", "ours", "segments_per_s"),
     ("wal", "pgbackrest_sync", "segments_per_s"), "higher", 1.5),
    ("wal_rate_vs_pgbackrest_async", "WAL rate / pgBackRest async", ("wal", "ours", "segments_per_s"),
     ("wal", "pgbackrest_async", "segments_per_s"), "higher", None),
    ("wal_module_rate_vs_pgbackrest_sync", "WAL rate, archive_library / pgBackRest sync",
     ("wal", "ours_module", "segments_per_s"), ("wal", "pgbackrest_sync", "segments_per_s"), "higher", 1.5),
    ("wal_module_rate_vs_pgbackrest_async", "WAL rate, archive_library / pgBackRest async",
     ("wal", "ours_module", "segments_per_s"), ("wal", "pgbackrest_async", "segments_per_s"), "higher", None),
]

RSS_ROWS = [
    # key, label, target MB
    ("push_peak_rss_mb", "push peak RSS (MB)", 64),
    ("backup_worker_peak_rss_mb", "backup worker peak RSS (MB)", 256),
    ("restore_peak_rss_mb", "restore peak RSS (MB)", None),
]


def target_met(value, better, target):
    if target is None or value is None:
        return None
    return value <= target if better == "lower" else value >= target


def analyse(results):
    raw = results["raw"]
    summary = {}
    for section, tools in raw.items():
        if section == "rss":
            continue
        for tool, rows in tools.items():
            fields = [k for k in (rows[0] if rows else {}) if isinstance(rows[0][k], (int, float)) and k != "rep"]
            summary[f"{section}.{tool}"] = {k: spread([r.get(k) for r in rows]) for k in fields}
    ratios = []
    for key, label, o, t, better, target in RATIO_ROWS:
        ours = {r["rep"]: r[o[2]] for r in raw[o[0]][o[1]]}
        theirs = {r["rep"]: r[t[2]] for r in raw[t[0]][t[1]]}
        mo = statistics.median(ours.values()) if ours else None
        mt = statistics.median(theirs.values()) if theirs else None
        value = mo / mt if mo is not None and mt else None
        per_rep = [ours[k] / theirs[k] for k in sorted(ours) if k in theirs and theirs[k]]
        ratios.append({"key": key, "label": label, "value": value, "min": min(per_rep) if per_rep else None,
                       "max": max(per_rep) if per_rep else None, "per_rep": per_rep, "ours_median": mo,
                       "theirs_median": mt, "better": better, "target": target,
                       "target_met": target_met(value, better, target)})
    rss = raw["rss"]
    rss_values = {
        "push_peak_rss_mb": [v / 1024 for v in rss["push_kb"]],
        "backup_worker_peak_rss_mb": [r["vmhwm_kb"] / 1024 for r in rss["backup_worker"]],
        "restore_peak_rss_mb": [v / 1024 for v in rss["restore_kb"]],
    }
    rss_rows = []
    for key, label, target in RSS_ROWS:
        vals = rss_values[key]
        value = max(vals) if vals else None
        rss_rows.append({"key": key, "label": label, "value": value, "median": statistics.median(vals) if vals else None,
                         "min": min(vals) if vals else None, "max": value, "samples": len(vals), "better": "lower",
                         "target": target, "target_met": target_met(value, "lower", target)})
    results["summary"] = summary
    results["ratios"] = ratios
    results["rss"] = rss_rows
    inc = results.get("incremental")
    if inc and not inc.get("skipped"):
        analyse_incremental(results)


def ratio_row(key, label, pairs, better, target):
    """A ratio over paired observations (ours, theirs): median of ours / median of theirs, and
    the spread of the per-observation ratios -- the same shape as the main table's rows."""
    pairs = [(o, t) for o, t in pairs if o is not None and t]
    per = [o / t for o, t in pairs]
    mo = statistics.median(o for o, _ in pairs) if pairs else None
    mt = statistics.median(t for _, t in pairs) if pairs else None
    value = mo / mt if pairs else None
    return {"key": key, "label": label, "value": value, "min": min(per) if per else None,
            "max": max(per) if per else None, "per_rep": per, "n": len(pairs), "ours_median": mo,
            "theirs_median": mt, "better": better, "target": target, "target_met": target_met(value, better, target)}


def analyse_incremental(results):
    inc = results["incremental"]
    raw = inc["raw"]
    block = results["dataset"].get("block_size", 8192)
    ours = raw["ours"]
    first = {r["rep"]: r for r in ours if r["round"] == 1}
    br_first = {r["rep"]: r for r in raw["pgbackrest"] if r["round"] == 1}
    full = {r["rep"]: r for r in results["raw"]["backup"]["ours"]}
    restores = {(r["rep"], r["what"]): r for r in raw["restore"]}
    br_chain = {r["rep"]: r for r in raw["restore_pgbackrest_chain"]}
    reps = sorted(first)

    def by_rep(a, fa, b, fb):
        return [(a[k][fa], b[k][fb]) for k in reps if k in a and k in b]

    inc["ratios"] = [
        # round 1: the first incremental after each tool's full backup
        ratio_row("incr_stored_vs_pgbackrest_incr", "incr stored bytes / pgBackRest incr",
                  by_rep(first, "stored_bytes", br_first, "stored_bytes"), "lower", 0.1),
        ratio_row("incr_time_vs_own_full", "incr time / our full backup",
                  by_rep(first, "seconds", full, "seconds"), "lower", round(1 / 3, 3)),
        ratio_row("incr_time_vs_pgbackrest_incr", "incr time / pgBackRest incr",
                  by_rep(first, "seconds", br_first, "seconds"), "lower", 1.0),
        # what was read, against the databases' size: kernel counts of the CLI runs (rounds 2..)
        ratio_row("incr_rchar_vs_database", "incr bytes read (kernel rchar) / databases",
                  [(r.get("rchar"), r["database_bytes"]) for r in ours if r["via"] == "cli"], "lower", 0.1),
        ratio_row("incr_bytes_read_vs_database", "incr bytes read (own count) / databases",
                  [(r["bytes_read"], r["database_bytes"]) for r in ours if r["path"] == "wal-summaries"], "lower", 0.1),
        ratio_row("incr_scan_rchar_vs_database", "scan path: bytes read (rchar) / databases",
                  [(r.get("rchar"), r["database_bytes"]) for r in ours if r["via"] == "cli-scan"], "lower", None),
        ratio_row("incr_scan_time_vs_summary_time", "scan path time / WAL-summary path time",
                  [(s_["seconds"], w["seconds"]) for s_ in ours if s_["via"] == "cli-scan"
                   for w in ours if w["via"] == "cli" and w["rep"] == s_["rep"] and w["round"] == s_["round"] + 1],
                  "lower", None),
        ratio_row("pgbackrest_incr_rchar_vs_database", "pgBackRest incr read (rchar) / databases",
                  [(r.get("rchar"), r["database_bytes"]) for r in raw["pgbackrest"]], "lower", None),
        # the chain: full + INCR_ROUNDS incrementals against a full backup of the same state
        ratio_row("chain_restore_vs_full_restore", f"restore full + {inc['rounds']} incr / restore of a full",
                  [(restores[(k, "chain")]["seconds"], restores[(k, "full")]["seconds"]) for k in reps
                   if (k, "chain") in restores and (k, "full") in restores], "lower", 1.3),
        ratio_row("chain_restore_vs_pgbackrest_chain", f"restore full + {inc['rounds']} incr / pgBackRest's",
                  [(restores[(k, "chain")]["seconds"], br_chain[k]["seconds"]) for k in reps
                   if (k, "chain") in restores and k in br_chain], "lower", None),
        # context: how much of the data the 1 % change touched, and the incremental against our full
        ratio_row("changed_blocks_vs_database", "changed blocks x block size / databases",
                  [(r["changed_blocks"] * block, r["database_bytes"]) for r in ours], "lower", None),
        ratio_row("incr_stored_vs_own_full", "incr stored bytes / our full backup",
                  by_rep(first, "stored_bytes", full, "stored_bytes"), "lower", None),
    ]

    def fields(rows, names):
        return {n: spread([r.get(n) for r in rows]) for n in names}

    backup_fields = ("seconds", "stored_bytes", "changed_blocks", "bytes_read", "rchar", "read_bytes",
                     "database_bytes", "peak_rss_kb", "worker_vmhwm_kb")
    inc["summary"] = {
        "ours_round1_sql": fields([r for r in ours if r["round"] == 1], backup_fields),
        "ours_rounds_cli": fields([r for r in ours if r["via"] == "cli"], backup_fields),
        "ours_round2_scan": fields([r for r in ours if r["via"] == "cli-scan"], backup_fields),
        "pgbackrest_round1": fields([r for r in raw["pgbackrest"] if r["round"] == 1],
                                    ("seconds", "stored_bytes", "delta_bytes", "rchar", "read_bytes")),
        "pgbackrest_all": fields(raw["pgbackrest"], ("seconds", "stored_bytes", "delta_bytes", "rchar", "read_bytes")),
        "change": fields(raw["change"], ("accounts_rows", "md5_rows", "seconds", "database_bytes",
                                         "pgdata_bytes_no_wal")),
        "full_after_chain": fields(raw["full_after_chain"], ("seconds", "stored_bytes")),
        "restore_chain": fields([r for r in raw["restore"] if r["what"] == "chain"], ("seconds", "peak_rss_kb")),
        "restore_full": fields([r for r in raw["restore"] if r["what"] == "full"], ("seconds", "peak_rss_kb")),
        "restore_pgbackrest_chain": fields(raw["restore_pgbackrest_chain"], ("seconds",)),
    }
    # Which path each incremental took: the WAL summaries (reads what changed) or the page scan
    # (reads everything); said in the output so a fallback is not mistaken for a regression.
    inc["read_path"] = sorted({r.get("path", "?") for r in ours})


def print_ratio_rows(rows):
    for r in rows:
        sp = f"{fmt(r['min'])}..{fmt(r['max'])}"
        tgt = "-" if r["target"] is None else (("<= " if r["better"] == "lower" else ">= ") + f"{r['target']}")
        met = {True: "yes", False: "NO", None: ""}[r["target_met"]]
        print(f"{r['label']:<46} {fmt(r['value']):>7} {sp:>15}  {r['better'] + ' better':<13} {tgt:<8} {met:<4}")


def print_tables(results):
    print()
    print("Ratios ours / theirs: median of ours / median of theirs; spread = min..max of the per-rep ratios.")
    print("RSS rows: peak MB of our processes (value = max over all samples; spread = min..max).")
    hdr = f"{'measure':<46} {'value':>7} {'spread':>15}  {'better':<13} {'target':<8} {'met':<4}"
    print(hdr)
    print("-" * len(hdr))
    print_ratio_rows(results["ratios"])
    for r in results["rss"]:
        sp = f"{fmt(r['min'], 1)}..{fmt(r['max'], 1)}"
        tgt = "-" if r["target"] is None else f"<= {r['target']}"
        met = {True: "yes", False: "NO", None: ""}[r["target_met"]]
        print(f"{'ours: ' + r['label']:<46} {fmt(r['value'], 1):>7} {sp:>15}  {'lower better':<13} {tgt:<8} {met:<4}")
    print()
    print("Medians (min..max)")
    s = results["summary"]

    def line(label, d, conv=lambda v: v, unit="", digits=2):
        if not d or d["median"] is None:
            return
        print(f"  {label:<46} {conv(d['median']):>10.{digits}f} {unit:<5} ({conv(d['min']):.{digits}f}..{conv(d['max']):.{digits}f})")

    for tool in ("ours", "pgbackrest", "pg_basebackup"):
        line(f"backup {tool}", s.get(f"backup.{tool}", {}).get("seconds"), unit="s")
        line(f"backup {tool} stored", s.get(f"backup.{tool}", {}).get("stored_bytes"), lambda v: v / MB, "MB", 1)
    line("floor: zstd -3 alone", s.get("floor.compress", {}).get("seconds"), unit="s")
    for tool in ("ours", "pgbackrest"):
        line(f"restore {tool}", s.get(f"restore.{tool}", {}).get("seconds"), unit="s")
    line("floor: cp -a + sync alone", s.get("floor.write", {}).get("seconds"), unit="s")
    for tool in ("ours", "ours_module", "pgbackrest_sync", "pgbackrest_async"):
        line(f"WAL {tool}", s.get(f"wal.{tool}", {}).get("mb_per_s"), unit="MB/s", digits=1)
    print()

    inc = results.get("incremental") or {}
    if inc.get("skipped") or "ratios" not in inc:
        return
    n = inc["rounds"]
    print(f"Incremental backups: per rep, {n} rounds of (1 % of the rows of pgbench_accounts and md5_data updated,")
    print("CHECKPOINT, one incremental by each tool) after the rep's full backups. Round 1 (ours through SQL) is the")
    print("comparison; round 2 runs ours through the CLI by the page-LSN scan (--no-wal-summaries), rounds 3.. through")
    print("the CLI with the WAL summaries, for the kernel's read counters. Spread: per rep (per round for the read rows).")
    print(hdr)
    print("-" * len(hdr))
    print_ratio_rows(inc["ratios"])
    print(f"  paths taken by our incrementals: {', '.join(inc.get('read_path') or [])}")
    print()
    print("Incremental medians (min..max)")
    si = inc["summary"]
    mb = lambda v: v / MB  # noqa: E731
    line("incr ours, round 1 (SQL)", si["ours_round1_sql"]["seconds"], unit="s")
    line("incr ours, rounds 2.. (CLI)", si["ours_rounds_cli"]["seconds"], unit="s")
    line("incr pgbackrest, round 1", si["pgbackrest_round1"]["seconds"], unit="s")
    line("incr ours stored, round 1", si["ours_round1_sql"]["stored_bytes"], mb, "MB", 1)
    line("incr pgbackrest stored, round 1", si["pgbackrest_round1"]["stored_bytes"], mb, "MB", 1)
    line("incr pgbackrest changed files (delta), round 1", si["pgbackrest_round1"]["delta_bytes"], mb, "MB", 1)
    line("incr ours changed blocks, round 1", si["ours_round1_sql"]["changed_blocks"], digits=0)
    line("databases (sum of pg_database_size)", si["change"]["database_bytes"], mb, "MB", 1)
    line("incr ours read, own count (all rounds)",
         spread([r["bytes_read"] for r in inc["raw"]["ours"]]), mb, "MB", 1)
    line("incr ours rchar (CLI rounds)", si["ours_rounds_cli"]["rchar"], mb, "MB", 1)
    line("incr ours read_bytes from disk (CLI rounds)", si["ours_rounds_cli"]["read_bytes"], mb, "MB", 1)
    line("incr pgbackrest rchar (all rounds)", si["pgbackrest_all"]["rchar"], mb, "MB", 1)
    line("incr ours peak RSS, CLI", si["ours_rounds_cli"]["peak_rss_kb"], lambda v: v / 1024, "MB", 1)
    line("incr ours worker VmHWM, SQL", si["ours_round1_sql"]["worker_vmhwm_kb"], lambda v: v / 1024, "MB", 1)
    line("full of the state after the chain", si["full_after_chain"]["seconds"], unit="s")
    line(f"restore ours, full + {n} incr", si["restore_chain"]["seconds"], unit="s")
    line("restore ours, full of the same state", si["restore_full"]["seconds"], unit="s")
    line(f"restore pgbackrest, full + {n} incr", si["restore_pgbackrest_chain"]["seconds"], unit="s")
    print()


def plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001 -- optional
        log(f"no plot: matplotlib unavailable ({e})")
        return False
    ratios = results["ratios"]
    rss = results["rss"]
    inc = results.get("incremental") or {}
    incr = [] if inc.get("skipped") else inc.get("ratios", [])
    width = 3 + 1.05 * max(len(ratios) + len(rss), len(incr))
    fig = plt.figure(figsize=(width, 13 if incr else 7))
    gs = fig.add_gridspec(2 if incr else 1, 2, width_ratios=[len(ratios), len(rss) + 0.6])
    ax1, ax2 = fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[0, 1])

    def colour(met):
        return {True: "#3a923a", False: "#c8423b", None: "#7f8c9a"}[met]

    def bars(ax, rows, ylabel, title):
        xs = range(len(rows))
        vals = [r["value"] or 0 for r in rows]
        lo = [max(0.0, (r["value"] or 0) - (r["min"] if r["min"] is not None else r["value"] or 0)) for r in rows]
        hi = [max(0.0, (r["max"] if r["max"] is not None else r["value"] or 0) - (r["value"] or 0)) for r in rows]
        ax.bar(xs, vals, color=[colour(r["target_met"]) for r in rows], width=0.6, yerr=[lo, hi], capsize=4,
               ecolor="#333333")
        top = max([v for v in vals] + [r["target"] or 0 for r in rows] + [1.0]) * 1.18
        for x, r, v in zip(xs, rows, vals):
            if r["target"] is not None:
                ax.hlines(r["target"], x - 0.42, x + 0.42, colors="#1f4e9c", linestyles="--", linewidth=2)
                ax.text(x, r["target"] + top * 0.008, f"target {'≤' if r['better'] == 'lower' else '≥'} {r['target']:g}",
                        va="bottom", ha="center", fontsize=7, color="#1f4e9c",
                        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
            ax.text(x + 0.05, v + top * 0.01, f"{v:.2f}" if v < 100 else f"{v:.0f}", ha="left", va="bottom", fontsize=9,
                    fontweight="bold")
        ax.set_xticks(list(xs))
        ax.set_xticklabels([textwrap.fill(r["label"], 16) + f"\n({r['better']} better)" for r in rows], fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, top)
        ax.set_title(title, fontsize=11)

    bars(ax1, ratios, "ours / theirs", "Ratios (median; whiskers: per-rep min..max)")
    ax1.axhline(1.0, color="#999999", linewidth=0.8)
    bars(ax2, [dict(r, label=r["label"].replace(" (MB)", "")) for r in rss], "MB", "Our peak RSS (max over samples)")
    if incr:
        ax3 = fig.add_subplot(gs[1, :])
        bars(ax3, incr, "ratio", f"Incremental backups: full + {inc['rounds']} incrementals, 1 % of the rows changed "
                                 "each (median; whiskers: min..max)")
        ax3.axhline(1.0, color="#999999", linewidth=0.8)
    p = results["params"]
    fig.suptitle(f"pg_backup_ext benchmark — pgbench scale {p['scale']}, {p['rows']:,} md5 rows, "
                 f"{p['reps']} rep(s), {p['wal_segments']} WAL segments, {p['workers']} workers — "
                 f"{results['started_at']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_results(results, ts, latest):
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{ts}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    if latest:
        shutil.copyfile(path, os.path.join(RESULTS_DIR, "latest.json"))
    return path


# ---------------------------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(description="pg_backup_ext vs pgBackRest vs pg_basebackup (see bench/README.md)")
    ap.add_argument("--scale", type=int, default=env_int("BENCH_SCALE", 50), help="pgbench scale (env BENCH_SCALE, 50)")
    ap.add_argument("--rows", type=int, default=env_int("BENCH_ROWS", 4_000_000),
                    help="rows of the md5 table (env BENCH_ROWS, 4000000)")
    ap.add_argument("--reps", type=int, default=env_int("BENCH_REPS", 3), help="repetitions (env BENCH_REPS, 3)")
    ap.add_argument("--wal-segments", type=int, default=env_int("BENCH_WAL_SEGMENTS", 64),
                    help="WAL segments per archiving run (env BENCH_WAL_SEGMENTS, 64)")
    ap.add_argument("--workers", type=int, default=env_int("BENCH_WORKERS", 2),
                    help="backup.workers / pgBackRest process-max / restore --workers (env BENCH_WORKERS, 2)")
    ap.add_argument("--workdir", default=os.environ.get("BENCH_DIR", "/tmp/pg_backup_bench"),
                    help="scratch directory, wiped first (env BENCH_DIR, /tmp/pg_backup_bench)")
    ap.add_argument("--port", type=int, default=env_int("BENCH_PORT", 55431), help="cluster port (env BENCH_PORT)")
    ap.add_argument("--timeout", type=int, default=env_int("BENCH_TIMEOUT", 7200),
                    help="seconds any one step may take (env BENCH_TIMEOUT, 7200)")
    ap.add_argument("--wal-archiver", default=os.environ.get("WAL_ARCHIVER"), help="wal-archiver binary (default: PATH)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory afterwards")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG")
    ap.add_argument("--no-incremental", action="store_true",
                    help="skip the incremental-backup section (5 incrementals per rep, two restores)")
    a = ap.parse_args(argv)
    if a.reps < 1 or a.wal_segments < 1 or a.scale < 1 or a.rows < 0 or a.workers < 1:
        ap.error("scale, reps, wal-segments and workers must be positive")
    return a


def main(argv):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    ts = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    bench = Bench(args)
    p = bench.results["params"]
    log(f"benchmark: scale {p['scale']}, {p['rows']:,} md5 rows, {p['reps']} rep(s), "
        f"{p['wal_segments']} WAL segments, {p['workers']} workers")
    ok = False
    try:
        with free_pages_held() as held:
            bench.results["free_page_reporting"] = held
            bench.run_all()
        ok = True
    except (BenchError, KeyboardInterrupt, Terminated) as e:
        bench.results["status"] = "failed"
        bench.results["error"] = str(e) or type(e).__name__
        log(f"FAILED: {bench.results['error']}")
    except Exception as e:
        bench.results["status"] = "failed"
        bench.results["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        try:
            bench.cleanup(ok)
        finally:
            bench.results["finished_at"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
            bench.results["elapsed_s"] = round(time.monotonic() - T_START, 1)
            if ok:
                bench.results["status"] = "ok"
            try:
                analyse(bench.results)
            except Exception as e:  # noqa: BLE001 -- partial results still get written
                bench.results["analysis_error"] = f"{type(e).__name__}: {e}"
            path = write_results(bench.results, ts, latest=ok)
            log(f"results: {path}" + (f" (and {os.path.join(RESULTS_DIR, 'latest.json')})" if ok else " (failed run)"))
    if "ratios" in bench.results:
        print_tables(bench.results)
    if ok and not args.no_plot:
        png = os.path.join(RESULTS_DIR, "latest.png")
        if plot(bench.results, png):
            shutil.copyfile(png, os.path.join(RESULTS_DIR, f"{ts}.png"))
            log(f"chart: {png}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
