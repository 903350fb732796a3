"""What the app costs while nothing happens: wakeups, CPU and memory of the monitor and of the tray.

    python bench/bench_idle.py [--seconds S] [--only monitor,xembed,sni]

Runs, at the same time and each against its own stand-in Ollama, at the
default 30 s health-check interval (5 s timeout), gateway off and no
dashboard open, with the model not built (the checks are API probes, as in
``bench_supervisor.py`` and ``bench_tray.py``):

- ``monitor``: ``ollama-manager monitor``;
- ``xembed``: the tray (``python -m tray``), pystray's xorg backend docked in
  tint2 under Xvfb + openbox, no session bus;
- ``sni``: the tray as a StatusNotifierItem in xfce4-panel under Xvfb +
  openbox, on a private session bus.

Once Ollama is healthy, each process is watched for S seconds (default 300):
every 0.25 s the bench reads, from ``/proc/<pid>/task/*/``, the context
switches of all its threads (voluntary + involuntary: every time a thread
woke, or was preempted) and their CPU time (``schedstat``, in ns), and every
second its RSS. The checks' times come from the samples the app records in
its history, one per check. Reported:

- wakeups per second *between* checks: the context switches over the
  stretches from 1.5 s after one check to 0.5 s before the next, divided by
  their length;
- the wakeups and CPU time of one check (median over the checks, from 0.5 s
  before its sample to 1.5 s after);
- CPU % of one core over the whole S seconds (``psutil`` user + system time,
  which counts threads that ended too) and RSS mean / max;
- the RSS floor: a bare interpreter, in the same environment, importing every
  library module the process loaded (the process runs with
  ``PYTHONPROFILEIMPORTTIME=1``; the import lines name them; ``tray`` itself
  left out), measured in the same run, and the RSS above it;
- the machine: a fixed piece of pure-Python work, in a process of its own,
  timed back to back and after sleeping one interval (30 s), at the same time.
  On a virtual machine whose cores slow down while idle, a check after 30 s
  asleep costs many times its work; this line says how many.

Needs, for the trays, Xvfb, openbox, tint2, ImageMagick, xfce4-panel and
D-Bus (``apt-get install -y xvfb openbox tint2 imagemagick xfce4-panel dbus-x11``).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from standin.harness import StandinEnv  # noqa: E402
from tests.support.manager import Manager, wait_until  # noqa: E402
from tests.support.tray_driver import NotificationLog, TrayProcess, tray_env  # noqa: E402
from tests.support.xdesktop import XDesktop, XfceDesktop, missing_tools, missing_xfce_tools  # noqa: E402

LOOK_EVERY = 0.25
BEFORE_CHECK = 0.5  # a check's work starts at most this long before the sample it records
AFTER_CHECK = 1.5  # and ends (status delivered, icon redrawn) at most this long after it
SETTLE_SECONDS = 5.0  # after Ollama is first healthy: the start-up checks and the first redraws end
DEFAULT_INTERVALS = {
    "OLLAMA_MANAGER_HEALTH_CHECK_INTERVAL": "30",
    "OLLAMA_MANAGER_HEALTH_CHECK_TIMEOUT": "5",
    "PYTHONPROFILEIMPORTTIME": "1",
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),  # this checkout's tray
}
FLOOR_SCRIPT = """
import importlib, sys
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except BaseException:
        pass
