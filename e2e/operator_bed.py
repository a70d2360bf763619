"""e2e helpers on top of kinfer.local (shared with `kinfer demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def example(name: str, model_dir: Path) -> dict[str, Any]:
    """An example InferenceService with its model URIs pointed at a local test model."""
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / f"{name}.yaml").read_text())
    doc["metadata"].pop("namespace", None)
    doc["spec"]["model"]["uri"] = f"file://{model_dir}"
    canary = (doc["spec"].get("rollout") or {}).get("canary")
    if canary:
        canary["model"]["uri"] = f"file://{model_dir}"
    return doc


def resource_versions(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {
        f"{o['kind']}/{o['metadata']['name']}": o["metadata"]["resourceVersion"] for o in objects
    }
