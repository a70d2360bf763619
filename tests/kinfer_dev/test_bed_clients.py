"""Clients of the test bed (the demo's operator): bound to the bed they were started against, so
that nothing reuses a process that talks to an API server that is gone. Real processes (`sleep`)
stand in for the bed's components; no cluster is started."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kinfer_dev.testbed import bed
from kinfer_dev.testbed.procs import Proc, start_time, stop


@pytest.fixture
def sleepers() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    popens.clear()
    yield started
    stop(started, grace=1)
    for p in popens:
        p.wait(5)


popens: list[subprocess.Popen[bytes]] = []  # kept so that none is garbage-collected while running


def start(sleepers: list[Proc], name: str, tmp: Path) -> Proc:
    popen = subprocess.Popen(["sleep", "60"], start_new_session=True)
    popens.append(popen)
    started = start_time(popen.pid)
    assert started is not None
    proc = Proc(name, popen.pid, started)
    sleepers.append(proc)
    return proc


def fake_bed(state: Path, sleepers: list[Proc]) -> bed.Bed:
    """A bed.json whose every component is a live process, so Bed.running() is true."""
    state.mkdir(parents=True, exist_ok=True)
    procs = [start(sleepers, name, state).as_dict() for name in bed.ORDER]
    (state / "bed.json").write_text(json.dumps({"procs": procs, "ports": {"prometheus": 1}}))
    current = bed.Bed(state)
    assert current.running()
    return current


def test_a_client_of_the_running_bed_is_found(tmp_path: Path, sleepers: list[Proc]) -> None:
    current = fake_bed(tmp_path, sleepers)
    operator = start(sleepers, "demo-operator", tmp_path)
    current.record_client(operator)
    assert current.client("demo-operator") == operator
    assert current.clients() == [operator]


def test_a_client_of_an_earlier_bed_is_stopped_not_reused(tmp_path: Path, sleepers: list[Proc]) -> None:
    current = fake_bed(tmp_path, sleepers)
    operator = start(sleepers, "demo-operator", tmp_path)
    current.record_client(operator)
    # `kinfer dev down` did not run (or ran before the record existed); a new bed came up in
    # the same state directory: another API server process.
    fake_bed(tmp_path, sleepers)
    assert current.client("demo-operator") is None
    assert not operator.alive()
    assert not (tmp_path / "clients" / "demo-operator.json").exists()


def test_down_stops_the_clients_first(tmp_path: Path, sleepers: list[Proc]) -> None:
    current = fake_bed(tmp_path, sleepers)
    operator = start(sleepers, "demo-operator", tmp_path)
    current.record_client(operator)
    bed.down(tmp_path, echo=lambda _: None, keep_logs=True)
    assert not operator.alive()
    assert current.clients() == []
    assert not any(p.alive() for p in sleepers)


def test_a_dead_client_is_forgotten(tmp_path: Path, sleepers: list[Proc]) -> None:
    current = fake_bed(tmp_path, sleepers)
    gone = Proc("demo-operator", 2**22 + 1, 1)  # no such process
    current.record_client(gone)
    assert current.client("demo-operator") is None
    assert current.clients() == []


# A stand-in Prometheus: answers 200 to every GET (its /-/ready) on the port given.
READY_SERVER = (
    "import http.server, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers()\n"
    "    def log_message(self, *a):\n"
    "        pass\n"
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)


# spawn() lets go of its Popen: a bed's process outlives the call that started it, by design.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_stopped_component_is_started_again_in_place(tmp_path: Path, sleepers: list[Proc]) -> None:
    import sys

    current = fake_bed(tmp_path, sleepers)
    port = bed.free_ports(1)[0]
    data = current.load()
    current.save({**data, "ports": {"prometheus": port}})
    bed.stop_component(tmp_path, "prometheus", grace=1)
    assert not current.running()
    assert [p.name for p in current.procs() if not p.alive()] == ["prometheus"]
    proc = bed.start_component(tmp_path, "prometheus", timeout=30,
                               argv=[sys.executable, "-c", READY_SERVER, str(port)])  # fmt: skip
    sleepers.append(proc)
    assert current.running()
    assert next(p for p in current.procs() if p.name == "prometheus") == proc
    assert (tmp_path / "logs" / "prometheus.log").exists()


def test_only_the_restartable_components_can_be_stopped(tmp_path: Path, sleepers: list[Proc]) -> None:
    current = fake_bed(tmp_path, sleepers)
    with pytest.raises(ValueError, match="kwok cannot be restarted"):
        bed.stop_component(tmp_path, "kwok")
    assert current.running()
