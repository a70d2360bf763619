"""What a pod's spec says to run: the allow-listed command, its environment, named ports.

Pure functions of the pod object (and the launcher's own interpreter and environment).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from kinfer_dev.testbed import triton
from kinfer_dev.testbed.kube import Obj


def allowed_names() -> set[str]:
    extra = {n for n in os.environ.get("KINFER_LAUNCHER_ALLOW", "").split(",") if n}
    return {"python", "python3", "kinfer", "kinfer-runtime", "sleep", "tritonserver"} | extra


def resolve(argv: list[str]) -> list[str]:
    """The argv to run, or ValueError when its command is not allowed."""
    if not argv:
        raise ValueError("no command")
    name = os.path.basename(argv[0])
    if re.fullmatch(r"python3(\.\d+)?", name) or name == "python":
        return [sys.executable, *argv[1:]]
    if name not in allowed_names():
        raise ValueError(f"command {argv[0]!r} is not on the launcher's allow-list")
    if name == "tritonserver":  # the nvidia-pytriton wheel's, through its wrapper (triton.py)
        if not triton.installed():
            raise ValueError(f"tritonserver is not installed ({triton.wrapper()}: scripts/bootstrap)")
        return [str(triton.wrapper()), *argv[1:]]
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
    if os.environ.get("PYTHONPATH"):
        # The launcher's code is the pods' code (a checkout on PYTHONPATH, not only the venv's).
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = expand(e["value"], env)
        elif fp := e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath"):
            m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", fp)
            env[e["name"]] = meta.get(m.group(1), {}).get(m.group(2), "") if m else fields.get(fp, "")
        # resourceFieldRef, configMapKeyRef, secretKeyRef: not supported (docs/testbed.md)
    return env


def port_of(c: Obj, port: Any) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in c.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"no port named {port!r}")
