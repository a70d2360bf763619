"""The operator behind a proxy that fails a fraction of its API calls (e2e/faultproxy.py), on the
real API server: failed passes are retried with backoff, repeated failures show as
Degraded=True/ReconcileFailed with a Warning event, and a transient error is repaired within 10 s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from faultproxy import FaultProxy
from operator_bed import Setup, example

pytestmark = pytest.mark.e2e

REPAIR_SECONDS = 10.0
LEADER: tuple[str, ...] = ()


@pytest.fixture
def proxied(setup: Setup) -> Iterator[FaultProxy]:
    """The session's operator replaced, for this test, by one whose API calls go through a fault
    proxy; the usual operator is back afterwards."""
    with FaultProxy(setup.testbed.kubeconfig, seed=16) as proxy:
        kubeconfig = proxy.kubeconfig(setup.kubeconfig, setup.logs / "faulty.kubeconfig")
        setup.operator.stop()
        setup.operator = setup.start_operator("operator-faults.log", *LEADER, kubeconfig=kubeconfig)
        try:
            yield proxy
        finally:
            (setup.logs / "faultproxy.log").write_text("".join(f"{m} {p}\n" for m, p in proxy.seen))
            setup.restart_operator("operator-a4.log", *LEADER)


def _exists(setup: Setup, namespace: str, what: str) -> bool:
    return bool(setup.get(namespace, what))


def test_passes_under_a_fraction_of_failed_calls_converge(
    setup: Setup, proxied: FaultProxy, namespace: str, wait_for: Any
) -> None:
    # Every kind of call, reads and writes: a pass makes about 15, so a third to a half fail.
    proxied.fail(rate=0.03)
    isvc = setup.apply(namespace, example("minimal", setup.model))
    setup.wait_ready(wait_for, namespace, isvc, timeout=120)
    calls, failed = proxied.counts()
    assert failed >= 2, f"the proxy failed only {failed} of {calls} calls: nothing was tested"


def test_a_transient_error_is_repaired_within_10_seconds(
    setup: Setup, proxied: FaultProxy, namespace: str, wait_for: Any
) -> None:
    isvc = setup.apply(namespace, example("minimal", setup.model))
    setup.wait_ready(wait_for, namespace, isvc)
    for _ in range(3):
        # Every call fails for 2 s (an API server restart, a 5xx burst) while the drift happens.
        proxied.fail(rate=1.0)
        setup.kubectl("delete", "-n", namespace, f"service/{isvc}", "--wait=false")
        deleted = time.monotonic()
        time.sleep(2)
        proxied.fail(rate=0)
        wait_for(
            lambda: _exists(setup, namespace, f"service/{isvc}"),
            REPAIR_SECONDS,
            describe=lambda: f"service/{isvc} recreated\n" + setup.why(namespace),
            interval=0.2,
        )
        assert time.monotonic() - deleted < REPAIR_SECONDS + 1


def test_repeated_failures_show_as_a_condition_and_an_event_and_clear(
    setup: Setup, proxied: FaultProxy, namespace: str, wait_for: Any
) -> None:
    doc = example("minimal", setup.model)
    isvc = setup.apply(namespace, doc)
    setup.wait_ready(wait_for, namespace, isvc)
    # Writes of Deployments fail; everything else (status, events) goes through.
    proxied.fail(rate=1.0, methods={"PATCH", "POST", "PUT"}, path=r"/apis/apps/v1/.*deployments")
    doc["spec"].setdefault("resources", {})["cpu"] = "250m"  # the Deployment must change
    setup.apply(namespace, doc)

    def failing() -> dict[str, Any]:
        cond = setup.condition(namespace, isvc, "Degraded")
        return cond if cond.get("reason") == "ReconcileFailed" else {}

    cond = wait_for(failing, 30, describe=lambda: "Degraded=ReconcileFailed\n" + setup.why(namespace))
    assert cond["status"] == "True"
    assert "500" in cond["message"], cond["message"]
    events = setup.get(namespace, "events")["items"]
    assert any(e["reason"] == "ReconcileFailed" and e["type"] == "Warning" for e in events), events

    proxied.fail(rate=0)

    def recovered() -> bool:
        deployment = setup.get(namespace, f"deployment/{isvc}")
        cpu = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
        return cpu == "250m" and setup.condition(namespace, isvc, "Degraded").get("status") == "False"

    # The retry is at most the backoff cap (30 s) away.
    wait_for(recovered, 45, describe=lambda: "Deployment updated, Degraded=False\n" + setup.why(namespace))


def test_an_idle_service_costs_no_api_writes(
    setup: Setup, proxied: FaultProxy, namespace: str, wait_for: Any
) -> None:
    isvc = setup.apply(namespace, example("minimal", setup.model))
    setup.wait_ready(wait_for, namespace, isvc)
    wait_for(
        lambda: (
            setup.condition(namespace, isvc, "Progressing").get("status") == "False"
            and setup.condition(namespace, isvc, "MetricsAvailable").get("status") == "True"
        ),
        60,
        describe="Progressing=False and MetricsAvailable=True",
    )
    time.sleep(5)  # the passes those status changes asked for
    mark = len(proxied.seen)
    # An event on an owned object asks for a pass; the pass finds everything as rendered.
    pod = setup.get(namespace, f"pods -l kinfer.dev/isvc={isvc}")["items"][0]["metadata"]["name"]
    setup.kubectl("annotate", "-n", namespace, f"pod/{pod}", "example.com/touched=1")
    time.sleep(10)  # and three autoscaler ticks with nothing new to say
    calls = proxied.since(mark)
    # A pass lists the service's pods (the autoscaler's ticks do not): the pass ran.
    pods = f"/api/v1/namespaces/{namespace}/pods?"
    listed = [c for c in calls if c[0].startswith("GET") and c[1].startswith(pods)]
    # Only this service's writes: earlier tests' namespaces may still be going away.
    mine = f"/namespaces/{namespace}/"
    writes = [c for c in calls if not c[0].startswith("GET") and mine in c[1]]
    assert listed, "no pass ran: nothing was measured"
    assert writes == [], writes
