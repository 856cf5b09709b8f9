"""What the benchmark harnesses (bench.py, remote.py) share: the log line, environment knobs,
a clean stop on SIGTERM/SIGHUP, and the settled machine every timed step starts from."""

import os
import time

T_START = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - T_START:8.1f}s] {msg}", flush=True)


def env_int(name, default):
    v = os.environ.get(name)
    return int(v.replace("_", "")) if v else default


def fmt(v, digits=3):
    return "-" if v is None else f"{v:.{digits}f}"


class Terminated(BaseException):
    """SIGTERM / SIGHUP: unwinds through the finally blocks like KeyboardInterrupt."""


def on_signal(signum, _frame):
    raise Terminated(f"signal {signum}")


def settle_machine():
    """The same starting line before every timed step: dirty pages written out (the previous
    step's files, a directory just removed) until Dirty + Writeback in /proc/meminfo stay under
    16 MB, then two seconds of quiet: a bare `sync` and one second left the restore that ran
    first in a rep ~2 s slower than the same restore run second."""
    deadline = time.monotonic() + 60
    while True:
        os.sync()
        mem = {}
        with open("/proc/meminfo") as f:
            for line in f:
                k, v = line.split(":", 1)
                mem[k] = int(v.split()[0])
        if mem.get("Dirty", 0) + mem.get("Writeback", 0) < 16 * 1024 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    time.sleep(2.0)
