"""The `kinfer` command line."""

from __future__ import annotations

import json
import sys
from importlib.metadata import entry_points
from importlib.metadata import version as package_version
from typing import Any, TextIO

import click
import yaml

from kinfer.api import wire
from kinfer.api.crd import crd_yaml
from kinfer.api.v1alpha1 import InvalidSpec
from kinfer.api.validation import check, problems
from kinfer.render import render as render_objects
from kinfer.render import to_yaml
from kinfer.settings import load_config


def _documents(stream: TextIO) -> list[Any]:
    """The documents as kubectl reads them (YAML 1.1 scalars, JSON keys and numbers)."""
    try:
        return wire.load_all(stream.read())
    except yaml.YAMLError as exc:
        raise click.ClickException(f"{stream.name}: not valid YAML: {exc}") from exc
    except wire.LoadError as exc:
        raise click.ClickException(f"{stream.name}: {exc}") from exc


FILENAME = click.option(
    "-f",
    "--filename",
    "stream",
    type=click.File("r"),
    required=True,
    help="YAML file with one or more InferenceServices ('-' reads standard input).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_version("kinfer"), prog_name="kinfer")
def main() -> None:
    """kinfer runs model inference on Kubernetes: one InferenceService becomes GPU-scheduled
    model-server pods, a Service, autoscaling and canary or A/B rollouts."""


@main.command()
def crd() -> None:
    """Print the InferenceService CustomResourceDefinition (generated from the API models)."""
    click.echo(crd_yaml(), nl=False)


@main.command()
@FILENAME
@click.option(
    "-o",
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one object per document: {document, name, problems: [{field, reason, message}]}.",
)
def validate(stream: TextIO, output: str) -> None:
    """Check InferenceServices without a cluster, as the API server would (the CRD's schema and
    rules, Kubernetes' metadata rules, kubectl's reading of YAML).

    Prints one line per problem, each naming the field and the reason in the API server's words,
    and exits 1; prints 'valid' and exits 0 when every document is valid.
    """
    docs = _documents(stream)
    if not docs:
        raise click.ClickException(f"{stream.name}: no YAML documents")
    failed = False
    report = []
    for index, doc in enumerate(docs):
        meta = doc.get("metadata") if isinstance(doc, dict) else None
        name = meta.get("name") if isinstance(meta, dict) else None
        found = check(doc)
        failed = failed or bool(found)
        report.append(
            {
                "document": index,
                "name": name,
                "problems": [{"field": p.field, "reason": p.reason, "message": p.message} for p in found],
            }
        )
        if output == "text":
            where = f"{stream.name}[{index}]" + (f" ({name})" if isinstance(name, str) and name else "")
            for problem in found:
                click.echo(f"{where}: {problem}")
    if output == "json":
        click.echo(json.dumps(report, indent=2))
    if failed:
        sys.exit(1)
    if output == "text":
        click.echo("valid")


@main.command()
@FILENAME
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Operator config file (the same the operator reads). KINFER_* variables override it.",
)
@click.option(
    "--gateway-api/--no-gateway-api",
    default=None,
    help="Render an HTTPRoute and a GRPCRoute per service (overrides the config).",
)
def render(stream: TextIO, config_path: str | None, gateway_api: bool | None) -> None:
    """Print the Kubernetes objects the operator would apply, as a YAML stream."""
    config = load_config(config_path)
    if gateway_api is not None:
        config = config.model_copy(update={"gateway_api": gateway_api})
    out = []
    for doc in _documents(stream):
        found = problems(doc)
        if found:
            raise click.ClickException("invalid InferenceService:\n  " + "\n  ".join(found))
        try:
            out += render_objects(doc, config)
        except InvalidSpec as exc:  # problems() should have caught it; keep the message
            raise click.ClickException(str(exc)) from exc
    click.echo(to_yaml(out), nl=False)


