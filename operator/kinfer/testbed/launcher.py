"""The pod launcher: the test bed's stand-in for a kubelet's container runtime.

kwok schedules nothing and runs nothing; it marks a scheduled pod Running (not Ready) with an
IP from its node's podCIDR. For each such pod on a test bed node the launcher:
- makes a network namespace holding the pod IP (network.py) and starts every container's
  command + args there as a local process with the pod's env (`ip netns exec`);
- runs the readiness probe for real against the process and patches the pod's Ready and
  ContainersReady conditions and containerStatuses, so EndpointSlices follow real readiness;
- on deletion runs the preStop hook, sends SIGTERM, waits the grace period, sends SIGKILL,
  removes the namespace and then deletes the pod object (as a kubelet does).

Restart policy (kubelet-like, shorter delays for tests): a container that exits is restarted
when restartPolicy is Always, or OnFailure and it failed; restartCount grows and the restart
waits a back-off of 1 s, doubling per crash up to 30 s (reset after 60 s of running); meanwhile
the container shows `waiting: CrashLoopBackOff`. A failing liveness probe kills the container
(same back-off); a startup probe holds readiness and liveness until it passes, and restarts the
container when it fails. With Never (or OnFailure and exit 0) it stays terminated; once all containers
are, the pod phase becomes Succeeded (all exit 0) or Failed.

Only allow-listed commands run: python (run with the launcher's own interpreter, so the
project's virtualenv), kinfer, kinfer-runtime, sleep, plus names in $KINFER_LAUNCHER_ALLOW. A
container without a command runs its image's base name when that is allowed (image
`…/kinfer-runtime:tag` runs `kinfer-runtime`).

Pods that mount a ServiceAccount token act on the cluster (the operator installed by the Helm
chart) and run as a kubelet would run them: their volumes are made (volumes.py: the token comes
from a TokenRequest bound to the pod) and bind-mounted into a mount namespace of the container's
own (sandbox.py), a read-only root filesystem is honoured, HOME is /, and the API server
(KUBERNETES_SERVICE_HOST/PORT) and Prometheus are reachable on 127.0.0.1 inside the pod through
relays (relay.py). No kubeconfig reaches them: the token is all they have. Other pods (the model
servers) see the host's filesystem, so `file://` models under /tmp work.

Every pod in a network namespace reaches the Services of its own namespace that exist when it
starts, by name and ClusterIP (services.py): the names are in its /etc/hosts, and the service
range is routed to the test bed's service namespace (network.py), where a relay per Service
port sends each connection to a ready endpoint read from the EndpointSlices (at most once a
second per Service).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kinfer.testbed import network, nodes, services, volumes
from kinfer.testbed.kube import Kube, KubeError, Obj, pod_path
from kinfer.testbed.procs import start_time
from kinfer.testbed.relay import Address, Relay, host_loopback

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
BACKOFF_RESET_AFTER_S = 60.0
TICK_S = 0.2
# What the programs run by the sandbox need from the host, whatever volume covers it.
KEEP = [
    f"--keep={p}" for p in sorted({sys.prefix, sys.base_prefix, str(Path(__file__).resolve().parents[2])})
]
ENDPOINTS_TTL_S = 1.0  # how long a Service's EndpointSlices are reused by its relays


# Probes go straight to the pod, never through a proxy from the environment.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def log(msg: str) -> None:
    print(f"{now_iso()} {msg}", flush=True)


def allowed_names() -> set[str]:
    extra = {n for n in os.environ.get("KINFER_LAUNCHER_ALLOW", "").split(",") if n}
    return {"python", "python3", "kinfer", "kinfer-runtime", "sleep"} | extra


def resolve(argv: list[str]) -> list[str]:
    """The argv to run, or ValueError when its command is not allowed."""
    if not argv:
        raise ValueError("no command")
    name = os.path.basename(argv[0])
    if re.fullmatch(r"python3(\.\d+)?", name) or name == "python":
        return [sys.executable, *argv[1:]]
    if name not in allowed_names():
        raise ValueError(f"command {argv[0]!r} is not on the launcher's allow-list")
    # Prefer the launcher's virtualenv (kinfer-runtime is installed there).
    venv_bin = Path(sys.executable).parent / name
    path = str(venv_bin) if venv_bin.exists() else shutil.which(name)
    if path is None:
        raise ValueError(f"command {name!r} not found")
    return [path, *argv[1:]]


def expand(s: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args; $$ escapes."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        s,
    )


def container_env(pod: Obj, c: Obj) -> dict[str, str]:
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
    fields = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": status.get("podIP", ""),
        "status.hostIP": status.get("hostIP", ""),
    }
    venv_bin = str(Path(sys.executable).parent)
    env = {
        "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
        "HOSTNAME": meta["name"],
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    }
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = expand(e["value"], env)
        elif fp := e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath"):
            m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", fp)
            env[e["name"]] = meta.get(m.group(1), {}).get(m.group(2), "") if m else fields.get(fp, "")
        # resourceFieldRef, configMapKeyRef, secretKeyRef: not supported (docs/testbed.md)
    return env


@dataclass
class Probe:
    spec: Obj
    successes: int = 0
    failures: int = 0
    next_at: float = 0.0

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def record(self, ok: bool, now: float) -> None:
        self.next_at = now + max(1, int(self.spec.get("periodSeconds", 10)))
        if ok:
            self.successes, self.failures = self.successes + 1, 0
        else:
            self.successes, self.failures = 0, self.failures + 1


@dataclass
class Container:
    spec: Obj
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    started_iso: str = ""
    restarts: int = 0
    backoff_s: float = 0.0
    restart_at: float | None = None  # waiting in back-off until then
    last_term: Obj | None = None  # containerStatus.lastState.terminated
    term: Obj | None = None  # terminated for good (no restart)
    ready: bool = False
    error: str = ""  # why it cannot run at all
    readiness: Probe | None = None
    liveness: Probe | None = None
    startup: Probe | None = None  # until it passes, readiness and liveness are not run
    started_ok: bool = False

    @property
    def name(self) -> str:
        return str(self.spec["name"])


def port_of(c: Obj, port: Any) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in c.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"no port named {port!r}")


class ServiceProxy:
    """The test bed's kube-proxy: a relay in network.SERVICE_NS on each ClusterIP:port that a
    starting pod has seen, sending each connection to a ready endpoint of the Service at that
    address. A Service's EndpointSlices are read at most once per `ttl_s` (a burst of
    connections makes one request). Relays stay until the launcher stops: one whose Service is
    gone finds no endpoint and resets its connections."""

    def __init__(self, kube: Kube, ttl_s: float = ENDPOINTS_TTL_S) -> None:
        self.kube, self.ttl_s = kube, ttl_s
        self.lock = threading.Lock()
        self.relays: dict[Address, Relay] = {}
        self.targets: dict[Address, services.ServicePort] = {}
        self.cache_lock = threading.Lock()
        self.cache: dict[tuple[str, str], tuple[float, list[Obj]]] = {}
        self.rng = random.Random()

    def ensure(self, ports: list[services.ServicePort]) -> None:
        """Relays for these Service ports; an address taken over by another Service (a ClusterIP
        freed and given out again) now leads to the new one."""
        with self.lock:
            for sp in ports:
                key = (sp.cluster_ip, sp.port)
                self.targets[key] = sp
                if key not in self.relays:
                    upstream = functools.partial(self._upstream, key)
                    self.relays[key] = Relay(network.SERVICE_NS, key, upstream)

    def _upstream(self, key: Address) -> Address | None:
        sp = self.targets[key]
        try:
            slices = self._slices(sp.namespace, sp.service)
        except (KubeError, OSError) as e:
            log(f"endpoints of {sp.namespace}/{sp.service}: {e!r}")
            return None
        return services.choose_endpoint(slices, sp.name, self.rng)

    def _slices(self, namespace: str, service: str) -> list[Obj]:
        with self.cache_lock:
            now = time.monotonic()
            hit = self.cache.get((namespace, service))
            if hit is not None and now - hit[0] < self.ttl_s:
                return hit[1]
            path = f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
            selector = f"kubernetes.io/service-name={service}"
            items: list[Obj] = self.kube.get(path, labelSelector=selector)["items"]
            self.cache = {k: v for k, v in self.cache.items() if now - v[0] < self.ttl_s}
            self.cache[(namespace, service)] = (now, items)
            return items


@dataclass
class PodRunner:
    kube: Kube
    pod: Obj
    state: Path
    host_ports: list[int] = field(default_factory=list)  # relayed into pods that hold a token
    proxy: ServiceProxy | None = None  # where its Services' relays are made (None: not made)
    containers: list[Container] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)
    grace_s: float = 30.0
    finalize: bool = False  # delete the pod object once the processes are gone
    netns: str | None = None
    thread: threading.Thread | None = None
    conditions: dict[str, tuple[bool, str]] = field(default_factory=dict)
    last_patch: str = ""
    volumes: dict[str, Path] | None = None  # made for pods that mount a token (module doc)
    relays: list[Relay] = field(default_factory=list)

    @property
    def key(self) -> str:
        m = self.pod["metadata"]
        return f"{m['namespace']}/{m['name']}"

    @property
    def ip(self) -> str:
        return str(self.pod["status"]["podIP"])

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=self.key, daemon=True)
        self.thread.start()

    def stop(self, grace_s: float, finalize: bool) -> None:
        self.grace_s, self.finalize = grace_s, finalize or self.finalize
        self.stop_event.set()

    # --- the pod's life --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._setup()
            while not self.stop_event.is_set():
                now = time.monotonic()
                for c in self.containers:
                    self._tick(c, now)
                self._patch()
                self.stop_event.wait(TICK_S)
            self._terminate()
        except Exception as e:  # keep the launcher alive; the pod shows what happened
            log(f"{self.key}: launcher error: {e!r}")
            self._event("Warning", "LauncherError", str(e))
            self._kill_all(0)
        finally:
            for relay in self.relays:
                relay.close()
            shutil.rmtree(self._pod_dir / "volumes", ignore_errors=True)  # tokens among them
            if self.netns:
                network.pod_netns_down(self.netns, network.names(self._uid)[1], self._netns_dir)
            if self.finalize:
                self._delete_pod()
        log(f"{self.key}: stopped")

    @property
    def _uid(self) -> str:
        return str(self.pod["metadata"]["uid"])

    @property
    def _netns_dir(self) -> Path:
        return self.state / "netns"

    @property
    def _pod_dir(self) -> Path:
        return self.state / "pods" / self.key.replace("/", "_")

    def _setup(self) -> None:
        spec = self.pod["spec"]
        for c in spec["containers"]:
            cont = Container(spec=c, env=container_env(self.pod, c))
            if "readinessProbe" in c:
                cont.readiness = Probe(c["readinessProbe"])
            if "livenessProbe" in c:
                cont.liveness = Probe(c["livenessProbe"])
            if "startupProbe" in c:
                cont.startup = Probe(c["startupProbe"])
            self.containers.append(cont)
        if not spec.get("hostNetwork"):
            self.netns = network.pod_netns_up(self._uid, self.ip, self._netns_dir)
            self._wire_services(self.netns)
        if volumes.mounts_token(self.pod):
            if not self._make_volumes():
                return
            self._wire_to_cluster()
        for c in self.containers:
            self._start(c)

    def _make_volumes(self) -> bool:
        """Retry until the volumes are made (a new namespace's kube-root-ca.crt comes a moment
        after the namespace) or the pod is stopped; one FailedMount event per distinct error."""
        warned = ""
        while not self.stop_event.is_set():
            try:
                self.volumes = volumes.materialize(self.kube, self.pod, self._pod_dir / "volumes")
                return True
            except volumes.VolumeError as e:
                if str(e) != warned:
                    warned = str(e)
                    log(f"{self.key}: {e}")
                    self._event("Warning", "FailedMount", str(e))
                self._patch()
                self.stop_event.wait(2)
        return False

    def _wire_to_cluster(self) -> None:
        """What a pod that acts on the cluster finds: the API server's address in its env and
        relays to the host's API server and Prometheus inside its network namespace."""
        api_port = self.host_ports[0]
        for c in self.containers:
            c.env |= {
                "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": str(api_port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(api_port),
                "HOME": "/",
            }
        if self.netns:
            for port in self.host_ports:
                self.relays.append(Relay(self.netns, ("127.0.0.1", port), host_loopback(port)))

    def _wire_services(self, netns: str) -> None:
        """The Services of the pod's namespace as they are now, by name (its /etc/hosts) and by
        ClusterIP (a relay per TCP port): services.py."""
        ns = self.pod["metadata"]["namespace"]
        # hosts_file and tcp_ports skip headless and ExternalName Services themselves.
        listed = self.kube.get(f"/api/v1/namespaces/{ns}/services")["items"]
        network.write_hosts(netns, services.hosts_file(self.pod, listed, socket.gethostname()))
        if self.proxy is not None:
            self.proxy.ensure(services.tcp_ports(listed))

    def _argv(self, c: Container) -> list[str]:
        spec = c.spec
        argv = [*spec.get("command", []), *spec.get("args", [])]
        if not spec.get("command"):  # the image's entrypoint, when we know it
            image = str(spec.get("image", "")).rsplit("/", 1)[-1].split(":")[0].split("@")[0]
            argv = [image, *spec.get("args", [])]
        return resolve([expand(a, c.env) for a in argv])

    def _start(self, c: Container) -> None:
        try:
            argv = self._argv(c)
        except ValueError as e:
            c.error = str(e)
            self._event("Warning", "Failed", f"container {c.name}: {e}")
            return
        if self.volumes is not None:
            try:
                argv = self._sandboxed(c, argv)
            except volumes.VolumeError as e:
                c.error = str(e)
                self._event("Warning", "FailedMount", f"container {c.name}: {e}")
                return
        pod_dir = self._pod_dir
        pod_dir.mkdir(parents=True, exist_ok=True)
        wd = c.spec.get("workingDir")
        cwd = Path(wd) if wd and Path(wd).is_dir() else pod_dir
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]  # execs: the PID is the command's
        with (pod_dir / f"{c.name}.log").open("ab") as out:
            c.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=c.env,
                cwd=cwd,
                start_new_session=True,
            )
        c.started_at, c.started_iso, c.restart_at = time.monotonic(), now_iso(), None
        c.started_ok = c.startup is None
        c.ready = c.readiness is None and c.started_ok
        for p in (c.readiness, c.liveness, c.startup):
            if p is not None:
                p.successes = p.failures = 0
                p.next_at = c.started_at + int(p.spec.get("initialDelaySeconds", 0))
        self._record_proc(c)
        log(f"{self.key}: started {c.name} pid {c.proc.pid}: {argv}")
        self._event("Normal", "Started", f"Started container {c.name}")

    def _sandboxed(self, c: Container, argv: list[str]) -> list[str]:
        assert self.volumes is not None
        binds = volumes.bind_args(volumes.binds(c.spec, self.volumes))
        if c.spec.get("securityContext", {}).get("readOnlyRootFilesystem"):
            binds.append("--read-only-root")
        return [sys.executable, "-m", "kinfer.testbed.sandbox", *binds, *KEEP, "--", *argv]

    def _proc_file(self, c: Container) -> Path:
        return self.state / "procs" / f"{self._uid}-{c.name}.json"

    def _record_proc(self, c: Container) -> None:
        """Let `down` find the process even if the launcher itself is killed."""
        assert c.proc is not None
        st = start_time(c.proc.pid)
        if st is not None:
            f = self._proc_file(c)
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps({"name": c.name, "pid": c.proc.pid, "started": st}))

    def _tick(self, c: Container, now: float) -> None:
        if c.proc is not None:
            code = c.proc.poll()
            if code is not None:
                self._exited(c, code, now)
            elif not c.started_ok:
                assert c.startup is not None
                if c.startup.due(now):
                    c.startup.record(self._probe(c, c.startup.spec), now)
                    if c.startup.successes >= 1:
                        c.started_ok, c.ready = True, c.readiness is None
                    elif c.startup.failures >= int(c.startup.spec.get("failureThreshold", 3)):
                        self._restart_unhealthy(c, "Startup", now)
            elif c.liveness and c.liveness.due(now):
                c.liveness.record(self._probe(c, c.liveness.spec), now)
                if c.liveness.failures >= int(c.liveness.spec.get("failureThreshold", 3)):
                    self._restart_unhealthy(c, "Liveness", now)
            elif c.readiness and c.readiness.due(now):
                c.readiness.record(self._probe(c, c.readiness.spec), now)
                if c.readiness.successes >= int(c.readiness.spec.get("successThreshold", 1)):
                    c.ready = True
                elif c.readiness.failures >= int(c.readiness.spec.get("failureThreshold", 3)):
                    c.ready = False
        elif c.restart_at is not None and now >= c.restart_at:
            c.restarts += 1
            self._start(c)

    def _restart_unhealthy(self, c: Container, probe: str, now: float) -> None:
        assert c.proc is not None
        self._event("Warning", "Unhealthy", f"{probe} probe failed: {c.name}")
        self._kill(c, self._grace())
        self._exited(c, c.proc.wait(), now)

    def _exited(self, c: Container, code: int, now: float) -> None:
        ran = now - c.started_at
        self._proc_file(c).unlink(missing_ok=True)
        term = {
            "exitCode": code if code >= 0 else 128 - code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": c.started_iso,
            "finishedAt": now_iso(),
        }
        c.proc, c.ready = None, False
        log(f"{self.key}: {c.name} exited with {code} after {ran:.1f} s")
        policy = self.pod["spec"].get("restartPolicy", "Always")
        if policy == "Always" or (policy == "OnFailure" and code != 0):
            c.last_term = term
            c.backoff_s = (
                BACKOFF_START_S
                if ran >= BACKOFF_RESET_AFTER_S or not c.backoff_s
                else min(c.backoff_s * 2, BACKOFF_MAX_S)
            )
            c.restart_at = now + c.backoff_s
            self._event("Warning", "BackOff", f"Back-off {c.backoff_s:.0f}s restarting {c.name}")
        else:
            c.term = term

    def _probe(self, c: Container, probe: Obj) -> bool:
        host = self.ip if self.netns else "127.0.0.1"
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "httpGet" in probe:
                h = probe["httpGet"]
                scheme = str(h.get("scheme", "HTTP")).lower()
                url = f"{scheme}://{h.get('host') or host}:{port_of(c.spec, h['port'])}"
                req = urllib.request.Request(url + h.get("path", "/"))
                for hdr in h.get("httpHeaders", []):
                    req.add_header(hdr["name"], hdr["value"])
                with DIRECT.open(req, timeout=timeout) as r:
                    return bool(200 <= r.status < 400)
            if "tcpSocket" in probe or "grpc" in probe:  # grpc: a TCP connect only
                port = port_of(c.spec, (probe.get("tcpSocket") or probe["grpc"])["port"])
                with socket.create_connection((host, port), timeout=timeout):
                    return True
            if "exec" in probe:
                argv = resolve(probe["exec"]["command"])
                if self.netns:
                    argv = ["ip", "netns", "exec", self.netns, *argv]
                return subprocess.run(argv, env=c.env, timeout=timeout, capture_output=True).returncode == 0
        except (OSError, urllib.error.URLError, ValueError, subprocess.TimeoutExpired):
            return False
        return False

    # --- stopping --------------------------------------------------------------------------

    def _grace(self) -> float:
        return float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))

    def _terminate(self) -> None:
        deadline = time.monotonic() + self.grace_s
        for c in self.containers:
            if c.proc is not None and c.proc.poll() is None:
                self._pre_stop(c, deadline)
        self._kill_all(max(0.0, deadline - time.monotonic()))
        for c in self.containers:
            c.ready = False
        self._patch()

    def _pre_stop(self, c: Container, deadline: float) -> None:
        hook = c.spec.get("lifecycle", {}).get("preStop")
        if not hook:
            return
        left = max(0.1, deadline - time.monotonic())
        try:
            if "exec" in hook:
                argv = resolve(hook["exec"]["command"])
                if self.netns:
                    argv = ["ip", "netns", "exec", self.netns, *argv]
                subprocess.run(argv, env=c.env, timeout=left, capture_output=True)
            elif "httpGet" in hook:
                h = hook["httpGet"]
                url = f"http://{self.ip}:{port_of(c.spec, h['port'])}{h.get('path', '/')}"
                DIRECT.open(url, timeout=left).close()
            elif "sleep" in hook:
                time.sleep(min(left, float(hook["sleep"]["seconds"])))
        except (OSError, ValueError, subprocess.TimeoutExpired, urllib.error.URLError) as e:
            log(f"{self.key}: preStop of {c.name} failed: {e!r}")

    def _kill_all(self, grace: float) -> None:
        running = [c for c in self.containers if c.proc is not None and c.proc.poll() is None]
        for c in running:
            self._signal(c, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(c.proc and c.proc.poll() is None for c in running):
            time.sleep(0.05)
        for c in running:
            self._kill(c, 0)
            if c.proc is not None:
                c.proc = None
            self._proc_file(c).unlink(missing_ok=True)

    def _kill(self, c: Container, grace: float) -> None:
        if c.proc is None:
            return
        self._signal(c, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            c.proc.wait(timeout=grace)
        self._signal(c, signal.SIGKILL)  # the whole group: children too
        try:
            c.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log(f"{self.key}: {c.name} pid {c.proc.pid} survived SIGKILL")

    @staticmethod
    def _signal(c: Container, sig: signal.Signals) -> None:
        if c.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(c.proc.pid, sig)

    # --- reporting -------------------------------------------------------------------------

    def _container_status(self, c: Container) -> Obj:
        st: Obj = {
            "name": c.name,
            "image": c.spec.get("image", ""),
            "imageID": "",
            "ready": c.ready,
            "restartCount": c.restarts,
            "started": c.proc is not None and c.started_ok,
        }
        if c.proc is not None:
            st["containerID"] = f"kinfer://{c.proc.pid}"
            st["state"] = {"running": {"startedAt": c.started_iso}}
        elif c.term is not None:
            st["state"] = {"terminated": c.term}
        elif c.error:
            st["state"] = {"waiting": {"reason": "CreateContainerError", "message": c.error}}
        elif c.restart_at is not None:
            msg = f"back-off {c.backoff_s:.0f}s restarting failed container {c.name}"
            st["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": msg}}
        else:
            st["state"] = {"waiting": {"reason": "ContainerCreating"}}
        if c.last_term is not None:
            st["lastState"] = {"terminated": c.last_term}
        return st

    def _patch(self) -> None:
        ready = all(c.ready for c in self.containers)
        status: Obj = {"containerStatuses": [self._container_status(c) for c in self.containers]}
        if all(c.term is not None for c in self.containers):
            ok = all(c.term and c.term["exitCode"] == 0 for c in self.containers)
            status["phase"] = "Succeeded" if ok else "Failed"
        conds = []
        for t in ("Ready", "ContainersReady"):
            prev = self.conditions.get(t)
            if prev is None or prev[0] != ready:
                self.conditions[t] = (ready, now_iso())
            conds.append(
                {
                    "type": t,
                    "status": str(ready),
                    "reason": None if ready else "ContainersNotReady",
                    "lastTransitionTime": self.conditions[t][1],
                }
            )
        status["conditions"] = conds
        body = json.dumps(status, sort_keys=True)
        if body == self.last_patch:
            return
        m = self.pod["metadata"]
        try:
            self.kube.patch_status(pod_path(m["namespace"], m["name"]), {"status": status})
            self.last_patch = body
        except KubeError as e:
            if e.status != 404:
                log(f"{self.key}: status patch failed: {e}")

    def _event(self, kind: str, reason: str, message: str) -> None:
        m = self.pod["metadata"]
        ev = {
            "metadata": {"generateName": f"{m['name']}.", "namespace": m["namespace"]},
            "involvedObject": {
                "kind": "Pod",
                "name": m["name"],
                "namespace": m["namespace"],
                "uid": m["uid"],
                "apiVersion": "v1",
            },
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": "kinfer-launcher", "host": self.pod["spec"]["nodeName"]},
            "firstTimestamp": now_iso(),
            "lastTimestamp": now_iso(),
            "count": 1,
        }
        # Best effort: the namespace may be terminating.
        with contextlib.suppress(KubeError, OSError):
            self.kube.create(f"/api/v1/namespaces/{m['namespace']}/events", ev)

    def _delete_pod(self) -> None:
        delete_now(self.kube, self.pod)


def delete_now(kube: Kube, pod: Obj) -> None:
    """Remove the pod object, as a kubelet does once its containers are gone."""
    m = pod["metadata"]
    body = {"gracePeriodSeconds": 0, "preconditions": {"uid": m["uid"]}}
    try:
        kube.delete(pod_path(m["namespace"], m["name"]), body)
    except KubeError as e:
        if e.status not in (404, 409):
            log(f"{m['namespace']}/{m['name']}: delete failed: {e}")


class Launcher:
    def __init__(self, kube: Kube, state: Path, relay_ports: list[int] | None = None) -> None:
        self.kube, self.state = kube, state
        api_port = int(kube.server.rsplit(":", 1)[1])
        self.host_ports = [api_port, *(relay_ports or [])]
        self.proxy = ServiceProxy(kube)
        self.runners: dict[str, PodRunner] = {}
        self.node_names = {n["metadata"]["name"] for n in nodes.fake_nodes()}
        self.stopping = threading.Event()
        self.launched: set[str] = set()

    def handle(self, kind: str, pod: Obj) -> None:
        meta, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
        if spec.get("nodeName") not in self.node_names:
            return
        uid = meta["uid"]
        runner = self.runners.get(uid)
        if runner is not None and runner.thread is not None and not runner.thread.is_alive():
            del self.runners[uid]
            runner = None
        if kind == "DELETED":
            if runner is not None:
                runner.stop(float(meta.get("deletionGracePeriodSeconds") or 0), finalize=False)
            return
        if meta.get("deletionTimestamp"):
            if runner is not None:
                grace = float(meta.get("deletionGracePeriodSeconds") or 0)
                runner.stop(grace, finalize=True)
            else:  # never ran (or ran and finished): nothing to stop
                threading.Thread(target=delete_now, args=(self.kube, pod), daemon=True).start()
            return
        if runner is None and uid not in self.launched:
            if status.get("phase") == "Running" and status.get("podIP"):
                runner = PodRunner(self.kube, pod, self.state, self.host_ports, self.proxy)
                self.runners[uid] = runner
                self.launched.add(uid)  # a pod is launched once, like a kubelet's pod worker
                runner.start()
        elif runner is not None:
            runner.pod["metadata"] = meta  # labels/annotations may change; spec may not

    def sync(self) -> str:
        """List pods, drop runners of pods that are gone, return the resourceVersion."""
        listing = self.kube.get("/api/v1/pods")
        present = set()
        for pod in listing["items"]:
            present.add(pod["metadata"]["uid"])
            self.handle("ADDED", pod)
        for uid, runner in list(self.runners.items()):
            if uid not in present:
                runner.stop(0, finalize=False)
        return str(listing["metadata"]["resourceVersion"])

    def run(self) -> None:
        network.bridge_up()
        network.service_ns_up()
        rv = self.sync()
        (self.state / "launcher.ready").write_text(str(os.getpid()))
        log(f"launcher ready, managing nodes {sorted(self.node_names)}")
        while not self.stopping.is_set():
            try:
                for ev in self.kube.watch("/api/v1/pods", rv, timeout_s=30):
                    obj = ev["object"]
                    if ev["type"] == "ERROR":
                        raise KubeError(int(obj.get("code", 500)), str(obj.get("message")))
                    rv = obj["metadata"]["resourceVersion"]
                    if ev["type"] != "BOOKMARK":
                        self.handle(ev["type"], obj)
                    if self.stopping.is_set():
                        break
            except (KubeError, OSError, ValueError) as e:
                log(f"watch ended ({e!r}); relisting")
                if self.stopping.wait(1):
                    break
                try:
                    rv = self.sync()
                except (KubeError, OSError) as e2:
                    log(f"relist failed: {e2!r}")

    def shutdown(self, grace_s: float) -> None:
        for r in list(self.runners.values()):
            r.stop(min(grace_s, r._grace()), finalize=False)
        for r in list(self.runners.values()):
            if r.thread is not None:
                r.thread.join(timeout=grace_s + 10)


def main() -> None:
    ap = argparse.ArgumentParser(description="Run real processes for the test bed's pods.")
    ap.add_argument("--kubeconfig", type=Path, required=True)
    ap.add_argument("--state", type=Path, required=True)
    ap.add_argument(
        "--shutdown-grace",
        type=float,
        default=3.0,
        help="seconds each pod gets to stop when the launcher stops",
    )
    ap.add_argument(
        "--relay-port",
        type=int,
        action="append",
        default=[],
        help="a host loopback port (besides the API server's) that pods holding a token reach",
    )
    args = ap.parse_args()
    launcher = Launcher(Kube(args.kubeconfig), args.state, args.relay_port)
    watcher = threading.Thread(target=launcher.run, name="watch", daemon=True)

    def on_term(signum: int, _frame: object) -> None:
        launcher.stopping.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    watcher.start()
    while not launcher.stopping.wait(0.5):
        if not watcher.is_alive():
            log("watch thread died")
            launcher.stopping.set()
    launcher.shutdown(args.shutdown_grace)
    log("launcher stopped")


if __name__ == "__main__":
    main()
