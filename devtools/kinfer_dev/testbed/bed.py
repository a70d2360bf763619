"""Bring the test bed up and down: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok, Prometheus and the pod launcher, each a process group recorded in
`<state>/bed.json`.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kinfer_dev.testbed import certs, gateway, install, network, nodes, prometheus, storage, versions
from kinfer_dev.testbed.kube import Kube, KubeError
from kinfer_dev.testbed.procs import Proc, log_tail, spawn, stop

# Stopped in this order by `down` (reverse of start).
ORDER = (
    "gateway",
    "launcher",
    "registry",
    "minio",
    "prometheus",
    "kwok",
    "kube-scheduler",
    "kube-controller-manager",
    "kube-apiserver",
    "etcd",
)


def default_state_dir() -> Path:
    return Path(os.environ.get("KINFER_TESTBED_STATE", "/tmp/kinfer-testbed"))


# One test bed per machine: they would share the bridge and the pod range. This file names the
# state dir of the one that is up.
ACTIVE = Path("/tmp/kinfer-testbed.active")


def active_state() -> Path | None:
    try:
        return Path(ACTIVE.read_text().strip())
    except OSError:
        return None


class StartupError(RuntimeError):
    pass


@dataclass
class Bed:
    state: Path

    @property
    def kubeconfig(self) -> Path:
        return self.state / "admin.kubeconfig"

    @property
    def record(self) -> Path:
        return self.state / "bed.json"

    def load(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.record.read_text())
        except (OSError, ValueError):
            return {"procs": [], "ports": {}}
        return data

    def save(self, data: dict[str, Any]) -> None:
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.rename(self.record)

    def procs(self) -> list[Proc]:
        return [Proc.from_dict(d) for d in self.load()["procs"]]

    def running(self) -> bool:
        ps = self.procs()
        return bool(ps) and {p.name for p in ps} == set(ORDER) and all(p.alive() for p in ps)

    def identity(self) -> dict[str, int | str] | None:
        """The running API server process: what a client started against this bed is bound to
        (a later bed in the same state directory has other ports and another API server)."""
        return next((p.as_dict() for p in self.procs() if p.name == "kube-apiserver"), None)

    @property
    def clients_dir(self) -> Path:
        return self.state / "clients"

    def record_client(self, proc: Proc) -> None:
        """Remember a process a tool started against this bed (the demo's operator), so that
        `down` stops it and nothing reuses it once the bed it talked to is gone."""
        self.clients_dir.mkdir(parents=True, exist_ok=True)
        record = {"proc": proc.as_dict(), "bed": self.identity()}
        (self.clients_dir / f"{proc.name}.json").write_text(json.dumps(record))

    def client(self, name: str) -> Proc | None:
        """The recorded client `name` when it is alive and bound to this running bed; a client
        of an earlier bed is stopped and forgotten."""
        path = self.clients_dir / f"{name}.json"
        try:
            record = json.loads(path.read_text())
            proc = Proc.from_dict(record["proc"])
        except (OSError, ValueError, KeyError):
            return None
        if proc.alive() and self.running() and record.get("bed") == self.identity():
            return proc
        stop([proc], grace=10)
        path.unlink(missing_ok=True)
        return None

    def clients(self) -> list[Proc]:
        out = []
        for f in sorted(self.clients_dir.glob("*.json")) if self.clients_dir.is_dir() else []:
            try:
                out.append(Proc.from_dict(json.loads(f.read_text())["proc"]))
            except (OSError, ValueError, KeyError):
                continue
        return out

    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.load()['ports']['prometheus']}"

    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.load()['ports']['gateway-http']}"

    def gateway_grpc(self) -> str:
        return f"127.0.0.1:{self.load()['ports']['gateway-grpc']}"

    def env_lines(self) -> str:
        return (
            f"export KUBECONFIG={self.kubeconfig}\n"
            f"export KINFER_PROMETHEUS_URL={self.prometheus_url()}\n"
            f"export KINFER_GATEWAY_URL={self.gateway_url()}\n"
            f"export KINFER_GATEWAY_GRPC={self.gateway_grpc()}\n"
            f"export KINFER_GATEWAY_NAMESPACE={gateway.NAMESPACE}\n"
            f"export KINFER_TESTBED_STATE={self.state}\n"
            f"export PATH={install.paths().k8s}:{install.paths().helm.parent}:$PATH\n"
            + storage.env_lines(self.state, self.load()["ports"])
        )


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (all held open while choosing, so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _get(url: str, ctx: ssl.SSLContext | None = None) -> bool:
    try:
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx)
        )
        with opener.open(url, timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait(what: str, check: Callable[[], bool], proc: Proc | None, log: Path | None, t: float) -> None:
    deadline = time.monotonic() + t
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and not proc.alive():
            raise StartupError(
                f"{what} exited during startup; last lines of {log}:\n" + (log_tail(log) if log else "")
            )
        time.sleep(0.2)
    tail = f"; last lines of {log}:\n{log_tail(log)}" if log else ""
    raise StartupError(f"{what} not ready after {t:.0f} s{tail}")


def _insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _admin_ctx(pki: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return ctx


def _argv(name: str, state: Path, ports: dict[str, int]) -> list[str]:
    p = install.paths()
    pki = state / "pki"
    kc = str(state / "admin.kubeconfig")
    secure = [
        "--bind-address=127.0.0.1",
        "--leader-elect=false",
        f"--kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}",
        f"--authorization-kubeconfig={kc}",
        "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
    ]
    if name == "etcd":
        peer = f"http://127.0.0.1:{ports['etcd-peer']}"
        client = f"http://127.0.0.1:{ports['etcd']}"
        return [
            str(p.etcd),
            "--name=kinfer",
            f"--data-dir={state / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=kinfer={peer}",
            "--auto-compaction-retention=1",
            "--quota-backend-bytes=2147483648",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ]
    if name == "kube-apiserver":
        return [
            str(p.k8s / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports['kube-apiserver']}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={network.SERVICE_RANGE}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            f"--requestheader-client-ca-file={pki / 'ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy.key'}",
            "--enable-aggregator-routing=true",
            "--profiling=false",
            # The kubelets are fake: never dial a node address for logs/exec.
            "--kubelet-preferred-address-types=InternalIP",
        ]
    if name == "kube-controller-manager":
        return [
            str(p.k8s / "kube-controller-manager"),
            *secure,
            f"--secure-port={ports['kube-controller-manager']}",
            "--controllers=*",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--horizontal-pod-autoscaler-sync-period=5s",
            "--concurrent-deployment-syncs=5",
        ]
    if name == "kube-scheduler":
        return [str(p.k8s / "kube-scheduler"), *secure, f"--secure-port={ports['kube-scheduler']}"]
    if name == "kwok":
        return [
            str(p.kwok),
            f"--kubeconfig={kc}",
            f"--config={state / 'kwok.yaml'}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={nodes.MANAGED_ANNOTATION}=fake",
            "--cidr=10.88.0.0/24",
            "--node-ip=127.0.0.1",
            "--node-lease-duration-seconds=0",
            f"--server-address=127.0.0.1:{ports['kwok']}",
        ]
    if name == "prometheus":
        return [
            str(p.prometheus),
            f"--config.file={state / 'prometheus.yml'}",
            f"--storage.tsdb.path={state / 'prometheus'}",
            f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
            "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
        ]
    if name == "minio":
        return storage.minio_argv(state, ports)
    if name == "registry":
        return storage.registry_argv(state, ports)
    if name == "launcher":
        relayed = [ports[n] for n in ("prometheus", "minio", "registry") if n in ports]
        return [
            sys.executable,
            "-m",
            "kinfer_dev.testbed.launcher",
            f"--kubeconfig={kc}",
            f"--state={state}",
            *(f"--relay-port={port}" for port in relayed),
        ]
    raise ValueError(name)


def _kwok_module_dir() -> Path:
    return install.cache_dir() / "gomod" / f"sigs.k8s.io/kwok@{versions.KWOK}"


def up(state: Path, echo: Callable[[str], None] = print) -> Bed:
    """Start the test bed in `state` (reused when already running). Raises StartupError with the
    failing component's log tail."""
    bed = Bed(state)
    if bed.running():
        echo(f"test bed already running in {state}")
        return bed
    if bed.procs() or bed.clients():
        down(state, echo=lambda _: None)  # half-dead leftovers, and clients of an earlier bed
    missing = install.missing(helm=False)
    if missing:
        raise StartupError("missing binaries (run `kinfer dev install`): " + ", ".join(missing))
    other = active_state()
    if other is not None and other.resolve() != state.resolve() and Bed(other).running():
        raise StartupError(
            f"a test bed is already running in {other} (one per machine): use it, "
            f"or stop it with `kinfer dev down --state {other}`"
        )
    ACTIVE.write_text(str(state.resolve()))
    t0 = time.monotonic()
    for sub in (
        "etcd",
        "prometheus",
        "pods",
        "procs",
        "logs",
        "nodes",
        "minio",
        "registry",
    ):  # fresh each time
        _rmtree(state / sub)
    (state / "launcher.ready").unlink(missing_ok=True)
    for sub in ("logs", "etcd", "prometheus", "kwok-home"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    certs.make_pki(state / "pki")
    names: tuple[str, ...] = (
        "etcd",
        "etcd-peer",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
        "prometheus",
        "gateway-http",
        "gateway-grpc",
        "gateway-admin",
    )
    if storage.installed():
        names += storage.PORTS
    else:
        echo("model stores not built (kinfer dev install minio registry): s3:// and oci:// e2e skip")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    certs.write_kubeconfig(bed.kubeconfig, state / "pki", f"https://127.0.0.1:{ports['kube-apiserver']}")
    (state / "kwok.yaml").write_text(nodes.kwok_config(_kwok_module_dir()))
    (state / "prometheus.yml").write_text(prometheus.config(bed.kubeconfig))
    network.bridge_up()
    data: dict[str, Any] = {"procs": [], "ports": ports}

    def start(name: str, env: dict[str, str] | None = None) -> Proc:
        log = state / "logs" / f"{name}.log"
        argv = gateway.argv(state, ports) if name == "gateway" else _argv(name, state, ports)
        proc = spawn(name, argv, log, env=env, cwd=state)
        data["procs"].append(proc.as_dict())
        bed.save(data)  # record at once: a failed `up` can still be taken down
        return proc

    def log(name: str) -> Path:
        return state / "logs" / f"{name}.log"

    try:
        etcd = start("etcd")
        _wait("etcd", lambda: _get(f"http://127.0.0.1:{ports['etcd']}/health"), etcd, log("etcd"), 30)
        api = start("kube-apiserver")
        ctx = _admin_ctx(state / "pki")
        api_url = f"https://127.0.0.1:{ports['kube-apiserver']}"
        _wait("kube-apiserver", lambda: _get(f"{api_url}/readyz", ctx), api, log("kube-apiserver"), 90)
        started = {n: start(n) for n in ("kube-controller-manager", "kube-scheduler")}
        # kwok reads ~/.kwok/kwok.yaml too: give it a HOME of its own.
        started["kwok"] = start("kwok", env={**os.environ, "HOME": str(state / "kwok-home")})
        started["prometheus"] = start("prometheus")
        if "minio" in ports:
            started["minio"] = start("minio", env={**os.environ, **storage.minio_env()})
            started["registry"] = start("registry")
        started["launcher"] = start("launcher")
        _create_nodes(bed)
        checks: dict[str, Callable[[], bool]] = {
            "kube-controller-manager": lambda: _get(
                f"https://127.0.0.1:{ports['kube-controller-manager']}/healthz", _insecure()
            ),
            "kube-scheduler": lambda: _get(
                f"https://127.0.0.1:{ports['kube-scheduler']}/readyz", _insecure()
            ),
            "kwok": lambda: _get(f"http://127.0.0.1:{ports['kwok']}/healthz"),
            "prometheus": lambda: _get(f"http://127.0.0.1:{ports['prometheus']}/-/ready"),
            "launcher": lambda: (state / "launcher.ready").exists(),
        }
        if "minio" in ports:
            ca = ssl.create_default_context(cafile=str(state / "pki" / "ca.crt"))
            checks["minio"] = lambda: _get(f"https://127.0.0.1:{ports['minio']}/minio/health/ready", ca)
            checks["registry"] = lambda: _get(f"http://127.0.0.1:{ports['registry']}/v2/")
        for name, check in checks.items():
            _wait(name, check, started[name], log(name), 60)
        _wait("nodes Ready", lambda: _nodes_ready(bed), started["kwok"], log("kwok"), 60)
        _wait("default service account", lambda: _default_sa(bed), None, None, 60)
        kube = Kube(bed.kubeconfig)
        token = gateway.prepare(kube)
        _wait("Gateway API CRDs established", lambda: gateway.established(kube), None, None, 60)
        gateway.write_config(state, ports, token)
        traefik = start("gateway")
        admin = f"http://127.0.0.1:{ports['gateway-admin']}/ping"
        _wait("gateway (traefik)", lambda: _get(admin), traefik, log("gateway"), 60)
        gateway.create_all(kube, gateway.gateway_objects(ports["gateway-http"], ports["gateway-grpc"]))
        _wait("Gateway Programmed", lambda: gateway.programmed(kube), traefik, log("gateway"), 60)
    except BaseException:
        down(state, echo=lambda _: None, keep_logs=True)
        raise
    (state / "env").write_text(bed.env_lines())
    echo(f"test bed up in {time.monotonic() - t0:.1f} s (state {state})")
    return bed


def _create_nodes(bed: Bed) -> None:
    kube = Kube(bed.kubeconfig)
    for node in nodes.fake_nodes():
        try:
            kube.create("/api/v1/nodes", node)
        except KubeError as e:
            if e.status != 409:  # already there
                raise


def _nodes_ready(bed: Bed) -> bool:
    want = {n["metadata"]["name"] for n in nodes.fake_nodes()}
    ready = {
        n["metadata"]["name"]
        for n in Kube(bed.kubeconfig).get("/api/v1/nodes")["items"]
        if any(
            c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", [])
        )
    }
    return want <= ready


def _default_sa(bed: Bed) -> bool:
    try:
        Kube(bed.kubeconfig).get("/api/v1/namespaces/default/serviceaccounts/default")
        return True
    except KubeError:
        return False


def down(state: Path, echo: Callable[[str], None] = print, keep_logs: bool = False) -> None:
    """Stop every process this test bed started (by recorded PID), its pods' processes and
    network namespaces, and remove the state (logs are kept when `keep_logs`)."""
    bed = Bed(state)
    procs = bed.procs()
    by_name = {p.name: p for p in procs}
    # Clients first (the demo's operator), while the API server still answers their last calls.
    stop(bed.clients(), grace=10)
    _rmtree(bed.clients_dir)
    if "gateway" in by_name:  # no new requests into pods that are about to stop
        stop([by_name["gateway"]], grace=5)
    # The launcher stops its pods itself on SIGTERM; give it time for their grace periods.
    if "launcher" in by_name:
        stop([by_name["launcher"]], grace=15)
    stop(_pod_procs(state), grace=2)  # whatever a killed launcher left behind
    network.cleanup_all(state / "netns")
    for name in ORDER[2:]:
        if name in by_name:
            stop([by_name[name]], grace=10)
    active = active_state()
    if active is None or active == state.resolve():  # the bridge is this bed's, not another's
        network.bridge_down()
        ACTIVE.unlink(missing_ok=True)
    if not keep_logs:
        for sub in ("etcd", "prometheus", "pods", "procs"):
            _rmtree(state / sub)
    bed.record.unlink(missing_ok=True)
    (state / "env").unlink(missing_ok=True)
    (state / "traefik.yml").unlink(missing_ok=True)  # holds a token of the gateway's ServiceAccount
    (state / "launcher.ready").unlink(missing_ok=True)
    echo(f"test bed in {state} stopped ({len(procs)} processes)")


# What the fault run (bench/operator_scale.py --faults) may stop and start again in a running
# bed: same ports, same data (etcd's and Prometheus's directories are kept), same certificates.
RESTARTABLE = ("etcd", "kube-apiserver", "prometheus")


def _ready(bed: Bed, name: str) -> Callable[[], bool]:
    ports = bed.load()["ports"]
    if name == "etcd":
        return lambda: _get(f"http://127.0.0.1:{ports['etcd']}/health")
    if name == "kube-apiserver":
        ctx = _admin_ctx(bed.state / "pki")
        return lambda: _get(f"https://127.0.0.1:{ports['kube-apiserver']}/readyz", ctx)
    if name == "prometheus":
        return lambda: _get(f"http://127.0.0.1:{ports['prometheus']}/-/ready")
    raise ValueError(f"{name} cannot be restarted (one of {', '.join(RESTARTABLE)})")


def stop_component(state: Path, name: str, grace: float = 10) -> None:
    """Stop one component of a running bed (SIGTERM, then SIGKILL after `grace` s); it stays in
    bed.json, dead, until start_component starts it again."""
    _ready(Bed(state), name)  # refuses what cannot come back
    stop([p for p in Bed(state).procs() if p.name == name], grace=grace)


def start_component(state: Path, name: str, timeout: float = 90, argv: list[str] | None = None) -> Proc:
    """Start a stopped component again with the arguments `up` gave it (or `argv`) and wait
    until it answers its health check. Clients recorded against the old API server stay bound
    to this bed."""
    bed = Bed(state)
    check = _ready(bed, name)
    data = bed.load()
    old = bed.identity()
    log = state / "logs" / f"{name}.log"
    proc = spawn(name, argv or _argv(name, state, data["ports"]), log, cwd=state)
    data["procs"] = [proc.as_dict() if d["name"] == name else d for d in data["procs"]]
    bed.save(data)
    if name == "kube-apiserver":
        for f in sorted(bed.clients_dir.glob("*.json")) if bed.clients_dir.is_dir() else []:
            record = json.loads(f.read_text())
            if record.get("bed") == old:
                f.write_text(json.dumps({**record, "bed": bed.identity()}))
    _wait(name, check, proc, log, timeout)
    return proc


def restart_component(state: Path, name: str, timeout: float = 90) -> float:
    """Stop and start one component; seconds until it answered again."""
    started = time.monotonic()
    stop_component(state, name)
    start_component(state, name, timeout)
    return time.monotonic() - started


def _pod_procs(state: Path) -> list[Proc]:
    d = state / "procs"
    out = []
    for f in d.glob("*.json") if d.is_dir() else []:
        try:
            out.append(Proc.from_dict(json.loads(f.read_text())))
        except (OSError, ValueError, KeyError):
            continue
    return out


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def status(state: Path) -> list[tuple[str, int, bool]]:
    return [(p.name, p.pid, p.alive()) for p in Bed(state).procs()]
