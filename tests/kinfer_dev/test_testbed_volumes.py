"""The launcher's pod volumes (kinfer_dev.testbed.volumes) on their own; e2e/test_helm.py runs them
for real under the chart's operator pods."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kinfer_dev.testbed import volumes
from kinfer_dev.testbed.kube import KubeError

# What the ServiceAccount admission plugin adds to a pod that automounts its token.
SA_VOLUME = {
    "name": "kube-api-access-x",
    "projected": {
        "sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {
                "downwardAPI": {
                    "items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]
                }
            },
        ]
    },
}
SA_MOUNT = {"name": "kube-api-access-x", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
            "readOnly": True}  # fmt: skip


def pod(volumes_: list[dict[str, Any]], mounts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {"name": "op-1", "namespace": "kinfer-system", "uid": "u-1"},
        "spec": {
            "serviceAccountName": "kinfer-operator",
            "containers": [{"name": "operator", "volumeMounts": mounts}],
            "volumes": volumes_,
        },
    }


class FakeKube:
    """The two calls volumes.py makes, answering from a dict of ConfigMaps."""

    def __init__(self, configmaps: dict[str, dict[str, Any]]) -> None:
        self.configmaps = configmaps
        self.token_requests: list[tuple[str, dict[str, Any]]] = []

    def get(self, path: str) -> dict[str, Any]:
        name = path.rsplit("/", 1)[1]
        if name not in self.configmaps:
            raise KubeError(404, f'configmaps "{name}" not found')
        return self.configmaps[name]

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.token_requests.append((path, body))
        return {"status": {"token": "a.b.c"}}


def test_a_pod_mounting_the_projected_token_is_recognised() -> None:
    assert volumes.mounts_token(pod([SA_VOLUME], [SA_MOUNT]))
    assert not volumes.mounts_token(pod([SA_VOLUME], []))  # declared, never mounted
    assert not volumes.mounts_token(
        pod([{"name": "tmp", "emptyDir": {}}], [{"name": "tmp", "mountPath": "/tmp"}])
    )


def test_the_service_account_volume_holds_a_pod_bound_token_the_ca_and_the_namespace(tmp_path: Path) -> None:
    kube = FakeKube({"kube-root-ca.crt": {"data": {"ca.crt": "CA"}}})
    made = volumes.materialize(kube, pod([SA_VOLUME], [SA_MOUNT]), tmp_path)  # type: ignore[arg-type]
    d = made["kube-api-access-x"]
    assert (d / "token").read_text() == "a.b.c"
    assert (d / "ca.crt").read_text() == "CA"
    assert (d / "namespace").read_text() == "kinfer-system"
    ((path, body),) = kube.token_requests
    assert path == "/api/v1/namespaces/kinfer-system/serviceaccounts/kinfer-operator/token"
    assert body["spec"]["boundObjectRef"] == {"apiVersion": "v1", "kind": "Pod", "name": "op-1", "uid": "u-1"}
    assert body["spec"]["expirationSeconds"] == 3607
    binds = volumes.binds(pod([SA_VOLUME], [SA_MOUNT])["spec"]["containers"][0], made)
    assert volumes.bind_args(binds) == [f"--bind={d}:/var/run/secrets/kubernetes.io/serviceaccount:ro"]


def test_a_missing_configmap_is_a_mount_error_naming_it_unless_optional(tmp_path: Path) -> None:
    cfg = {"name": "config", "configMap": {"name": "kinfer-operator"}}
    with pytest.raises(volumes.VolumeError, match='configmap "kinfer-operator"'):
        volumes.materialize(FakeKube({}), pod([cfg], []), tmp_path)  # type: ignore[arg-type]
    cfg["configMap"]["optional"] = True  # type: ignore[index]
    assert volumes.materialize(FakeKube({}), pod([cfg], []), tmp_path)  # type: ignore[arg-type]


def test_every_key_of_a_configmap_becomes_a_file(tmp_path: Path) -> None:
    kube = FakeKube({"kinfer-operator": {"data": {"config.yaml": "a: 1\n"}, "binaryData": {"b": "AAE="}}})
    made = volumes.materialize(  # type: ignore[arg-type]
        kube, pod([{"name": "config", "configMap": {"name": "kinfer-operator"}}], []), tmp_path
    )
    assert (made["config"] / "config.yaml").read_text() == "a: 1\n"
    assert (made["config"] / "b").read_bytes() == b"\x00\x01"


@pytest.mark.parametrize(
    ("volume", "message"),
    [
        ({"name": "data", "persistentVolumeClaim": {"claimName": "x"}}, "type persistentVolumeClaim"),
        ({"name": "s", "projected": {"sources": [{"secret": {"name": "x"}}]}}, "projected source"),
        (
            {"name": "c", "configMap": {"name": "cm", "items": [{"key": "k", "path": "../../escape"}]}},
            "leaves the volume",
        ),
    ],
)
def test_what_the_test_bed_cannot_do_is_refused_by_name(
    tmp_path: Path, volume: dict[str, Any], message: str
) -> None:
    kube = FakeKube({"cm": {"data": {"k": "v"}}})
    with pytest.raises(volumes.VolumeError, match=message):
        volumes.materialize(kube, pod([volume], []), tmp_path)  # type: ignore[arg-type]


def test_sub_path_mounts_are_refused() -> None:
    container = {"volumeMounts": [{"name": "tmp", "mountPath": "/x", "subPath": "y"}]}
    with pytest.raises(volumes.VolumeError, match="subPath"):
        volumes.binds(container, {"tmp": Path("/t")})


@pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root (as the test bed does)")
def test_a_volume_over_the_programs_directory_does_not_hide_the_program(tmp_path: Path) -> None:
    covered, empty = tmp_path / "covered", tmp_path / "emptydir"
    (covered / "venv").mkdir(parents=True)
    (covered / "venv" / "program").write_text("runs\n")
    empty.mkdir()

    def run(*keep: str) -> subprocess.CompletedProcess[str]:
        argv = ["unshare", "--mount", "--propagation", "private", sys.executable, "-m",
                "kinfer_dev.testbed.sandbox", f"--bind={empty}:{covered}", *keep, "--",
                "cat", str(covered / "venv" / "program")]  # fmt: skip
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    assert run().returncode != 0  # the emptyDir hides it, as on a checkout under /tmp
    kept = run(f"--keep={covered / 'venv'}")
    assert (kept.returncode, kept.stdout) == (0, "runs\n"), kept.stderr
    # Outside the container the volume holds only the empty mount point the bind needed.
    assert not any((empty / "venv").iterdir())


def test_host_paths_belong_to_their_node_and_outlive_the_pod(tmp_path: Path) -> None:
    cache = {
        "name": "model-cache",
        "hostPath": {"path": "/var/cache/kinfer/models", "type": "DirectoryOrCreate"},
    }
    p = pod([cache, {"name": "model", "emptyDir": {}}], [])
    p["spec"]["nodeName"] = "gpu-1"
    made = volumes.materialize(FakeKube({}), p, tmp_path / "pod", tmp_path / "nodes")  # type: ignore[arg-type]
    assert made["model-cache"] == tmp_path / "nodes" / "gpu-1" / "hostpath" / "var/cache/kinfer/models"
    assert made["model-cache"].is_dir() and made["model"] == tmp_path / "pod" / "model"
    p["spec"]["volumes"][0]["hostPath"]["type"] = "Directory"
    p["spec"]["nodeName"] = "gpu-2"
    with pytest.raises(volumes.VolumeError, match="does not exist"):
        volumes.materialize(FakeKube({}), p, tmp_path / "pod2", tmp_path / "nodes")  # type: ignore[arg-type]


def test_secret_env_comes_from_env_from_and_key_refs_and_a_missing_secret_is_named() -> None:
    import base64

    secret = {"data": {k: base64.b64encode(v.encode()).decode() for k, v in {"A": "1", "B": "2"}.items()}}
    kube = FakeKube({"keys": secret})
    container = {
        "envFrom": [{"secretRef": {"name": "keys"}}, {"secretRef": {"name": "gone", "optional": True}}],
        "env": [{"name": "C", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "B"}}}],
    }
    assert volumes.secret_env(kube, "ns", container) == {"A": "1", "B": "2", "C": "2"}  # type: ignore[arg-type]
    with pytest.raises(volumes.VolumeError, match='secret "absent" not found'):
        volumes.secret_env(kube, "ns", {"envFrom": [{"secretRef": {"name": "absent"}}]})  # type: ignore[arg-type]
    assert volumes.needs_volumes({"spec": {"containers": [], "initContainers": [{"name": "i"}]}})


@pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root (as the test bed does)")
def test_a_file_is_bound_on_a_file_made_as_its_mount_point(tmp_path: Path) -> None:
    """The termination log: the container writes /dev/termination-log, the host file gets it."""
    message, where = tmp_path / "server.termination-log", tmp_path / "dev" / "termination-log"
    message.write_bytes(b"")
    argv = ["unshare", "--mount", "--propagation", "private", sys.executable, "-m",
            "kinfer_dev.testbed.sandbox", f"--bind={message}:{where}", "--",
            sys.executable, "-c", f"open({str(where)!r}, 'w').write('done')"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert message.read_text() == "done"
    assert where.read_text() == ""  # outside, only the empty mount point


class EventSink:
    """What PodRunner asks of the API server when a container exits: an event."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.events.append(body)
        return body