@main.command()
@click.option(
    "--namespace",
    default="kinfer-system",
    show_default=True,
    help="Namespace the operator runs in (its ServiceAccount lives there).",
)
@click.option(
    "--watch-namespace",
    "watch",
    multiple=True,
    help="Grant access only in this namespace (repeat). Default: all namespaces.",
)
@click.option(
    "--name",
    default="kinfer-operator",
    show_default=True,
    help="Name of the ServiceAccount and its roles (to install a second operator beside one).",
)
@click.option(
    "--only",
    type=click.Choice(["all", "rbac"]),
    default="all",
    show_default=True,
    help="Which manifests to print (today both print the RBAC).",
)
def manifests(namespace: str, watch: tuple[str, ...], name: str, only: str) -> None:
    """Print install manifests besides the CRD: the operator's ServiceAccount and least-privilege
    RBAC, including the Role on its leader-election Lease (coordination.k8s.io) in --namespace."""
    from kinfer import manifests as m

    click.echo(to_yaml(m.rbac(namespace, list(watch), name)), nl=False)


@main.command()
@click.option(
    "-n",
    "--namespace",
    "namespaces",
    multiple=True,
    help="Watch only this namespace (repeat for several). Default: all namespaces.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    envvar="KINFER_CONFIG",
    help="Operator config file (YAML). KINFER_* variables override it.",
)
@click.option(
    "--metrics-port",
    type=int,
    default=8080,
    show_default=True,
    help="Port of the operator's /metrics endpoint.",
)
@click.option(
    "--metrics-address",
    default="127.0.0.1",
    show_default=True,
    help="Address /metrics listens on (0.0.0.0 in a pod).",
)
@click.option(
    "--liveness",
    "liveness",
    default=None,
    metavar="URL",
    help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz.",
)
@click.option(
    "--lease-name",
    default="kinfer",
    show_default=True,
    help="coordination.k8s.io Lease the replicas elect a leader on: the holder works, the others wait.",
)
@click.option(
    "--lease-namespace",
    default=None,
    help="Namespace of the Lease. Default: the operator's own (its ServiceAccount's), else kinfer-system.",
)
@click.option(
    "--lease-create/--no-lease-create",
    default=True,
    show_default=True,
    help="Create the Lease when it is missing. The Helm chart renders it (so that `helm uninstall` "
    "deletes it) and passes --no-lease-create.",
)
@click.option(
    "--identity",
    default=None,
    help="This replica's name in the Lease. Default: the host name and a random suffix.",
)
@click.option(
    "--standalone",
    is_flag=True,
    help="Run without leader election (a single replica, or local development).",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def operator(
    namespaces: tuple[str, ...],
    config_path: str | None,
    metrics_port: int,
    metrics_address: str,
    liveness: str | None,
    lease_name: str,
    lease_namespace: str | None,
    lease_create: bool,
    identity: str | None,
    standalone: bool,
    verbose: bool,
) -> None:
    """Run the kinfer operator (kopf) against the cluster in KUBECONFIG or in-cluster config."""
    import logging
    import os

    import kopf

    from kinfer.leader import default_namespace

    config = load_config(config_path)  # fail now, with the file named, rather than inside kopf
    # kopf registers timers when handlers is imported, before startup() reads the config.
    os.environ["KINFER_AUTOSCALE_INTERVAL_SECONDS"] = str(config.autoscale_interval_seconds)
    from kinfer import handlers

    handlers.CONFIG_PATH = config_path
    handlers.METRICS_PORT = metrics_port
    handlers.METRICS_ADDRESS = metrics_address
    handlers.NAMESPACES = list(namespaces)
    handlers.LEASE = None if standalone else (lease_namespace or default_namespace(), lease_name)
    handlers.IDENTITY = identity or ""
    handlers.LEASE_CREATE = lease_create
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.FULL)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    if not verbose:
        # kopf logs every handler and timer run at INFO ("Timer 'x' succeeded"); ours say more.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        standalone=True,  # kopf's peering is not used: the Lease elects the leader
        liveness_endpoint=liveness,
    )


