"""NVIDIA Triton for the test bed: the `tritonserver` binary shipped in the nvidia-pytriton wheel.

`install()` makes, under $KINFER_CACHE (~/.cache/kinfer):
- `bench-venvs/triton`: a venv of the interpreter's base Python with nvidia-pytriton (the same
  venv bench/runtime_vs_peers.py uses); a .pth file appends the project venv's site-packages, so
  the Python backend's models import torch from there (no second torch) while numpy 1.x, which
  the backend stub is built against, comes from the venv itself;
- `triton/backends`: the wheel's backends with the Python backend stub for this Python version;
- `triton/bin/tritonserver`: a wrapper that sets PATH (the stub's embedded Python finds its
  site-packages through the venv first on PATH), LD_LIBRARY_PATH (the interpreter's libpython and
  the wheel's bundled libraries) and `--backend-directory`, then execs the real binary.

The launcher runs a container whose command is `tritonserver` with that wrapper (podspec.py).
Stdlib only. Idempotent: instant when installed. `python -m kinfer_dev.testbed.triton` installs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from kinfer_dev.testbed.install import cache_dir

WHEEL = "nvidia-pytriton==0.7.0"


def venv() -> Path:
    return cache_dir() / "bench-venvs" / "triton"


def wrapper() -> Path:
    return cache_dir() / "triton" / "bin" / "tritonserver"


def _pyver() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def home() -> Path:
    """The tritonserver tree inside the wheel."""
    return venv() / "lib" / f"python{_pyver()}" / "site-packages" / "pytriton" / "tritonserver"


def installed() -> bool:
    return wrapper().is_file() and (venv() / ".complete").is_file()


def _make_venv() -> None:
    target = venv()
    if not (target / ".complete").is_file():
        shutil.rmtree(target, ignore_errors=True)
        base = Path(os.path.realpath(sys.base_prefix)) / "bin" / f"python{_pyver()}"
        subprocess.run([str(base), "-m", "venv", str(target)], check=True)
        pip = [str(target / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", WHEEL]
        subprocess.run(pip, check=True)
        (target / ".complete").touch()
    # Always: torch and the rest from the venv of whoever installs (the project's).
    site = target / "lib" / f"python{_pyver()}" / "site-packages"
    (site / "zz_project_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")


def _make_wrapper() -> None:
    tree = home()
    backends = cache_dir() / "triton" / "backends"
    if not (backends / "python" / "triton_python_backend_stub").is_file():
        shutil.rmtree(backends, ignore_errors=True)
        shutil.copytree(tree / "backends", backends)
        shutil.copy(
            tree / "python_backend_stubs" / _pyver() / "triton_python_backend_stub", backends / "python"
        )
    libpython = Path(os.path.realpath(sys.base_prefix)) / "lib"
    libs = tree.parent.parent / "nvidia_pytriton.libs"
    script = f"""#!/bin/sh
# Written by kinfer_dev.testbed.triton: the wheel's tritonserver with its Python backend.
export PATH="{venv() / "bin"}:$PATH"
export LD_LIBRARY_PATH="{libpython}:{libs}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"
unset PYTHONPATH PYTHONHOME
exec "{tree / "bin" / "tritonserver"}" --backend-directory="{backends}" "$@"
"""
    out = wrapper()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(script)
    tmp.chmod(0o755)
    tmp.replace(out)


def install() -> float:
    """Install what is missing; the seconds it took. Run it with the project venv's Python."""
    t0 = time.monotonic()
    _make_venv()
    _make_wrapper()
    return time.monotonic() - t0


if __name__ == "__main__":
    seconds = install()
    print(f"triton: {wrapper()} ready in {seconds:.0f} s (site-packages {sysconfig.get_paths()['purelib']})")