def exited(tmp_path: Path, code: int, written: str, log: str = "", policy: str = "File") -> dict[str, Any]:
    """containerStatus.state.terminated of an init container that wrote `written` to its
    termination log and `log` to its log, then exited with `code`."""
    from kinfer_dev.testbed.pods import Container, PodRunner

    spec = {"name": "storage-initializer", "terminationMessagePolicy": policy}
    the_pod = {
        "metadata": {"name": "m-1", "namespace": "ns", "uid": "u-2"},
        "spec": {"nodeName": "n", "restartPolicy": "Always", "initContainers": [spec], "containers": []},
    }
    runner = PodRunner(EventSink(), the_pod, tmp_path)  # type: ignore[arg-type]
    runner.volumes = {}  # sandboxed, so its termination log is bound
    c = Container(spec=spec, env={})
    runner.init_containers.append(c)
    runner._pod_dir.mkdir(parents=True)
    runner._termination_file(c).write_text(written)
    (runner._pod_dir / "storage-initializer.log").write_text(log)
    runner._exited(c, code, 0.0)
    term = c.term if code == 0 else c.last_term
    assert term is not None
    return term


def test_a_successful_container_reports_its_termination_message_as_a_kubelet_does(tmp_path: Path) -> None:
    term = exited(tmp_path, 0, '{"bytes": 5}', log="a log line\n")
    assert (term["exitCode"], term["reason"], term["message"]) == (0, "Completed", '{"bytes": 5}')


def test_a_failure_reports_its_message_and_falls_back_to_the_log_only_when_it_wrote_none(
    tmp_path: Path,
) -> None:
    fallback = "FallbackToLogsOnError"
    wrote = exited(tmp_path / "a", 1, "NoSpace: s3://b/k: full", log="noise\nlast\n", policy=fallback)
    assert wrote["message"] == "NoSpace: s3://b/k: full"
    silent = exited(tmp_path / "b", 1, "", log="noise\nlast\n", policy=fallback)
    assert silent["message"] == "noise\nlast"
    assert "message" not in exited(tmp_path / "c", 1, "", log="noise\n")  # policy File: no fallback
    assert "message" not in exited(tmp_path / "d", 0, "", log="noise\n", policy=fallback)
