"""Starting and stopping the test bed's processes, safely, by recorded PID.

Every process runs in a process group of its own, so stopping one stops its children. A PID is
recorded with its start time (from /proc): a recycled PID is never signalled.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has already exited
        return None
    return int(fields[19])


@dataclass(frozen=True)
class Proc:
    name: str
    pid: int
    started: int  # /proc start time, to tell our process from a recycled PID

    def alive(self) -> bool:
        return start_time(self.pid) == self.started

    def as_dict(self) -> dict[str, int | str]:
        return {"name": self.name, "pid": self.pid, "started": self.started}

    @staticmethod
    def from_dict(d: dict[str, int | str]) -> Proc:
        return Proc(str(d["name"]), int(d["pid"]), int(d["started"]))


def spawn(
    name: str,
    argv: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        p = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,  # own process group: signal the group, reach the children
        )
    started = start_time(p.pid)
    if started is None:
        raise RuntimeError(f"{name} exited at once; see {log}")
    return Proc(name, p.pid, started)


def _signal_group(proc: Proc, sig: signal.Signals) -> None:
    if not proc.alive():
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def stop(procs: list[Proc], grace: float) -> None:
    """SIGTERM every group, wait up to `grace` seconds for all to exit, then SIGKILL."""
    for p in procs:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(p.alive() for p in procs):
        _reap()
        time.sleep(0.1)
    for p in procs:
        _signal_group(p, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(p.alive() for p in procs):
        _reap()
        time.sleep(0.05)


def _reap() -> None:
    """Collect exited children of this process so they do not linger as zombies."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def log_tail(log: Path, lines: int = 40) -> str:
    try:
        return "".join(log.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return "(no log)"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def log(msg: str) -> None:
    """One line of a test bed process's log (the launcher's), with a UTC timestamp."""
    print(f"{now_iso()} {msg}", flush=True)
