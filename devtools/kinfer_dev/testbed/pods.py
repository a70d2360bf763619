"""Process supervision for one pod: start its containers in the pod's network namespace, run
its probes, restart with back-off, run preStop and stop it, and report its status (pods.py is
the kubelet part of the launcher; see launcher.py for the whole)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
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

from kinfer_dev.testbed import network, services, volumes
from kinfer_dev.testbed.kube import Kube, KubeError, Obj, pod_path
from kinfer_dev.testbed.podspec import container_env, expand, port_of, resolve
from kinfer_dev.testbed.procs import log, now_iso, start_time
from kinfer_dev.testbed.relay import Relay, host_loopback
from kinfer_dev.testbed.service_proxy import ServiceProxy

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
BACKOFF_RESET_AFTER_S = 60.0
TICK_S = 0.2
SERVICES_REFRESH_S = 3.0
"""How often a pod's Services are listed again: like cluster DNS, a pod resolves a Service
created after it started (an operator's retry can create one after the pod)."""
TERMINATION_MESSAGE_PATH = "/dev/termination-log"  # the default terminationMessagePath
MAX_TERMINATION_MESSAGE = 4096  # bytes a kubelet reads of it


def _source_roots() -> set[str]:
    """Where kinfer, kinfer_runtime and kinfer_dev are imported from (source roots in a checkout)."""
    roots = set()
    for name in ("kinfer", "kinfer_runtime", "kinfer_dev"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin is not None:
            roots.add(str(Path(spec.origin).resolve().parents[1]))
    return roots


# What the programs run by the sandbox need from the host, whatever volume covers it.
KEEP = [f"--keep={p}" for p in sorted({sys.prefix, sys.base_prefix, *_source_roots()})]


# Probes go straight to the pod, never through a proxy from the environment.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


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
    error_reason: str = "CreateContainerError"  # or CreateContainerConfigError (a missing Secret)
    readiness: Probe | None = None
    liveness: Probe | None = None
    startup: Probe | None = None  # until it passes, readiness and liveness are not run
    started_ok: bool = False

    @property
    def name(self) -> str:
        return str(self.spec["name"])


@dataclass
class PodRunner:
    kube: Kube
    pod: Obj
    state: Path
    host_ports: list[int] = field(default_factory=list)  # relayed into pods that hold a token
    proxy: ServiceProxy | None = None  # where its Services' relays are made (None: not made)
    containers: list[Container] = field(default_factory=list)
    init_containers: list[Container] = field(default_factory=list)  # run in order, each to exit 0
    initialized: bool = False
    stop_event: threading.Event = field(default_factory=threading.Event)
    grace_s: float = 30.0
    finalize: bool = False  # delete the pod object once the processes are gone
    netns: str | None = None
    _services_due: float = 0.0  # when the pod's Services are listed again (SERVICES_REFRESH_S)
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

    def _all(self) -> list[Container]:
        return [*self.init_containers, *self.containers]

    def _run(self) -> None:
        try:
            self._setup()
            while not self.stop_event.is_set():
                now = time.monotonic()
                if self.initialized:
                    for c in self.containers:
                        self._tick(c, now)
                else:
                    self._tick_init(now)
                self._patch()
                if self.netns and now >= self._services_due:
                    self._refresh_services(self.netns)
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
        for c in spec.get("initContainers", []):
            self.init_containers.append(Container(spec=c, env=container_env(self.pod, c)))
        self.initialized = not self.init_containers
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
        if volumes.needs_volumes(self.pod):
            if not self._make_volumes():
                return
            if volumes.mounts_token(self.pod):
                self._wire_to_cluster()
            elif self.netns:  # a model download: the stores (and Prometheus) on 127.0.0.1
                for port in self.host_ports[1:]:
                    self.relays.append(Relay(self.netns, ("127.0.0.1", port), host_loopback(port)))
        if self.initialized:
            for c in self.containers:
                self._start(c)

    def _tick_init(self, now: float) -> None:
        """Init containers one at a time; a failed one is restarted with back-off (restartPolicy
        Always and OnFailure), as a kubelet does; then the containers start."""
        for c in self.init_containers:
            if c.term is not None and c.term["exitCode"] == 0:
                continue
            if c.term is not None:  # failed for good (restartPolicy Never)
                return
            if c.proc is None and c.restart_at is None and not c.error:
                self._start(c)
            else:
                self._tick(c, now)
            return
        self.initialized = True
        for c in self.containers:
            self._start(c)

    def _make_volumes(self) -> bool:
        """Retry until the volumes are made (a new namespace's kube-root-ca.crt comes a moment
        after the namespace) or the pod is stopped; one FailedMount event per distinct error."""
        warned = ""
        while not self.stop_event.is_set():
            try:
                self.volumes = volumes.materialize(
                    self.kube, self.pod, self._pod_dir / "volumes", self.state / "nodes"
                )
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
        self._services_due = time.monotonic() + SERVICES_REFRESH_S
        if self.proxy is not None:
            self.proxy.ensure(services.tcp_ports(listed))

    def _refresh_services(self, netns: str) -> None:
        """Wire Services again; an API server that does not answer keeps the last view."""
        try:
            self._wire_services(netns)
        except (KubeError, OSError) as e:
            self._services_due = time.monotonic() + SERVICES_REFRESH_S
            log(f"{self.key}: Services not refreshed: {e!r}")

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
        try:
            secrets = volumes.secret_env(self.kube, self.pod["metadata"]["namespace"], c.spec)
        except volumes.VolumeError as e:  # the kubelet retries until the Secret is there
            if c.error != str(e):
                self._event("Warning", "Failed", f"Error: {e}")
            c.error, c.restart_at = str(e), time.monotonic() + 2
            c.error_reason = "CreateContainerConfigError"
            return
        c.error, c.error_reason = "", "CreateContainerError"
        env = {**c.env, **secrets}
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
                env=env,
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

    def _termination_file(self, c: Container) -> Path:
        """The host file bound at the container's terminationMessagePath (a kubelet's
        /var/lib/kubelet/pods/UID/containers/NAME/ID file): what it wrote there is its
        termination message."""
        return self._pod_dir / f"{c.name}.termination-log"

    def _sandboxed(self, c: Container, argv: list[str]) -> list[str]:
        assert self.volumes is not None
        binds = volumes.bind_args(volumes.binds(c.spec, self.volumes))
        # A fresh, empty message per run, as a kubelet makes one file per container instance.
        message = self._termination_file(c)
        message.parent.mkdir(parents=True, exist_ok=True)
        message.write_bytes(b"")
        path = c.spec.get("terminationMessagePath") or TERMINATION_MESSAGE_PATH
        binds.append(f"--bind={message}:{path}")
        if c.spec.get("securityContext", {}).get("readOnlyRootFilesystem"):
            binds.append("--read-only-root")
        return [sys.executable, "-m", "kinfer_dev.testbed.sandbox", *binds, *KEEP, "--", *argv]

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
            c.restarts += 0 if c.error else 1  # a missing Secret is no restart
            self._start(c)

    def _restart_unhealthy(self, c: Container, probe: str, now: float) -> None:
        assert c.proc is not None
        self._event("Warning", "Unhealthy", f"{probe} probe failed: {c.name}")
        self._kill(c, self._grace())
        self._exited(c, c.proc.wait(), now)

    def _exited(self, c: Container, code: int, now: float) -> None:
        ran = now - c.started_at
        self._proc_file(c).unlink(missing_ok=True)
        term: Obj = {
            "exitCode": code if code >= 0 else 128 - code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": c.started_iso,
            "finishedAt": now_iso(),
        }
        message = self._termination_message(c)
        if not message and code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = self._log_tail(c)
        if message:
            term["message"] = message
        c.proc, c.ready = None, False
        log(f"{self.key}: {c.name} exited with {code} after {ran:.1f} s")
        policy = self.pod["spec"].get("restartPolicy", "Always")
        init = c in self.init_containers
        if init and code == 0:
            c.term = term
        elif policy == "Always" or (policy == "OnFailure" and code != 0) or (init and policy != "Never"):
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

    def _termination_message(self, c: Container) -> str:
        """What the container wrote to its terminationMessagePath, at most 4096 bytes (as a
        kubelet reads it); "" when it wrote nothing or runs without volumes (no file is bound)."""
        if self.volumes is None:
            return ""
        try:
            with self._termination_file(c).open("rb") as f:
                return f.read(MAX_TERMINATION_MESSAGE).decode(errors="replace")
        except OSError:
            return ""

    def _log_tail(self, c: Container) -> str:
        """What a kubelet takes from the log for FallbackToLogsOnError: the last 80 lines, at
        most 2048 bytes (the file here also holds earlier runs: only their tail is read)."""
        try:
            with (self._pod_dir / f"{c.name}.log").open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 2048))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-80:])

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
        for c in self._all():
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
        running = [c for c in self._all() if c.proc is not None and c.proc.poll() is None]
        for c in running:
            self._signal(c, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(c.proc and c.proc.poll() is None for c in running):
            time.sleep(0.05)
        for c in running:
            self._kill(c, 0)
            c.proc = None
        # Every record goes, also that of a container which exited before its exit was ticked (a
        # crash-looping server): a record left behind names a dead PID.
        for c in self._all():
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
            st["state"] = {"waiting": {"reason": c.error_reason, "message": c.error}}
        elif c.restart_at is not None:
            msg = f"back-off {c.backoff_s:.0f}s restarting failed container {c.name}"
            st["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": msg}}
        else:
            waiting = "ContainerCreating" if self.initialized else "PodInitializing"
            st["state"] = {"waiting": {"reason": waiting}}
        if c.last_term is not None:
            st["lastState"] = {"terminated": c.last_term}
        return st

    def _patch(self) -> None:
        ready = self.initialized and all(c.ready for c in self.containers)
        status: Obj = {"containerStatuses": [self._container_status(c) for c in self.containers]}
        if self.init_containers:
            status["initContainerStatuses"] = [self._container_status(c) for c in self.init_containers]
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
