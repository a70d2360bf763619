"""Build the test bed's Go binaries from their modules into a cache outside the repo.

Everything comes from the Go module proxy through ordinary `go` commands. Each binary lands in
`$KINFER_CACHE/bin/<name>-<version>/`; a directory that exists is complete (it is renamed into
place after the build), so a second install is instant. Stdlib only: CI runs this before the
project's Python dependencies are installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kinfer_dev.testbed import versions


def cache_dir() -> Path:
    return Path(os.environ.get("KINFER_CACHE", Path.home() / ".cache" / "kinfer"))


def go_env() -> dict[str, str]:
    cache = cache_dir()
    env = dict(os.environ)
    env.update(
        GOMODCACHE=str(cache / "gomod"),
        GOCACHE=str(cache / "gobuild"),
        # Fail loudly instead of downloading another toolchain when a go line is too new.
        GOTOOLCHAIN="local",
        GOFLAGS="-modcacherw -mod=mod",
        CGO_ENABLED="0",
    )
    return env


@dataclass(frozen=True)
class GoBinary:
    """One `go build` of packages from a module, through a generated wrapper module."""

    name: str  # cache key, e.g. "k8s"
    module: str
    version: str
    packages: tuple[str, ...]
    ldflags: str = "-s -w"
    extra_gomod: str = ""  # replace lines etc.
    tags: str = ""  # go build -tags

    @property
    def bin_dir(self) -> Path:
        return cache_dir() / "bin" / f"{self.name}-{self.version}"

    def binaries(self) -> list[Path]:
        return [self.bin_dir / binary_name(p) for p in self.packages]

    def installed(self) -> bool:
        return all(b.is_file() for b in self.binaries())


def binary_name(package: str) -> str:
    """What `go build -o DIR/` names a package's binary: a /vN suffix is skipped."""
    parts = package.split("/")
    return parts[-2] if re.fullmatch(r"v[0-9]+", parts[-1]) else parts[-1]


def _go(args: list[str], cwd: Path, log: Path) -> str:
    with log.open("a") as f:
        f.write(f"$ go {' '.join(args)}\n")
        f.flush()
        proc = subprocess.run(
            ["go", *args], cwd=cwd, env=go_env(), stdout=subprocess.PIPE, stderr=f, text=True
        )
        f.write(proc.stdout)
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"go {args[0]} failed in {cwd} (log {log}):\n{tail}")
    return proc.stdout


def module_info(module: str, version: str, log: Path) -> dict[str, str]:
    out = _go(["mod", "download", "-json", f"{module}@{version}"], cache_dir(), log)
    info: dict[str, str] = json.loads(out)
    if info.get("Error"):
        raise RuntimeError(f"{module}@{version}: {info['Error']}")
    return info