print("imported", flush=True)
sys.stdin.read()
"""


@dataclass(frozen=True)
class Look:
    """One reading of a process: wall time, context switches and CPU ns summed over its threads."""

    at: float
    switches: int
    cpu_ns: int


@dataclass(frozen=True)
class Figures:
    name: str
    seconds: float
    checks: int
    wakeups_between: float  # per second
    between_seconds: float
    check_wakeups: float  # median per check
    check_cpu_ms: float  # median per check
    cpu_percent: float
    rss_mean_mib: float
    rss_max_mib: float
    floor_mib: float
    code_mib: float  # what importing the app's own modules adds to the floor
    libraries: int
    threads: int

    def lines(self) -> list[str]:
        above = self.rss_mean_mib - self.floor_mib
        return [
            f"[{self.name}] between checks: {self.wakeups_between:.3f} wakeups/s over {self.between_seconds:.0f} s; "
            f"one check: {self.check_wakeups:.0f} wakeups, {self.check_cpu_ms:.1f} ms CPU (median of {self.checks})",
            f"[{self.name}] over {self.seconds:.0f} s at a 30 s interval: CPU {self.cpu_percent:.3f} % of one core, "
            f"RSS {self.rss_mean_mib:.1f} MiB mean / {self.rss_max_mib:.1f} MiB max, {self.threads} threads",
            f"[{self.name}] RSS floor (bare interpreter importing the {self.libraries} library modules it loaded): "
            f"{self.floor_mib:.1f} MiB; the process is {above:+.1f} MiB above it "
            f"(importing the app's own modules adds {self.code_mib:.1f} MiB)",
        ]


def thread_counters(pid: int) -> tuple[int, int]:
    """(context switches, CPU ns) summed over the live threads of ``pid``."""
    switches = cpu_ns = 0
    task_dir = f"/proc/{pid}/task"
    for tid in os.listdir(task_dir):
        try:
            with open(f"{task_dir}/{tid}/status") as status:
                for line in status:
                    if "ctxt_switches:" in line:
                        switches += int(line.split()[1])
            with open(f"{task_dir}/{tid}/schedstat") as schedstat:
                cpu_ns += int(schedstat.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return switches, cpu_ns


def look(pid: int) -> Look:
    at = time.time()
    switches, cpu_ns = thread_counters(pid)
    return Look(at, switches, cpu_ns)


def first_at_or_after(looks: Sequence[Look], when: float) -> int | None:
    """The index of the first look taken at or after ``when``.

    >>> first_at_or_after([Look(1, 0, 0), Look(2, 0, 0)], 1.5), first_at_or_after([Look(1, 0, 0)], 3)
    (1, None)
    """
    return next((index for index, one in enumerate(looks) if one.at >= when), None)


def last_at_or_before(looks: Sequence[Look], when: float) -> int | None:
    """The index of the last look taken at or before ``when``.

    >>> last_at_or_before([Look(1, 0, 0), Look(2, 0, 0)], 1.5), last_at_or_before([Look(1, 0, 0)], 0)
    (0, None)
    """
    found = None
    for index, one in enumerate(looks):
        if one.at > when:
            break
        found = index
    return found


def quiet_spans(start: float, end: float, checks: Iterable[float]) -> list[tuple[float, float]]:
    """The stretches of [start, end] with no check's work in them.

    >>> quiet_spans(0, 100, [10, 40])
    [(0, 9.5), (11.5, 39.5), (41.5, 100)]
    """
    spans: list[tuple[float, float]] = []
    begin = start
    for check in sorted(checks):
        if check - BEFORE_CHECK > begin:
            spans.append((begin, check - BEFORE_CHECK))
        begin = max(begin, check + AFTER_CHECK)
    if end > begin:
        spans.append((begin, end))
    return spans


def between_rate(looks: Sequence[Look], checks: Sequence[float]) -> tuple[float, float]:
    """(context switches per second, seconds covered) over the stretches between checks.

    >>> looks = [Look(t, t * 2 if t < 10 else 100 + t * 2, 0) for t in range(0, 31)]
    >>> between_rate(looks, [10.0])
    (2.0, 26.0)
    """
    switches, seconds = 0, 0.0
    for begin, end in quiet_spans(looks[0].at, looks[-1].at, checks):
        first, last = first_at_or_after(looks, begin), last_at_or_before(looks, end)
        if first is None or last is None or last <= first:
            continue
        switches += looks[last].switches - looks[first].switches
        seconds += looks[last].at - looks[first].at
    return (switches / seconds if seconds else float("nan")), seconds


def check_costs(looks: Sequence[Look], checks: Iterable[float]) -> list[tuple[int, float]]:
    """(context switches, CPU ms) of each check wholly inside the looks.

    >>> check_costs([Look(0, 0, 0), Look(9, 1, 0), Look(10, 4, 3_000_000), Look(12, 5, 4_000_000)], [10])
    [(4, 4.0)]
    """
    costs = []
    for check in checks:
        before, after = last_at_or_before(looks, check - BEFORE_CHECK), first_at_or_after(looks, check + AFTER_CHECK)
        if before is None or after is None:
            continue
        start, end = looks[before], looks[after]
        costs.append((end.switches - start.switches, (end.cpu_ns - start.cpu_ns) / 1e6))
    return costs


def imported_modules(import_log: str, own: bool = False) -> list[str]:
    """The modules named by ``-X importtime`` lines, in import order: the libraries, or the app's own (``tray``).

    >>> log = ("import time: self [us] | cumulative | imported package\\n"
    ...        "import time:  12 |  12 |   json.decoder\\nimport time: 3 | 3 | tray.cli\\nother line\\n")
    >>> imported_modules(log), imported_modules(log, own=True)
    (['json.decoder'], ['tray.cli'])
    """
    names: list[str] = []
    for line in import_log.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        name = line.rsplit("|", 1)[1].strip()
        if name in ("imported package", "__main__", "tray.__main__") or name in names:
            continue
        if (name == "tray" or name.startswith("tray.")) == own:
            names.append(name)
    return names


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def import_floor(modules: list[str], env: dict[str, str]) -> float:
    """RSS (MiB) of a bare interpreter that imported ``modules``, in ``env``."""
    clean = {k: v for k, v in env.items() if k != "PYTHONPROFILEIMPORTTIME"}
    floor = subprocess.Popen(
        [sys.executable, "-c", FLOOR_SCRIPT, *modules],
        env=clean,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert floor.stdout is not None
        if floor.stdout.readline().strip() != "imported":
            raise RuntimeError("the floor interpreter did not finish importing")
        time.sleep(0.5)
        return rss_mib(floor.pid)
    finally:
        floor.kill()
        floor.wait(5)


def check_times(history_db: Path, since: float, until: float) -> list[float]:
    """When the app recorded a sample (one per health check) between ``since`` and ``until``."""
    db = sqlite3.connect(f"file:{history_db}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT time FROM samples WHERE span = 0 AND time BETWEEN ? AND ? ORDER BY time", (since, until)
        ).fetchall()
    finally:
        db.close()
    return [float(row[0]) for row in rows]


def watch(name: str, pid: int, history_db: Path, seconds: float, import_log: Callable[[], str], env: dict[str, str]):
    """Watch ``pid`` for ``seconds``; its figures."""
    process = psutil.Process(pid)
    looks = [look(pid)]
    cpu_before = process.cpu_times()
    started = time.monotonic()
    rss: list[float] = []
    next_rss = started
    while time.monotonic() - started < seconds:
        time.sleep(LOOK_EVERY)
        looks.append(look(pid))
        if time.monotonic() >= next_rss:
            rss.append(rss_mib(pid))
            next_rss += 1.0
    cpu_after = process.cpu_times()
    wall = time.monotonic() - started
    threads = process.num_threads()
    checks = check_times(history_db, looks[0].at - 60, looks[-1].at + 60)
    rate, between = between_rate(looks, checks)
    costs = check_costs(looks, [c for c in checks if looks[0].at <= c <= looks[-1].at])
    modules = imported_modules(import_log())
    floor = import_floor(modules, env)
    with_code = import_floor(modules + imported_modules(import_log(), own=True), env)
    cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    return Figures(
        name=name,
        seconds=wall,
        checks=len(costs),
        wakeups_between=rate,
        between_seconds=between,
        check_wakeups=statistics.median(c[0] for c in costs) if costs else float("nan"),
        check_cpu_ms=statistics.median(c[1] for c in costs) if costs else float("nan"),
        cpu_percent=100.0 * cpu / wall,
        rss_mean_mib=statistics.mean(rss),
        rss_max_mib=max(rss),
        floor_mib=floor,
        code_mib=with_code - floor,
        libraries=len(modules),
        threads=threads,
    )


# A fixed piece of pure-Python work (no I/O, no new memory), timed back to back and after sleeping one health-check
# interval, in a process of its own: what waking from such a sleep costs any Python process on this machine.
COLD_WORK = """
import json, resource, sys, time
sleep, rounds = float(sys.argv[1]), int(sys.argv[2])
data = [{"k%d" % i: list(range(20)), "s": "x" * 50} for i in range(20000)]
def work():
    return sum(len(d) for d in data), json.dumps(data[:2000])
