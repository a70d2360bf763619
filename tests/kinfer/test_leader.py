"""Leader election on a Lease, two candidates on an in-memory API server and synthetic clocks:
one leads, a killed leader's Lease is taken after its duration, a released one at once, a
conflicting write loses, and a leader that cannot renew steps down before anyone may take over."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from kinfer.leader import Conflict, Elector

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


class FakeLeases:
    """One Lease with resourceVersion checks, as the API server keeps it."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.down = False
        self.writes = 0

    def _check(self) -> None:
        if self.down:
            raise OSError("connection refused")

    def get(self) -> dict[str, Any] | None:
        self._check()
        return copy.deepcopy(self.lease)

    def create(self, spec: dict[str, Any]) -> dict[str, Any]:
        self._check()
        if self.lease is not None:
            raise Conflict("exists")
        self.lease = {"metadata": {"name": "kinfer", "resourceVersion": "1"}, "spec": copy.deepcopy(spec)}
        self.writes += 1
        return copy.deepcopy(self.lease)

    def replace(self, lease: dict[str, Any]) -> dict[str, Any]:
        self._check()
        assert self.lease is not None
        if lease["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise Conflict("the object has been modified")
        version = str(int(self.lease["metadata"]["resourceVersion"]) + 1)
        self.lease = {**copy.deepcopy(lease), "metadata": {**lease["metadata"], "resourceVersion": version}}
        self.writes += 1
        return copy.deepcopy(self.lease)

    def holder(self) -> str | None:
        return (self.lease or {}).get("spec", {}).get("holderIdentity")


def _pair() -> tuple[FakeLeases, Elector, Elector, list[str]]:
    api = FakeLeases()
    started: list[str] = []
    a = Elector(api, "a", on_start=lambda: started.append("a"))
    b = Elector(api, "b", on_start=lambda: started.append("b"))
    return api, a, b, started


def _tick(electors: list[Elector], seconds: float) -> None:
    electors[0].step(seconds, T0 + timedelta(seconds=seconds))
    for e in electors[1:]:
        e.step(seconds, T0 + timedelta(seconds=seconds))


def test_one_leads_the_other_waits_while_the_lease_is_renewed() -> None:
    api, a, b, started = _pair()
    for t in range(0, 60, 2):
        _tick([a, b], t)
        assert (a.leading, b.leading) == (True, False)
    assert started == ["a"] and api.holder() == "a"
    assert api.lease is not None and api.lease["spec"]["leaseTransitions"] == 0


def test_a_killed_leaders_lease_is_taken_after_its_duration() -> None:
    api, a, b, started = _pair()
    _tick([a, b], 0)
    _tick([a, b], 2)
    # a is killed at 2 s: its record stops changing. b waits the full 15 s from when it saw
    # the last change, by its own clock.
    for t in range(4, 17, 2):
        b.step(t, T0 + timedelta(seconds=t))
        assert not b.leading, t
    b.step(18, T0 + timedelta(seconds=18))
    assert b.leading and api.holder() == "b" and started == ["a", "b"]
    assert api.lease is not None and api.lease["spec"]["leaseTransitions"] == 1


def test_a_released_lease_is_taken_at_once() -> None:
    api, a, b, started = _pair()
    _tick([a, b], 0)
    a.stop()
    assert api.holder() is None and not a.leading
    b.step(2, T0 + timedelta(seconds=2))
    assert b.leading and started == ["a", "b"]


def test_of_two_candidates_taking_an_expired_lease_only_one_wins() -> None:
    api, a, b, _ = _pair()
    c = Elector(api, "c")
    _tick([a, b, c], 0)
    _tick([b, c], 1)
    # Both see a's record unchanged for more than 15 s and read it before either writes.
    stale = api.get()
    api_get = api.get
    api.get = lambda: copy.deepcopy(stale)  # type: ignore[method-assign]
    b.step(17, T0 + timedelta(seconds=17))
    c.step(17, T0 + timedelta(seconds=17))
    api.get = api_get  # type: ignore[method-assign]
    assert (b.leading, c.leading) == (True, False) and api.holder() == "b"


def test_a_leader_that_cannot_renew_stops_before_the_lease_expires() -> None:
    api, a, b, _ = _pair()
    _tick([a, b], 0)
    api.down = True  # a cannot reach the API server; nor can b
    for t in (2, 4, 6, 8, 10):
        a.step(t, T0 + timedelta(seconds=t))
        assert a.leading, t
    a.step(12, T0 + timedelta(seconds=12))
    assert not a.leading  # 12 s without a renewal > the 10 s deadline < the 15 s lease


def test_a_lease_the_chart_created_without_a_holder_is_taken_at_once_and_kept() -> None:
    # Helm renders the Lease (so that `helm uninstall` deletes it): no holder, only its duration
    # and Helm's labels. The first candidate takes it with a replace; nothing is created.
    api = FakeLeases()
    labels = {"app.kubernetes.io/managed-by": "Helm"}
    api.lease = {
        "metadata": {"name": "kinfer", "resourceVersion": "7", "labels": labels},
        "spec": {"leaseDurationSeconds": 15},
    }
    a = Elector(api, "a")
    a.step(0, T0)
    assert a.leading and api.holder() == "a"
    assert api.lease["metadata"]["labels"] == labels
    assert api.lease["spec"]["leaseTransitions"] == 0  # the first holder is no transition
    assert api.lease["spec"]["acquireTime"] == "2026-12-02T12:00:00.000000Z"


def test_a_lease_not_ours_to_create_is_waited_for_and_never_created_again() -> None:
    api = FakeLeases()
    a = Elector(api, "a", create=False)
    for t in range(0, 10, 2):
        a.step(t, T0 + timedelta(seconds=t))
    assert not a.leading and api.lease is None and api.writes == 0
    api.lease = {"metadata": {"name": "kinfer", "resourceVersion": "1"}, "spec": {"leaseDurationSeconds": 15}}
    a.step(10, T0 + timedelta(seconds=10))
    assert a.leading and api.holder() == "a"
    # `helm uninstall` deletes the Lease while this replica still runs: it stops leading at
    # once and leaves nothing behind.
    api.lease = None
    a.step(12, T0 + timedelta(seconds=12))
    assert not a.leading and api.lease is None


def test_a_failed_catch_up_is_retried_until_it_succeeds() -> None:
    # Winning the Lease runs one pass per InferenceService; a failed LIST of them must not leave
    # the services whose events this replica ignored while waiting to the 30-minute resync.
    api = FakeLeases()
    calls: list[int] = []

    def catch_up() -> None:
        calls.append(len(calls))
        if len(calls) < 3:
            raise OSError("500 injected")

    a = Elector(api, "a", on_start=catch_up)
    for t in range(0, 12, 2):
        a.step(t, T0 + timedelta(seconds=t))
    assert a.leading and calls == [0, 1, 2]