@main.command("explain-scale")
@click.argument("name", required=False)
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option(
    "-f",
    "--filename",
    "recorded",
    type=click.Path(exists=True, dir_okay=False),
    help="Replay a recorded window file (spec, window, state, now) instead of a live one.",
)
@click.option(
    "--prometheus-url",
    envvar="KINFER_PROMETHEUS_URL",
    default="http://127.0.0.1:9090",
    show_default=True,
    help="Prometheus to read the live window from.",
)
def explain_scale(name: str | None, namespace: str, recorded: str | None, prometheus_url: str) -> None:
    """Show the autoscaler's decision for an InferenceService and every term that led to it.

    Live: reads the InferenceService (KUBECONFIG) and its window from Prometheus, and decides
    from the replicas running now and the state the operator saved in status (learned
    throughput, rate history, measured cold start), as a new leader would. Offline: -f FILE.
    """
    from kinfer.autoscaling.explain import explain, explain_recorded

    if recorded:
        click.echo(explain_recorded(recorded))
        return
    if not name:
        raise click.UsageError("give an InferenceService NAME, or -f FILE")
    import time

    from kinfer.api.v1alpha1 import validate_spec
    from kinfer.apply import Cluster, load_client_config
    from kinfer.autoscaling.decision import decide
    from kinfer.autoscaling.loop import initial_state, inputs
    from kinfer.autoscaling.prometheus import PrometheusSource, read_window

    isvc = Cluster(load_client_config()).get_isvc(namespace, name)
    if isvc is None:
        raise click.ClickException(f"inferenceservice {namespace}/{name} not found")
    parsed = validate_spec(isvc["spec"])
    scaling = parsed.scaling
    if scaling.mode != "metrics":
        click.echo(f"mode {scaling.mode}: the kinfer autoscaler does not scale this service")
    now = time.time()
    source = PrometheusSource(prometheus_url)
    window = inputs(isvc, read_window(source, namespace, name, now=now, server=parsed.runtime.server))
    state = initial_state(scaling, isvc.get("status") or {})
    click.echo(explain(decide(scaling, window, state, now), window))


PLUGIN_GROUP = "kinfer.commands"
"""Entry points that add commands to `kinfer`: the development tools (`kinfer dev`, `kinfer demo`)
live in their own distribution, kinfer-dev, which the product and its images do not contain."""


@main.group()
def model() -> None:
    """Put model directories where InferenceServices read them (s3://, oci://) and list them.

    Runs `kinfer-runtime push|ls` (the runtime's storage client, pip install kinfer[runtime]), so
    uploads use the same code, credentials and checks as the pods' downloads: AWS_* variables
    (AWS_ENDPOINT_URL for any S3-compatible store) or KINFER_STORAGE_USERNAME/PASSWORD.
    """


def _runtime(*args: str) -> None:
    import shutil
    import subprocess

    runtime = shutil.which("kinfer-runtime")
    argv = [runtime] if runtime else [sys.executable, "-m", "kinfer_runtime"]
    raise SystemExit(subprocess.call([*argv, *args]))


@model.command("push")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.argument("uri")
def model_push(directory: str, uri: str) -> None:
    """Upload DIRECTORY (a model file and its signature.json) to URI; print the URI to serve."""
    _runtime("push", directory, uri)


@model.command("ls")
@click.argument("uri")
def model_ls(uri: str) -> None:
    """List the files of the model at URI (size, name, digest)."""
    _runtime("ls", uri)


def _register_plugins() -> None:
    for entry in entry_points(group=PLUGIN_GROUP):
        try:
            command = entry.load()
        except ImportError as exc:  # an installed plugin that is broken must not break `kinfer`
            print(f"kinfer: ignoring command {entry.name!r} ({entry.value}): {exc}", file=sys.stderr)
            continue
        main.add_command(command, entry.name)


_register_plugins()


if __name__ == "__main__":
    main()
