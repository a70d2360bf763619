"""`kinfer dev …`: build, start, stop and inspect the local test bed."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kinfer_dev.testbed import bed, install, versions

STATE_HELP = "Test bed state directory [env KINFER_TESTBED_STATE, default /tmp/kinfer-testbed]."


def _state_option(f: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--state",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help=STATE_HELP,
    )(f)


def _state(state: Path | None) -> Path:
    return state if state is not None else bed.default_state_dir()


@click.group()
def dev() -> None:
    """A real Kubernetes control plane on this machine, for development and e2e tests.

    etcd, kube-apiserver, kube-controller-manager and kube-scheduler built from their Go modules,
    kwok for fake GPU nodes, a launcher that runs each pod as a real process in a network
    namespace of its own, and Prometheus discovering pods through the API server.

    \b
    kinfer dev install          # once; builds into ~/.cache/kinfer (cold: many minutes)
    kinfer dev up               # seconds once installed
    eval "$(kinfer dev env)"    # KUBECONFIG, KINFER_PROMETHEUS_URL, KINFER_GATEWAY_URL/_GRPC, PATH
    kinfer dev down
    """


@dev.command("install")
@click.option(
    "--only",
    multiple=True,
    type=click.Choice(["k8s", "etcd", "kwok", "helm", "prometheus", "traefik"]),
    help="Build only these (repeatable).",
)
def install_cmd(only: tuple[str, ...]) -> None:
    """Build the test bed's binaries from the Go module proxy into ~/.cache/kinfer/bin.

    Kubernetes, etcd, kwok, helm, Prometheus and Traefik at the versions pinned in
    kinfer_dev/testbed/versions.py; a binary already in the cache is not rebuilt. Needs the `go`
    toolchain. KINFER_CACHE overrides the cache directory.
    """
    try:
        install.install_all(list(only) or None)
    except RuntimeError as e:
        raise click.ClickException(str(e)) from e
    missing = install.missing()
    if missing and not only:
        raise click.ClickException("still missing: " + ", ".join(missing))


@dev.command("up")
@_state_option
def up_cmd(state: Path | None) -> None:
    """Start the test bed (or reuse the one running) and print how to use it.

    Needs root (network namespaces, a bridge). Fails with the failing component's log tail.
    """
    s = _state(state)
    try:
        b = bed.up(s, echo=lambda m: click.echo(m, err=True))
    except bed.StartupError as e:
        raise click.ClickException(f"{e}\n(logs kept in {s / 'logs'})") from e
    click.echo(
        f"Kubernetes {versions.KUBERNETES}: 3 kwok nodes (gpu-l4-0, gpu-a100-0, cpu-0)\n"
        f"kubeconfig:  {b.kubeconfig}\n"
        f"prometheus:  {b.prometheus_url()}\n"
        f"logs:        {s / 'logs'}\n"
        'use it:      eval "$(kinfer dev env)"',
        err=True,
    )


@dev.command("down")
@_state_option
def down_cmd(state: Path | None) -> None:
    """Stop every process the test bed started (by recorded PID) and remove its pods'
    network namespaces and the bridge. Processes it did not start are never touched."""
    bed.down(_state(state), echo=lambda m: click.echo(m, err=True))


@dev.command("status")
@_state_option
def status_cmd(state: Path | None) -> None:
    """Show each test bed process, its PID and whether it is alive; exit 1 unless all are."""
    s = _state(state)
    rows = bed.status(s)
    if not rows:
        click.echo(f"no test bed in {s}")
        sys.exit(1)
    for name, pid, alive in rows:
        click.echo(f"{name:<24} {pid:>8}  {'running' if alive else 'DEAD'}")
    if not bed.Bed(s).running():
        sys.exit(1)


@dev.command("env")
@_state_option
def env_cmd(state: Path | None) -> None:
    """Print shell exports for the running test bed: eval "$(kinfer dev env)".

    Exports KUBECONFIG, KINFER_PROMETHEUS_URL, KINFER_GATEWAY_URL (the Gateway's HTTP
    listener), KINFER_GATEWAY_GRPC (its gRPC listener, h2c), KINFER_GATEWAY_NAMESPACE,
    KINFER_TESTBED_STATE, and puts the test bed's kubectl first on PATH.
    """
    b = bed.Bed(_state(state))
    if not b.running():
        raise click.ClickException(f"no running test bed in {b.state}; run `kinfer dev up`")
    click.echo(b.env_lines(), nl=False)


if __name__ == "__main__":
    dev()
