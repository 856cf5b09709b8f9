#!/usr/bin/env python3
"""Backup to and restore from an S3 repository (moto on loopback): wall time, TCP connections,
threads started and peak RSS, for one or more wal-archiver binaries, and pgBackRest on the
same cluster and the same emulator.

    python3 bench/s3_restore.py                                    # target/release/wal-archiver
    python3 bench/s3_restore.py --binary before=/tmp/wa.old --binary after=target/release/wal-archiver
    python3 bench/s3_restore.py --scale 3 --reps 3 --no-pgbackrest

Needs root (runuser to the OS user postgres), PostgreSQL 15, strace, GNU time, moto
(/opt/pg_backup_ext-test/venv/bin/moto_server or MOTO_SERVER) and, unless --no-pgbackrest,
pgbackrest and openssl. Everything lives under --workdir (wiped at start, removed at the end
unless --keep).

For each binary: a full backup (`wal-archiver backup`) timed under /usr/bin/time, a second
one under strace (connections and thread starts are counted from the trace, not timed), then
--reps restores of the first backup timed under /usr/bin/time and one more under strace. Every
binary gets its own prefix in the bucket and the cluster's archive_command is switched to it
before its backups, so each repository holds the WAL its backups need.

pgBackRest 2.45 speaks only HTTPS to S3, and OpenSSL 3 rejects moto's own TLS server, so it
reaches moto through a keep-alive TLS relay (see Relay; a self-signed certificate made here,
repo1-storage-verify-tls=n). moto closes every connection after one response: without --relay
every request of ours is a connection, with --relay ours goes through the same kind of relay
(plain HTTP) and the connections counted are those our client opens.
Its backup: --type=full, zstd 3, aes-256-cbc, process-max = --workers, start-fast.
Its restore: --type=immediate --archive-mode=off into an empty directory.

Connections are the connect() calls to the emulator's port; threads are clone/clone3 calls
with CLONE_THREAD (strace -f --seccomp-bpf, so untraced system calls run at full speed).
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

PG_BIN = "/usr/lib/postgresql/15/bin"
PG_USER = "postgres"
MOTO = os.environ.get("MOTO_SERVER", "/opt/pg_backup_ext-test/venv/bin/moto_server")
BUCKET = "bench"


class Failed(SystemExit):
    """A command failed or a wait ran out: the message says which. A SystemExit, so that this
    script still prints the message and exits 1; bench/remote.py catches it and goes on."""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise Failed(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Relay:
    """An HTTP/1.1 front for moto that keeps client connections alive (and can speak TLS).

    moto's server answers every request with `Connection: close`, so against moto alone every
    request is a new connection whatever the client does, and a client's connection pooling
    cannot be seen. The relay forwards each request to moto over a connection of its own and
    hands the answer back on the client's connection, kept open: the connections counted on
    the relay's port are the client's own. With TLS it also gives pgBackRest (HTTPS only) a
    server that ends its TLS sessions cleanly (OpenSSL 3 rejects moto's own TLS: "unexpected
    eof while reading"). It costs each request a hop through Python, the same for every tool.
    """

    def __init__(self, target, cert=None, key=None):
        import asyncio
        import ssl
        import threading

        self.target = target
        self.port = free_port()
        context = None
        if cert:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve():
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(asyncio.start_server(self.handle, "127.0.0.1", self.port, ssl=context))
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=serve, daemon=True).start()
        ready.wait()

    async def handle(self, reader, writer):
        import asyncio

        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head[:-4].split(b"\r\n")
                method = lines[0].split(b" ")[0]
                length, expect, forward = 0, False, [lines[0]]
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value.strip())
                    if name == b"expect":
                        expect = True
                        continue
                    if name == b"transfer-encoding":
                        raise RuntimeError("relay: chunked request bodies are not supported")
                    forward.append(line)
                if expect:
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = await reader.readexactly(length)
                up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
                up_w.write(b"\r\n".join(forward) + b"\r\n\r\n" + body)
                await up_w.drain()
                response = await up_r.read()
                up_w.close()
                at = response.index(b"\r\n\r\n")
                rlines, rbody = response[:at].split(b"\r\n"), response[at + 4:]
                status = int(rlines[0].split(b" ")[1])
                keep = [line for line in rlines[1:] if not line.lower().startswith(b"connection:")]
                framed = any(line.lower().startswith((b"content-length:", b"transfer-encoding:")) for line in keep)
                if not framed and method != b"HEAD" and status not in (204, 304):
                    keep.append(b"Content-Length: %d" % len(rbody))
                writer.write(b"\r\n".join([rlines[0]] + keep) + b"\r\n\r\n" + rbody)
                await writer.drain()
        finally:
            writer.close()

    def close(self):
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


def run(cmd, as_pg=False, check=True, env=None, timeout=3600):
    full = (["runuser", "-u", PG_USER, "--"] if as_pg else []) + cmd
    p = subprocess.run(full, capture_output=True, text=True, env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise Failed(f"failed ({p.returncode}): {' '.join(full)}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def gnu_time(stderr):
    """Wall seconds and peak RSS (KiB) from /usr/bin/time -v output."""
    wall = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):([\d.]+)", stderr)
    h, m, s = wall.groups()
    secs = int(h or 0) * 3600 + int(m) * 60 + float(s)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1))
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", stderr).group(1))
    system = float(re.search(r"System time \(seconds\): ([\d.]+)", stderr).group(1))
    return {"wall_s": round(secs, 2), "cpu_s": round(user + system, 2), "user_s": user, "sys_s": system,
            "peak_rss_mib": round(rss / 1024, 1)}


def timed(cmd, as_pg=True):
    p = run(["/usr/bin/time", "-v"] + cmd, as_pg=as_pg)
    return gnu_time(p.stderr), p


def traced(cmd, port, trace_file, as_pg=True):
    """Run under strace; count connections to `port` and threads started."""
    if os.path.exists(trace_file):
        os.remove(trace_file)
    strace = ["strace", "-f", "-tt", "-T", "--seccomp-bpf", "-e", "trace=connect,clone,clone3,syncfs,execve,exit_group", "-o", trace_file]
    # strace runs as root and traces runuser's child: keeps the traced program's credentials.
    p = run(strace + (["runuser", "-u", PG_USER, "--"] if as_pg else []) + cmd)
    connects = threads = 0
    with open(trace_file) as f:
        for line in f:
            if "connect(" in line and f"sin_port=htons({port})" in line:
                connects += 1
            elif ("clone(" in line or "clone3(" in line) and "CLONE_THREAD" in line and "resumed" not in line:
                threads += 1
    return {"connects": connects, "threads_started": threads}, p


# -- shared with bench/remote.py ------------------------------------------------------------

def start_moto(log_path, tmpdir=None):
    """moto_server on a free loopback port, with the bucket BUCKET created: (process, port).
    tmpdir: where moto spills objects larger than its in-memory buffer (~5 MiB), as TMPDIR."""
    import urllib.request

    port = free_port()
    env = dict(os.environ)
    if tmpdir:
        os.makedirs(tmpdir, exist_ok=True)
        env["TMPDIR"] = tmpdir
    log = open(log_path, "w")
    proc = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env)
    log.close()
    try:
        wait_port(port)
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/{BUCKET}", method="PUT"), timeout=30).close()
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    return proc, port


def self_signed_cert(directory):
    """A certificate for 127.0.0.1 and its key, for the TLS relay: (cert, key)."""
    cert, key = f"{directory}/relay.crt", f"{directory}/relay.key"
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])
    return cert, key


def ours_s3_conf(key_file, port, prefix, extra=""):
    """wal-archiver configuration: one S3 repository (the primary) under `prefix` of BUCKET,
    reached over plain HTTP at 127.0.0.1:port (moto, or a relay in front of it)."""
    return (f'key_file = "{key_file}"\n{extra}\n[[repos]]\nname = "s3"\ntype = "s3"\nbucket = "{BUCKET}"\nprefix = "{prefix}"\n'
            f'region = "us-east-1"\nendpoint = "http://127.0.0.1:{port}"\nforce_path_style = true\n'
            'access_key_id = "x"\nsecret_access_key = "y"\n')


def pgbackrest_s3_conf(port, workers, directory, stanzas, extra=""):
    """pgBackRest configuration: repo1 in BUCKET at /pgbr over HTTPS at 127.0.0.1:port (the TLS
    relay, certificate not verified), zstd 3, aes-256-cbc, process-max = workers; log, lock and
    spool under `directory`; `stanzas` maps each stanza's name to its pg1-* options."""
    text = f"""[global]
repo1-type=s3
repo1-s3-endpoint=127.0.0.1
repo1-storage-port={port}
repo1-storage-verify-tls=n
repo1-s3-uri-style=path
repo1-s3-bucket={BUCKET}
repo1-s3-region=us-east-1
repo1-s3-key=x
repo1-s3-key-secret=y
repo1-path=/pgbr
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=benchmark-passphrase
compress-type=zst
compress-level=3
process-max={workers}
start-fast=y
log-path={directory}/log
lock-path={directory}/lock
spool-path={directory}/spool
log-level-console=warn
log-level-file=info
{extra}"""
    for name, options in stanzas.items():
        text += f"\n[{name}]\n" + "".join(f"{k}={v}\n" for k, v in options.items())
    return text


class Bench:
    def __init__(self, args):
        self.a = args
        self.w = os.path.abspath(args.workdir)
        self.procs = []
        self.relays = []
        self.pgdata = f"{self.w}/pgdata"
        self.pgport = free_port()
        self.results = {"scale": args.scale, "random_mb": args.random_mb, "workers": args.workers, "reps": args.reps, "tools": {}}

    def sh_pg(self, cmd, **kw):
        return run(cmd, as_pg=True, **kw)

    def psql(self, sql):
        p = self.sh_pg([f"{PG_BIN}/psql", "-X", "-At", "-h", self.w, "-p", str(self.pgport), "-d", "postgres", "-c", sql])
        return p.stdout.strip()

    def start_moto(self):
        proc, port = start_moto(f"{self.w}/moto.log")
        self.procs.append(proc)
        return port

    def tls_relay(self):
        relay = Relay(self.moto, *self_signed_cert(self.w))
        self.relays.append(relay)
        return relay.port

    def setup(self):
        shutil.rmtree(self.w, ignore_errors=True)
        os.makedirs(self.w)
        os.chmod(self.w, 0o755)
        shutil.chown(self.w, PG_USER, PG_USER)
        self.moto = self.start_moto()
        # Our endpoint: moto itself, or a keep-alive relay in front of it (--relay).
        self.endpoint = self.moto
        if self.a.relay:
            relay = Relay(self.moto)
            self.relays.append(relay)
            self.endpoint = relay.port
        print(f"moto on 127.0.0.1:{self.moto}, wal-archiver's endpoint 127.0.0.1:{self.endpoint}", flush=True)
        self.sh_pg([f"{PG_BIN}/initdb", "-D", self.pgdata, "-U", PG_USER, "--data-checksums"])
        with open(f"{self.pgdata}/postgresql.auto.conf", "a") as f:
            f.write(f"port = {self.pgport}\nunix_socket_directories = '{self.w}'\nlisten_addresses = ''\n"
                    "wal_level = replica\narchive_mode = on\narchive_command = '/bin/true'\n"
                    "max_wal_senders = 4\nshared_buffers = '128MB'\n")
        self.sh_pg([f"{PG_BIN}/pg_ctl", "-D", self.pgdata, "-l", f"{self.w}/pg.log", "-w", "start"])
        self.sh_pg([f"{PG_BIN}/pgbench", "-i", "-s", str(self.a.scale), "-q", "-h", self.w, "-p", str(self.pgport), "postgres"])
        if self.a.random_mb:
            # Random bytes compress about 2:1 (tuple headers do, the payload does not): files
            # large enough for multipart uploads, which pgbench's tables never reach.
            rows = self.a.random_mb * (2**20 // 72)
            self.psql("CREATE TABLE rnd AS SELECT decode(md5(random()::text) || md5(random()::text), 'hex') AS b "
                      f"FROM generate_series(1, {rows})")
        self.psql("CHECKPOINT")
        size = int(self.psql("SELECT sum(pg_database_size(oid)) FROM pg_database"))
        self.results["cluster_mib"] = round(size / 2**20, 1)
        print(f"cluster: {self.results['cluster_mib']} MiB of databases", flush=True)

    def set_archive_command(self, command):
        self.psql(f"ALTER SYSTEM SET archive_command = '{command.replace(chr(39), chr(39) * 2)}'")
        self.psql("SELECT pg_reload_conf()")
        time.sleep(0.5)
        # Every pending segment through the new command before a backup starts.
        self.psql("SELECT pg_switch_wal()")
        deadline = time.time() + 120
        status = f"{self.pgdata}/pg_wal/archive_status"
        while any(n.endswith(".ready") for n in os.listdir(status)):
            if time.time() > deadline:
                sys.exit("archiving does not drain: see pg.log")
            time.sleep(0.2)

    def restore_dir(self, name):
        d = f"{self.w}/{name}"
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d, mode=0o700)
        shutil.chown(d, PG_USER, PG_USER)
        return d

    def ours(self, label, binary):
        print(f"== {label}: {binary}", flush=True)
        d = f"{self.w}/{label}"
        os.makedirs(d)
        bin_copy = f"{d}/wal-archiver"
        shutil.copy(binary, bin_copy)
        conf = f"{d}/wal-archiver.conf"
        key = f"{d}/keys.json"
        shutil.chown(d, PG_USER, PG_USER)
        self.sh_pg([bin_copy, "keygen", "--output", key])
        with open(conf, "w") as f:
            if self.a.local:
                f.write(f'key_file = "{key}"\nrepo_path = "{d}/repo"\n')
            else:
                f.write(ours_s3_conf(key, self.endpoint, label))
        shutil.chown(conf, PG_USER, PG_USER)
        base = [bin_copy, "--config", conf]
        self.sh_pg(base + ["init", "--pgdata", self.pgdata])
        self.set_archive_command(f"{bin_copy} --config {conf} push %p")
        dbname = f"host={self.w} port={self.pgport} user={PG_USER} dbname=postgres"
        backup = base + ["backup", "--pgdata", self.pgdata, "--dbname", dbname, "--workers", str(self.a.workers)]
        r = {"backup": [], "restore": []}
        for _ in range(self.a.reps):
            m, _ = timed(backup)
            r["backup"].append(m)
            print(f"  backup   {m}", flush=True)
        m, _ = traced(backup, self.endpoint, f"{d}/backup.strace")
        r["backup_trace"] = m
        print(f"  backup   {m}", flush=True)
        listing = json.loads(self.sh_pg(base + ["list", "--output", "json"]).stdout)
        backups = listing if isinstance(listing, list) else listing.get("backups", [])
        if not backups:
            sys.exit(f"no backup listed: {listing}")
        backup_id = backups[0]["id"]
        restore = lambda dest: base + ["restore", "--pgdata", dest, "--backup-id", backup_id, "--target", "immediate",
                                       "--archive-mode", "off", "--workers", str(self.a.workers)]
        for _ in range(self.a.reps):
            dest = self.restore_dir("restored")
            m, _ = timed(restore(dest))
            r["restore"].append(m)
            print(f"  restore  {m}", flush=True)
        dest = self.restore_dir("restored")
        m, _ = traced(restore(dest), self.endpoint, f"{d}/restore.strace")
        r["restore_trace"] = m
        print(f"  restore  {m}", flush=True)
        if self.a.check_restore:
            self.check_restored(dest)
        shutil.rmtree(dest, ignore_errors=True)
        self.results["tools"][label] = r

    def check_restored(self, dest):
        """Start the restored copy and count pgbench_accounts rows."""
        port = free_port()
        with open(f"{dest}/postgresql.auto.conf", "a") as f:
            f.write(f"port = {port}\n")
        self.sh_pg([f"{PG_BIN}/pg_ctl", "-D", dest, "-l", f"{self.w}/restored.log", "-w", "-t", "120", "start"])
        try:
            rows = self.sh_pg([f"{PG_BIN}/psql", "-X", "-At", "-h", self.w, "-p", str(port), "-d", "postgres",
                               "-c", "SELECT count(*) FROM pgbench_accounts"]).stdout.strip()
            assert int(rows) == self.a.scale * 100000, rows
            print(f"  restored copy starts; pgbench_accounts has {rows} rows", flush=True)
        finally:
            self.sh_pg([f"{PG_BIN}/pg_ctl", "-D", dest, "-m", "immediate", "-w", "stop"], check=False)

    def pgbackrest(self):
        print("== pgbackrest", flush=True)
        port = self.tls_relay()
        d = f"{self.w}/pgbr"
        os.makedirs(d)
        shutil.chown(d, PG_USER, PG_USER)
        conf = f"{d}/pgbackrest.conf"
        with open(conf, "w") as f:
            f.write(pgbackrest_s3_conf(port, self.a.workers, d, {
                "bench": {"pg1-path": self.pgdata, "pg1-socket-path": self.w, "pg1-port": self.pgport, "pg1-user": PG_USER}}))
        shutil.chown(conf, PG_USER, PG_USER)
        base = ["pgbackrest", f"--config={conf}", "--stanza=bench"]
        self.sh_pg(base + ["stanza-create"])
        self.set_archive_command(f"pgbackrest --config={conf} --stanza=bench archive-push %p")
        r = {"backup": [], "restore": []}
        backup = base + ["backup", "--type=full"]
        for _ in range(self.a.reps):
            m, _ = timed(backup)
            r["backup"].append(m)
            print(f"  backup   {m}", flush=True)
        m, _ = traced(backup, port, f"{d}/backup.strace")
        r["backup_trace"] = m
        print(f"  backup   {m}", flush=True)
        info = json.loads(self.sh_pg(base + ["info", "--output=json"]).stdout)
        label = info[0]["backup"][0]["label"]
        restore = lambda dest: base + ["restore", f"--set={label}", "--type=immediate", "--archive-mode=off", f"--pg1-path={dest}"]
        for _ in range(self.a.reps):
            dest = self.restore_dir("restored-pgbr")
            m, _ = timed(restore(dest))
            r["restore"].append(m)
            print(f"  restore  {m}", flush=True)
        dest = self.restore_dir("restored-pgbr")
        m, _ = traced(restore(dest), port, f"{d}/restore.strace")
        r["restore_trace"] = m
        print(f"  restore  {m}", flush=True)
        shutil.rmtree(dest, ignore_errors=True)
        self.results["tools"]["pgbackrest"] = r

    def summary(self):
        def best(runs, k):
            return min(x[k] for x in runs)

        def peak(runs):
            return max(x["peak_rss_mib"] for x in runs)

        rows = []
        for name, r in self.results["tools"].items():
            for op in ("backup", "restore"):
                t = r[f"{op}_trace"]
                rows.append((name, op, best(r[op], "wall_s"), best(r[op], "cpu_s"), peak(r[op]), t["connects"], t["threads_started"]))
        print(f"\nscale {self.a.scale}, random {self.a.random_mb} MiB ({self.results['cluster_mib']} MiB), workers {self.a.workers}, best of {self.a.reps}")
        print(f"{'tool':<14}{'op':<9}{'wall s':>8}{'cpu s':>8}{'rss MiB':>9}{'connects':>10}{'threads':>9}")
        for row in rows:
            print(f"{row[0]:<14}{row[1]:<9}{row[2]:>8.2f}{row[3]:>8.2f}{row[4]:>9.1f}{row[5]:>10}{row[6]:>9}")
        tools = self.results["tools"]
        if "pgbackrest" in tools:
            for name in tools:
                if name == "pgbackrest":
                    continue
                for op in ("backup", "restore"):
                    ratio = best(tools[name][op], "wall_s") / best(tools["pgbackrest"][op], "wall_s")
                    print(f"{name} / pgbackrest {op} wall: {ratio:.2f}")
        with open(self.a.json, "w") as f:
            json.dump(self.results, f, indent=2)
        print(f"results: {self.a.json}")

    def close(self):
        if os.path.exists(f"{self.pgdata}/postmaster.pid"):
            # Immediate: a failing archive_command would hold a fast shutdown forever.
            self.sh_pg([f"{PG_BIN}/pg_ctl", "-D", self.pgdata, "-m", "immediate", "-w", "stop"], check=False)
        for r in self.relays:
            r.close()
        for p in self.procs:
            p.terminate()
            p.wait()
        if not self.a.keep:
            shutil.rmtree(self.w, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--binary", action="append", default=[], metavar="[LABEL=]PATH",
                    help="wal-archiver to measure (repeatable); default target/release/wal-archiver")
    ap.add_argument("--scale", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/pg_backup_s3_bench")
    ap.add_argument("--json", default="/tmp/pg_backup_s3_bench.json")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-pgbackrest", dest="pgbackrest", action="store_false")
    ap.add_argument("--random-mb", type=int, default=0, help="add a table of about this many MiB of random bytes")
    ap.add_argument("--relay", action="store_true", help="wal-archiver through a keep-alive relay (see Relay), as pgBackRest")
    ap.add_argument("--local", action="store_true", help="wal-archiver into a local repository instead (a control)")
    ap.add_argument("--check-restore", action="store_true", help="start each restored copy and count rows")
    a = ap.parse_args()
    if os.getuid() != 0:
        sys.exit("run as root (runuser to postgres)")
    binaries = a.binary or [os.path.join(here, "..", "target", "release", "wal-archiver")]
    b = Bench(a)
    try:
        b.setup()
        for i, spec in enumerate(binaries):
            label, _, path = spec.rpartition("=")
            b.ours(label or f"ours{i + 1 if len(binaries) > 1 else ''}", os.path.abspath(path))
        if a.pgbackrest:
            b.pgbackrest()
        b.summary()
    finally:
        b.close()


if __name__ == "__main__":
    main()
