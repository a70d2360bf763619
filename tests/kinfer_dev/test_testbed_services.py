"""Services as a test bed pod sees them (kinfer_dev.testbed.services): its hosts file and the choice
of endpoint per connection. e2e/test_testbed.py runs them for real through the launcher."""

from __future__ import annotations

import random
from typing import Any

from kinfer_dev.testbed import services

Obj = dict[str, Any]

POD: Obj = {
    "metadata": {"name": "canary-7f9c", "namespace": "team-a"},
    "spec": {"containers": [{"name": "model"}]},
    "status": {"podIP": "10.88.1.7"},
}


def svc(name: str, cluster_ip: str, *ports: Obj, type_: str = "ClusterIP") -> Obj:
    return {
        "metadata": {"name": name, "namespace": "team-a"},
        "spec": {"type": type_, "clusterIP": cluster_ip, "ports": list(ports)},
    }


def endpoint(ip: str, ready: bool | None = True) -> Obj:
    conditions = {} if ready is None else {"ready": ready}
    return {"addresses": [ip], "conditions": conditions}


def eslice(ports: list[Obj], *endpoints: Obj, address_type: str = "IPv4") -> Obj:
    return {"addressType": address_type, "ports": ports, "endpoints": list(endpoints)}


HTTP = {"name": "http", "port": 8080, "protocol": "TCP"}
GRPC = {"name": "grpc", "port": 9000, "protocol": "TCP"}


def test_hosts_file_names_localhost_the_pod_and_each_service() -> None:
    text = services.hosts_file(POD, [svc("m-stable", "10.96.4.2", {"port": 8080})])
    lines = text.splitlines()
    assert "127.0.0.1\tlocalhost" in lines
    assert "10.88.1.7\tcanary-7f9c" in lines
    assert (
        "10.96.4.2\tm-stable m-stable.team-a m-stable.team-a.svc m-stable.team-a.svc.cluster.local" in lines
    )
    assert text.endswith("\n")


def test_hosts_file_uses_spec_hostname_when_set() -> None:
    pod = {**POD, "spec": {**POD["spec"], "hostname": "worker"}}
    assert "10.88.1.7\tworker" in services.hosts_file(pod, []).splitlines()


def test_hosts_file_names_the_pod_ip_by_the_machine_hostname_its_processes_see() -> None:
    lines = services.hosts_file(POD, [], uts_hostname="vm").splitlines()
    assert "10.88.1.7\tcanary-7f9c vm" in lines
    assert "10.88.1.7\tcanary-7f9c" in services.hosts_file(POD, [], uts_hostname="localhost").splitlines()


def test_headless_and_external_name_services_get_no_address() -> None:
    listed = [
        svc("headless", "None", {"port": 80}),
        svc("outside", "", {"port": 80}, type_="ExternalName"),
        svc("web", "10.96.0.9", {"port": 80}),
    ]
    assert [s["metadata"]["name"] for s in services.with_cluster_ip(listed)] == ["web"]
    text = services.hosts_file(POD, listed)
    assert "headless" not in text
    assert "outside" not in text
    assert [p.service for p in services.tcp_ports(listed)] == ["web"]


def test_tcp_ports_keep_names_and_skip_udp() -> None:
    listed = [
        svc(
            "m",
            "10.96.0.3",
            {"name": "http", "port": 8080},
            {"name": "grpc", "port": 9000, "protocol": "TCP"},
            {"name": "dns", "port": 53, "protocol": "UDP"},
        ),
        svc("plain", "10.96.0.4", {"port": 80, "targetPort": "http"}),
    ]
    assert services.tcp_ports(listed) == [
        services.ServicePort("team-a", "m", "10.96.0.3", 8080, "http"),
        services.ServicePort("team-a", "m", "10.96.0.3", 9000, "grpc"),
        services.ServicePort("team-a", "plain", "10.96.0.4", 80, ""),
    ]


def test_only_ready_endpoints_count() -> None:
    slices = [eslice([HTTP], endpoint("10.88.1.2"), endpoint("10.88.1.3", ready=False))]
    assert services.ready_endpoints(slices, "http") == [("10.88.1.2", 8080)]


def test_unset_ready_counts_as_ready_as_the_api_says() -> None:
    slices = [eslice([HTTP], endpoint("10.88.1.2", ready=None))]
    assert services.ready_endpoints(slices, "http") == [("10.88.1.2", 8080)]


def test_port_is_chosen_by_the_service_port_name() -> None:
    slices = [eslice([HTTP, GRPC], endpoint("10.88.1.2"))]
    assert services.ready_endpoints(slices, "grpc") == [("10.88.1.2", 9000)]
    assert services.ready_endpoints(slices, "metrics") == []
    unnamed = [eslice([{"name": "", "port": 8080}], endpoint("10.88.1.2"))]
    assert services.ready_endpoints(unnamed, "") == [("10.88.1.2", 8080)]


def test_endpoints_across_slices_count_once_and_ipv6_slices_are_skipped() -> None:
    slices = [
        eslice([HTTP], endpoint("10.88.1.2"), endpoint("10.88.2.5")),
        eslice([HTTP], endpoint("10.88.1.2")),  # the same pod, while slices are rewritten
        eslice([HTTP], endpoint("fd00::5"), address_type="IPv6"),
    ]
    assert services.ready_endpoints(slices, "http") == [("10.88.1.2", 8080), ("10.88.2.5", 8080)]


def test_choice_is_among_ready_endpoints_and_none_without_one() -> None:
    rng = random.Random(0)
    slices = [eslice([HTTP], endpoint("10.88.1.2"), endpoint("10.88.2.5"), endpoint("10.88.3.9", False))]
    chosen = {services.choose_endpoint(slices, "http", rng) for _ in range(50)}
    assert chosen == {("10.88.1.2", 8080), ("10.88.2.5", 8080)}
    assert services.choose_endpoint([eslice([HTTP], endpoint("10.88.1.2", False))], "http", rng) is None
    assert services.choose_endpoint([eslice([HTTP])], "http", rng) is None  # no endpoints at all
    assert services.choose_endpoint([], "http", rng) is None  # no slice yet
