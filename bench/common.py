"""What the benchmark harnesses (bench.py, remote.py) share: the log line, environment knobs,
a clean stop on SIGTERM/SIGHUP, and the settled machine every timed step starts from."""

import contextlib

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


# Free page reporting (virtio-balloon): the guest hands free memory back to the host; with
# this knob at 0 it does so at once, and every page the next step allocates (page cache for
# the files it writes) is then a fault served by the host. Measured on this kind of machine
# (bench/README.md, "Settling"): recoveries of the same WAL by the same tool took 5.4-15.8 s
# with it at 0 (system time 1.7-11 s, falling through the run), 5.3-5.7 s with it held.
PAGE_REPORTING_HOLD = "/sys/module/page_reporting/parameters/min_free_ms"


@contextlib.contextmanager
def free_pages_held(hold_ms=300_000):
    """While the benchmark runs, freed memory stays with the guest for `hold_ms` (the knob's
    maximum is 300 s) before it is reported to the host, so that no step pays for the previous
    step's deletions in page faults; the setting is put back afterwards. Yields what was done,
    for the results (None where the machine has no such knob, or it cannot be set)."""
    try:
        with open(PAGE_REPORTING_HOLD) as f:
            before = f.read().strip()
        with open(PAGE_REPORTING_HOLD, "w") as f:
            f.write(str(hold_ms))
    except OSError as e:
        if os.path.exists(PAGE_REPORTING_HOLD):
            log(f"free page reporting NOT held ({PAGE_REPORTING_HOLD}: {e}): figures may swing with memory churn")
        yield None
        return
    log(f"free page reporting held: {PAGE_REPORTING_HOLD} {before} -> {hold_ms} for the run")
    try:
        yield {"knob": PAGE_REPORTING_HOLD, "was": before, "held_ms": hold_ms}
    finally:
        with open(PAGE_REPORTING_HOLD, "w") as f:
            f.write(before)