def build(b: GoBinary, log: Path) -> None:
    """Build `b` unless cached. The wrapper's go.mod requires the module and lists the packages
    as tools, so `go mod tidy` resolves exactly their dependency graph."""
    if b.installed():
        return
    wrap = cache_dir() / "wrap" / f"{b.name}-{b.version}"
    wrap.mkdir(parents=True, exist_ok=True)
    tools = "".join(f"\t{p}\n" for p in b.packages)
    (wrap / "go.mod").write_text(
        f"module kinfer.local/{b.name}build\n\ngo {versions.GO_LINE}\n\n"
        f"require {b.module} {b.version}\n\n{b.extra_gomod}\ntool (\n{tools})\n"
    )
    _go(["mod", "tidy"], wrap, log)
    tmp = b.bin_dir.with_name(b.bin_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    procs = str(min(os.cpu_count() or 2, 4))
    tags = ["-tags", b.tags] if b.tags else []
    flags = ["-p", procs, "-trimpath", *tags, "-ldflags", b.ldflags, "-o", f"{tmp}/"]
    _go(["build", *flags, *b.packages], wrap, log)
    shutil.rmtree(b.bin_dir, ignore_errors=True)
    tmp.rename(b.bin_dir)


def kubernetes(log: Path) -> GoBinary:
    """k8s.io/kubernetes replaces every staging module with ./staging/...; a wrapper must replace
    them with the published v0.X.Y versions. The list is read from the real go.mod."""
    v = versions.KUBERNETES
    info = module_info("k8s.io/kubernetes", v, log)
    gomod = Path(info["GoMod"]).read_text()
    staging = sorted(set(re.findall(r"(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", gomod)))
    if not staging:
        raise RuntimeError(f"no staging replaces in {info['GoMod']}")
    staging_v = "v0." + v.removeprefix("v1.")
    replaces = "replace (\n" + "".join(f"\t{m} => {m} {staging_v}\n" for m in staging) + ")\n"
    # Keep Kubernetes' own GODEBUG defaults: only the main module's godebug lines count.
    godebug = "".join(line + "\n" for line in gomod.splitlines() if line.startswith("godebug "))
    major, minor = v.removeprefix("v").split(".")[:2]
    ld = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        ld += [
            f"-X {pkg}.gitVersion={v}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    cmds = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
    return GoBinary(
        name="k8s",
        module="k8s.io/kubernetes",
        version=v,
        packages=tuple(f"k8s.io/kubernetes/cmd/{c}" for c in cmds),
        ldflags=" ".join(ld),
        extra_gomod=godebug + "\n" + replaces,
    )


def others() -> list[GoBinary]:
    h = versions.HELM
    helm_ld = " ".join(
        [
            "-s -w",
            f"-X helm.sh/helm/v3/internal/version.version={h}",
            "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
            # The Kubernetes version `helm template` and `helm lint` assume offline, as helm's
            # Makefile sets it from its client-go (v0.36 → 1.36); without it helm says 1.20.
            *(
                f"-X helm.sh/helm/v3/pkg/{pkg}.k8sVersion{part}"
                for pkg in ("chartutil", "lint/rules")
                for part in ("Major=1", "Minor=36")
            ),
        ]
    )
    return [
        # etcd's server/go.mod replaces its siblings with ../; a dependency's replaces are ignored.
        GoBinary(
            "etcd",
            "go.etcd.io/etcd/server/v3",
            versions.ETCD,
            ("go.etcd.io/etcd/server/v3",),
            f"-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=module-{versions.ETCD}",
        ),
        GoBinary("kwok", "sigs.k8s.io/kwok", versions.KWOK, ("sigs.k8s.io/kwok/cmd/kwok",)),
        GoBinary("helm", "helm.sh/helm/v3", versions.HELM, ("helm.sh/helm/v3/cmd/helm",), helm_ld),
        prometheus(),
        *storage(),
    ]


def storage() -> list[GoBinary]:
    """The object store and the registry that `s3://` and `oci://` models come from."""
    return [
        GoBinary("minio", "github.com/minio/minio", versions.MINIO, ("github.com/minio/minio",)),
        GoBinary(
            "registry",
            "github.com/distribution/distribution/v3",
            versions.DISTRIBUTION,
            ("github.com/distribution/distribution/v3/cmd/registry",),
            "-s -w -X github.com/distribution/distribution/v3/version.version=" + versions.DISTRIBUTION,
        ),
    ]


def prometheus() -> GoBinary:
    v = versions.PROMETHEUS
    minor, patch = v.removeprefix("v0.").split(".")
    release = f"{minor[0]}.{int(minor[1:])}.{patch}"  # v0.316.0 -> 3.16.0
    common = "github.com/prometheus/common/version"
    return GoBinary(
        "prometheus",
        "github.com/prometheus/prometheus",
        v,
        ("github.com/prometheus/prometheus/cmd/prometheus",),
        f"-s -w -X {common}.Version={release} -X {common}.Branch=module",
        # Only the kubernetes service discovery: skips compiling every cloud SDK.
        tags="remove_all_sd,enable_kubernetes_sd",
    )


def bench_tools() -> list[GoBinary]:
    """Compiled load clients for the runtime benchmark; not part of the test bed."""
    return [
        GoBinary("vegeta", "github.com/tsenart/vegeta/v12", versions.VEGETA,
                 ("github.com/tsenart/vegeta/v12",)),
        GoBinary("ghz", "github.com/bojand/ghz", versions.GHZ, ("github.com/bojand/ghz/cmd/ghz",),
                 f"-s -w -X main.version={versions.GHZ}"),
    ]  # fmt: skip


@dataclass(frozen=True)
class Paths:
    """Where the installed binaries are (what `bed` needs)."""

    k8s: Path
    etcd: Path
    kwok: Path
    helm: Path
    prometheus: Path
    minio: Path
    registry: Path


def paths() -> Paths:
    b = cache_dir() / "bin"
    return Paths(
        k8s=b / f"k8s-{versions.KUBERNETES}",
        etcd=b / f"etcd-{versions.ETCD}" / "server",
        kwok=b / f"kwok-{versions.KWOK}" / "kwok",
        helm=b / f"helm-{versions.HELM}" / "helm",
        prometheus=b / f"prometheus-{versions.PROMETHEUS}" / "prometheus",
        minio=b / f"minio-{versions.MINIO}" / "minio",
        registry=b / f"registry-{versions.DISTRIBUTION}" / "registry",
    )


SOURCES = (("sigs.k8s.io/gateway-api", versions.GATEWAY_API),)
"""Modules the test bed reads files from (CRDs), fetched at install so that tests need no network."""


def module_dir(module: str, version: str) -> Path:
    """The module's source directory in the module cache, downloaded first if it is not there
    (offline when it is)."""
    with tempfile.TemporaryDirectory() as scratch:
        # `go mod download` needs a module to run in; an empty one is enough.
        (Path(scratch) / "go.mod").write_text("module kinfer.local/download\n")
        out = subprocess.run(
            ["go", "mod", "download", "-json", f"{module}@{version}"],
            cwd=scratch, env=go_env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"go mod download {module}@{version} failed:\n{out.stdout}{out.stderr}")
    return Path(json.loads(out.stdout)["Dir"])


def missing(helm: bool = True) -> list[str]:
    """Binaries not installed yet (helm is a tool for users, `up` does not need it)."""
    p = paths()
    need = [p.k8s / c for c in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")]
    need += [p.k8s / "kubectl", p.etcd, p.kwok, p.prometheus] + ([p.helm] if helm else [])
    return [str(x) for x in need if not x.is_file()]


def install_all(only: list[str] | None = None, echo: bool = True) -> None:
    """Build everything missing; one log per binary under $KINFER_CACHE/logs."""
    if shutil.which("go") is None:
        raise RuntimeError("the go toolchain is not on PATH (needs Go >= " + versions.GO_LINE + ")")
    logs = cache_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if only == ["bench"]:
        builds = bench_tools()
        only = None
    else:
        builds = [kubernetes(logs / "k8s.log"), *others()]
    for module, version in SOURCES if not only and builds[0].name == "k8s" else ():
        if echo:
            print(f"{module} {version}: sources in {module_dir(module, version)}", flush=True)
    for b in builds:
        if only and b.name not in only:
            continue
        t0 = time.monotonic()
        if b.installed():
            if echo:
                print(f"{b.name} {b.version}: cached in {b.bin_dir}", flush=True)
            continue
        if echo:
            print(f"{b.name} {b.version}: building (log {logs / b.name}.log) ...", flush=True)
        build(b, logs / f"{b.name}.log")
        if echo:
            print(f"{b.name} {b.version}: built in {time.monotonic() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    install_all(sys.argv[1:] or None)
