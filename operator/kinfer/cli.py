"""The `kinfer` command line."""

from __future__ import annotations

import sys
from importlib.metadata import version as package_version
from typing import Any, TextIO

import click
import yaml
from pydantic import ValidationError

from kinfer.api.crd import crd_yaml
from kinfer.api.validation import problems
from kinfer.render import render as render_objects
from kinfer.render import to_yaml
from kinfer.settings import load_config


def _documents(stream: TextIO) -> list[Any]:
    try:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]
    except yaml.YAMLError as exc:
        raise click.ClickException(f"{stream.name}: not valid YAML: {exc}") from exc


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
@click.option(
    "-f",
    "--filename",
    "stream",
    type=click.File("r"),
    required=True,
    help="YAML file with one or more InferenceServices ('-' reads standard input).",
)
def validate(stream: TextIO) -> None:
    """Check InferenceServices without a cluster.

    Prints one line per problem, each naming the field and the reason, and exits 1; prints
    'valid' and exits 0 when every document is valid.
    """
    docs = _documents(stream)
    if not docs:
        raise click.ClickException(f"{stream.name}: no YAML documents")
    failed = False
    for index, doc in enumerate(docs):
        name = doc.get("metadata", {}).get("name") if isinstance(doc, dict) else None
        where = f"{stream.name}[{index}]" + (f" ({name})" if name else "")
        for problem in problems(doc):
            click.echo(f"{where}: {problem}")
            failed = True
    if failed:
        sys.exit(1)
    click.echo("valid")


@main.command()
@click.option(
    "-f",
    "--filename",
    "stream",
    type=click.File("r"),
    required=True,
    help="YAML file with one or more InferenceServices ('-' reads standard input).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Operator config file (the same the operator reads). KINFER_* variables override it.",
)
@click.option(
    "--gateway-api/--no-gateway-api",
    default=None,
    help="Render HTTPRoutes for canary and A/B traffic (overrides the config).",
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
        except ValidationError as exc:  # problems() should have caught it; keep the message
            raise click.ClickException(str(exc)) from exc
    click.echo(to_yaml(out), nl=False)


if __name__ == "__main__":
    main()