def cpu_ms():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (usage.ru_utime + usage.ru_stime) * 1000
def timed():
    before = cpu_ms()
    work()
    return cpu_ms() - before
for _ in range(5):
    work()
warm = sorted(timed() for _ in range(rounds))
cold = []
for _ in range(rounds):
    time.sleep(sleep)
    cold.append(timed())
cold.sort()
print(warm[len(warm) // 2], cold[len(cold) // 2], rounds)
"""


def machine_line(seconds: float, interval: float) -> str:
    """The cost of waking after ``interval`` seconds asleep, on this machine, over about ``seconds``."""
    rounds = max(1, int(seconds // interval) - 1)
    done = subprocess.run(
        [sys.executable, "-c", COLD_WORK, str(interval), str(rounds)],
        capture_output=True, text=True, check=True, timeout=seconds + 120,
    )  # fmt: skip
    warm, cold, rounds = (float(v) for v in done.stdout.split())
    return (
        f"[machine] a fixed piece of Python work: {warm:.1f} ms CPU back to back, {cold:.1f} ms after "
        f"{interval:g} s asleep ({cold / warm:.0f}x; median of {rounds:.0f}): checks at this interval pay that too"
    )


def history_db_of(env: dict[str, str]) -> Path:
    return Path(env["XDG_DATA_HOME"]) / "ollama-manager" / "history.sqlite3"


def healthy(manager: Manager) -> bool:
    status = manager.api_status()
    return bool(status and status["health"] == "healthy")


def bench_monitor(workdir: Path, seconds: float) -> Figures:
    standin = StandinEnv(workdir)
    manager = Manager(standin.env, workdir)
    manager.env.update(DEFAULT_INTERVALS)
    try:
        monitor = manager.spawn_monitor()
        wait_until(lambda: healthy(manager), 60, what="a healthy Ollama")
        time.sleep(SETTLE_SECONDS)
        return watch("monitor", monitor.pid, history_db_of(manager.env), seconds, manager.monitor_log, manager.env)
    finally:
        manager.cleanup()
        standin.cleanup()


def bench_tray(name: str, workdir: Path, seconds: float) -> Figures:
    kind = XDesktop if name == "xembed" else XfceDesktop
    with kind(workdir / "desktop") as desktop:
        standin = StandinEnv(workdir / "ollama")
        manager = Manager(standin.env, workdir)
        manager.env.update(DEFAULT_INTERVALS)
        bus_address = desktop.bus.address if desktop.bus is not None else "disabled:"
        env = tray_env(manager.env, desktop.display, NotificationLog(workdir), bus_address=bus_address)
        tray = TrayProcess(env, workdir).start()
        try:
            wait_until(lambda: healthy(manager), 60, what="a healthy Ollama")
            time.sleep(SETTLE_SECONDS)
            return watch(name, tray.pid, history_db_of(env), seconds, tray.output, env)
        finally:
            tray.stop()
            standin.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300, help="how long to watch each process (default 300)")
    parser.add_argument("--only", default="monitor,xembed,sni", help="which of monitor,xembed,sni (default all)")
    args = parser.parse_args()
    targets = [name.strip() for name in args.only.split(",") if name.strip()]
    missing = (missing_tools() if "xembed" in targets else []) + (missing_xfce_tools() if "sni" in targets else [])
    if missing:
        print(f"bench_idle: needs {', '.join(sorted(set(missing)))}", file=sys.stderr)
        return 1
    results: dict[str, Figures | BaseException] = {}
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:

        def run(name: str) -> None:
            workdir = Path(tmp) / name
            workdir.mkdir()
            try:
                if name == "monitor":
                    results[name] = bench_monitor(workdir, args.seconds)
                else:
                    results[name] = bench_tray(name, workdir, args.seconds)
            except BaseException as exc:  # noqa: BLE001 - reported below
                results[name] = exc

        machine: list[str] = []
        interval = float(DEFAULT_INTERVALS["OLLAMA_MANAGER_HEALTH_CHECK_INTERVAL"])
        threads = [threading.Thread(target=run, args=(name,)) for name in targets]
        threads.append(threading.Thread(target=lambda: machine.append(machine_line(args.seconds, interval))))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    print(f"idle bench: {args.seconds:.0f} s per process, 30 s interval, gateway off, no dashboard open")
    failed = False
    for name in targets:
        result = results[name]
        if isinstance(result, BaseException):
            print(f"[{name}] failed: {type(result).__name__}: {result}")
            failed = True
        else:
            print("\n".join(result.lines()))
    print("\n".join(machine) or "[machine] the reference work failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
