"""The data path through a real Gateway API implementation (Traefik on the test bed).

Requests go to the gateway's HTTP and gRPC listeners with the route's host name, the gateway
picks the pods from EndpointSlices, and each answer names the track that served it
(`kinfer-track`): the observed canary share is what the HTTPRoute/GRPCRoute weight makes it,
not the replica ratio (one stable and one canary pod throughout).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from kinfer_dev import traffic
from kinfer_dev.local import make_model
from operator_bed import MODELS, Setup

pytestmark = pytest.mark.e2e

REQUESTS = 1000  # per point and protocol
CLIENTS = 4
TOLERANCE = 3.0  # percentage points


def _service(name: str, canary: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kinfer.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": f"file://{make_model(MODELS / 'mlp')}"},
            "resources": {"cpu": "100m", "memory": "256Mi"},
            "scaling": {"mode": "fixed", "minReplicas": 2, "maxReplicas": 2},
            "rollout": {
                "canary": {"model": {"uri": f"file://{make_model(MODELS / 'mlp-v2', seed=1)}"}, **canary}
            },
        },
    }


def _clients(setup: Setup, namespace: str, name: str, grpc: bool) -> list[Any]:
    bed = setup.testbed
    if grpc:
        return [traffic.GrpcClient(bed.gateway_grpc, name, namespace) for _ in range(CLIENTS)]
    return [traffic.HttpClient(bed.gateway_url, name, namespace) for _ in range(CLIENTS)]


def _measure(setup: Setup, namespace: str, name: str, grpc: bool, **kw: Any) -> traffic.Counts:
    clients = _clients(setup, namespace, name, grpc)
    try:
        return traffic.run(clients, REQUESTS, 180, **kw)
    finally:
        for c in clients:
            c.close()


def _route_weights(setup: Setup, namespace: str, name: str) -> list[list[int]]:
    out = []
    for kind in ("httproute", "grpcroute"):
        route = setup.get(namespace, f"{kind}/{name}")
        rules = (route.get("spec") or {}).get("rules") or [{}]
        out.append([int(b.get("weight", 1)) for b in rules[0].get("backendRefs", [])])
    return out


def _canary(setup: Setup, namespace: str, name: str) -> dict[str, Any]:
    return (setup.get(namespace, f"kisvc/{name}").get("status") or {}).get("canary") or {}


def _control(setup: Setup, namespace: str, name: str, command: str | None) -> None:
    value = "kinfer.dev/rollout-" if command is None else f"kinfer.dev/rollout={command}"
    setup.kubectl("annotate", "-n", namespace, f"kisvc/{name}", value, "--overwrite")


def _served(setup: Setup, namespace: str, name: str, wait_for: Any) -> None:
    """Both routes accepted by the gateway and an answer through it."""
    client = traffic.HttpClient(setup.testbed.gateway_url, name, namespace)
    wait_for(lambda: client.infer()[0] == "200", 90,
             describe=lambda: f"an answer through the gateway: {client.infer()}\n" + setup.why(namespace),
             interval=0.5)  # fmt: skip
    client.close()


def test_canary_share_through_the_gateway_follows_the_route_weight(
    setup: Setup, namespace: str, wait_for: Any
) -> None:
    name = "ranker"
    analysis = {"minRequests": 5, "maxErrorRate": 0.05, "maxP95LatencyMs": 2000}
    setup.apply(
        namespace, _service(name, {"steps": [10, 25, 50, 100], "stepSeconds": 30, "analysis": analysis})
    )
    _served(setup, namespace, name, wait_for)
    observed: dict[tuple[int, str], traffic.Counts] = {}
    # A trickle through the gateway the whole time: the canary analysis needs requests, and
    # none of them may fail while the weights move.
    trickle = traffic.Steady([traffic.HttpClient(setup.testbed.gateway_url, name, namespace)], pause=0.05)
    with trickle:
        for weight in (10, 25, 50):
            wait_for(
                lambda w=weight: (
                    (c := _canary(setup, namespace, name)).get("phase") == "Progressing"
                    and c.get("weight") == w
                ),
                240,
                describe=lambda w=weight: (
                    f"the rollout at {w}%: {_canary(setup, namespace, name)}\n" + setup.why(namespace)
                ),
                interval=0.5,
            )
            _control(setup, namespace, name, "pause")  # hold the step while it is measured
            wait_for(
                lambda w=weight: (
                    _route_weights(setup, namespace, name) == [[100 - w, w]] * 2
                    and _canary(setup, namespace, name).get("phase") == "Paused"
                ),
                30,
                describe=lambda: f"routes at the weight, paused: {_route_weights(setup, namespace, name)}",
            )
            time.sleep(4)  # the gateway's watch and its 2 s provider throttle
            for grpc in (False, True):
                observed[weight, "grpc" if grpc else "http"] = _measure(setup, namespace, name, grpc)
            _control(setup, namespace, name, None)
    report = {
        f"{w}% {proto}": (round(c.share(), 1), c.total, dict(c.codes)) for (w, proto), c in observed.items()
    }
    print("canary share through the gateway:", json.dumps(report))
    for (weight, proto), counts in observed.items():
        assert counts.failed == 0 and counts.total == REQUESTS, (weight, proto, counts.codes, counts.errors)
        assert abs(counts.share() - weight) <= TOLERANCE, f"{weight}% over {proto}: {report}"
    assert trickle.counts.failed == 0, (trickle.counts.codes, trickle.counts.errors)
    # The status and the step event say the weight the route applies.
    events = json.loads(setup.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    steps = [e["message"] for e in events if e["reason"] == "CanaryStep"]
    assert any("HTTPRoute" in m and "25%" in m for m in steps), steps


def test_ab_header_sends_all_marked_requests_to_the_canary_and_no_others(
    setup: Setup, namespace: str, wait_for: Any
) -> None:
    name = "recommender"
    header = {"x-model-variant": "b"}
    doc = _service(name, {})
    doc["spec"]["rollout"]["abTest"] = {"header": "x-model-variant", "value": "b"}
    setup.apply(namespace, doc)
    _served(setup, namespace, name, wait_for)
    # Both tracks ready behind their own Services before counting.
    wait_for(
        lambda: all(
            (setup.get(namespace, f"deployment/{d}").get("status") or {}).get("readyReplicas")
            for d in (name, f"{name}-canary")
        ),
        120,
        describe=lambda: "both tracks ready\n" + setup.why(namespace),
    )
    time.sleep(4)
    report = {}
    for grpc in (False, True):
        proto = "grpc" if grpc else "http"
        marked = _measure(setup, namespace, name, grpc, headers=header)
        plain = _measure(setup, namespace, name, grpc)
        report[proto] = {"marked": dict(marked.tracks), "plain": dict(plain.tracks)}
        assert marked.failed == 0 and plain.failed == 0, (marked.codes, plain.codes, marked.errors)
        assert marked.tracks == {"canary": REQUESTS}, report
        assert plain.tracks == {"stable": REQUESTS}, report
    print("A/B through the gateway:", json.dumps(report))


def test_unknown_service_gets_404_from_the_gateway(setup: Setup, namespace: str) -> None:
    http = traffic.HttpClient(setup.testbed.gateway_url, "nosuch", namespace)
    code, _, _ = http.infer()
    http.close()
    assert code == "404"
    grpc = traffic.GrpcClient(setup.testbed.gateway_grpc, "nosuch", namespace)
    code, _, _ = grpc.infer()
    grpc.close()
    assert code == "UNIMPLEMENTED", code  # gRPC's name for HTTP 404


def _plain(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "kinfer.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": f"file://{make_model(MODELS / 'mlp')}"},
            "resources": {"cpu": "100m", "memory": "256Mi"},
            "scaling": {"mode": "fixed", "minReplicas": replicas, "maxReplicas": 3},
        },
    }


def _ready_pods(setup: Setup, namespace: str, name: str) -> list[str]:
    pods = setup.get(namespace, f"pods -l kinfer.dev/isvc={name}").get("items") or []
    return [
        p["metadata"]["name"]
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])
    ]


def test_no_request_fails_through_the_gateway_on_pod_deletion_and_scale_down(
    setup: Setup, namespace: str, wait_for: Any
) -> None:
    """Readiness off at SIGTERM, the endpoint removed, preStop keeps serving meanwhile, then
    the runtime drains: the gateway never sends a request to a pod that will not answer it."""
    name = "steady"
    setup.apply(namespace, _plain(name, 3))
    _served(setup, namespace, name, wait_for)
    wait_for(lambda: len(_ready_pods(setup, namespace, name)) == 3, 120,
             describe=lambda: "3 ready pods\n" + setup.why(namespace))  # fmt: skip
    time.sleep(4)
    load = traffic.Steady([traffic.HttpClient(setup.testbed.gateway_url, name, namespace) for _ in range(3)])
    with load:
        time.sleep(3)
        victim = _ready_pods(setup, namespace, name)[0]
        setup.kubectl("delete", "pod", "-n", namespace, victim, "--wait=false")
        wait_for(lambda: len(_ready_pods(setup, namespace, name)) == 3 and victim not in
                 _ready_pods(setup, namespace, name), 120,
                 describe=lambda: "the deleted pod replaced\n" + setup.why(namespace))  # fmt: skip
        time.sleep(10)  # the deleted pod's drain ends within its preStop and drain delay
        deleted = dict(load.counts.codes)
        setup.apply(namespace, _plain(name, 1))
        wait_for(
            lambda: len(setup.get(namespace, f"pods -l kinfer.dev/isvc={name}").get("items") or []) == 1,
            120,
            describe=lambda: "scaled down to one pod\n" + setup.why(namespace),
        )
        time.sleep(3)
    print("steady load through the gateway:", deleted, dict(load.counts.codes))
    assert load.counts.total > 200, load.counts.codes
    assert load.counts.failed == 0, (load.counts.codes, load.counts.errors)
