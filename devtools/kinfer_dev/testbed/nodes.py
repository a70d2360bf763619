"""The fake nodes and kwok's configuration.

kwok keeps the nodes Ready and gives scheduled pods an IP from their node's podCIDR; it does
not decide readiness (the launcher does, from a real probe) nor delete pods (the launcher does,
after SIGTERM and the grace period, like a kubelet).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kinfer_dev.testbed import versions

POD_RANGE = "10.88.0.0/16"  # all pod IPs; one bridge carries them (see launcher.py)
MANAGED_ANNOTATION = "kwok.x-k8s.io/node"  # kwok manages nodes with this annotation = "fake"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def _node(name: str, cidr: str, labels: dict[str, str], gpus: int) -> dict[str, Any]:
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    if gpus:
        resources["nvidia.com/gpu"] = str(gpus)
    spec: dict[str, Any] = {"podCIDR": cidr, "podCIDRs": [cidr]}
    if gpus:
        spec["taints"] = [GPU_TAINT]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {MANAGED_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                **labels,
            },
        },
        "spec": spec,
        # Loopback as the node address: anything that dials a "kubelet" stays on this machine.
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name},
            ],
            "capacity": resources,
            "allocatable": resources,
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": versions.KUBERNETES,
            },
        },
    }


def _gpu_labels(product: str, memory_mib: int) -> dict[str, str]:
    return {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": product,
        "nvidia.com/gpu.count": "4",
        "nvidia.com/gpu.memory": str(memory_mib),
    }


def fake_nodes() -> list[dict[str, Any]]:
    return [
        _node("gpu-l4-0", "10.88.1.0/24", _gpu_labels("NVIDIA-L4", 23034), gpus=4),
        _node("gpu-a100-0", "10.88.2.0/24", _gpu_labels("NVIDIA-A100-SXM4-80GB", 81920), gpus=4),
        _node("cpu-0", "10.88.3.0/24", {}, gpus=0),
    ]


# Replaces kwok's pod-ready stage: Running with an IP, but Ready=False until the launcher's
# probe passes. Once phase is Running the selector no longer matches, so kwok leaves the
# launcher's status patches alone.
POD_RUNNING_UNREADY = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-running-unready
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: 'DoesNotExist'}
    - {key: '.status.phase', operator: 'In', values: ['Pending']}
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Initialized}
      - {lastTransitionTime: {{ $now | Quote }}, status: "False", type: ContainersReady,
         reason: ContainersNotReady}
      - {lastTransitionTime: {{ $now | Quote }}, status: "False", type: Ready,
         reason: ContainersNotReady}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: false
        restartCount: 0
        started: false
        state:
          waiting: {reason: ContainerCreating}
      {{ end }}
      {{ $hostIPs := NodeIPsWith .spec.nodeName }}
      {{ with $hostIPs }}
      hostIP: {{ index . 0 | Quote }}
      hostIPs:
      {{ range . }}
      - ip: {{ . | Quote }}
      {{ end }}
      {{ end }}
      {{ $podIPs := PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
      {{ with $podIPs }}
      podIP: {{ index . 0 | Quote }}
      podIPs:
      {{ range . }}
      - ip: {{ . | Quote }}
      {{ end }}
      {{ end }}
      phase: Running
      startTime: {{ $now | Quote }}
"""  # noqa: E501


def kwok_config(kwok_module_dir: Path) -> str:
    """kwok v0.8 has no built-in stages: pass node stages from its module plus our pod stage."""
    docs = [
        yaml.safe_dump(
            {
                "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
                "kind": "KwokConfiguration",
                # A config file's options get no defaults for these: kwok exits on 0.
                "options": {
                    "cidr": "10.88.0.0/24",
                    "podPlayStageParallelism": 4,
                    "nodePlayStageParallelism": 4,
                    "nodeLeaseParallelism": 4,
                    "podsOnNodeSyncParallelism": 1,
                },
            }
        )
    ]
    for rel in ("node/fast/node-initialize.yaml", "node/heartbeat/node-heartbeat.yaml"):
        docs.append((kwok_module_dir / "kustomize" / "stage" / rel).read_text())
    docs.append(POD_RUNNING_UNREADY)
    return "---\n".join(d if d.endswith("\n") else d + "\n" for d in docs)
