"""Documents that are not in the repository, for the parity test: valid ones broken at random.

Seeded, so a failure can be replayed: each document is a valid corpus document with one to three
fields (chosen from the CRD schema, present or not) set to a value from a pool of what users get
wrong: quoted numbers and booleans, fractions, bounds and one past them, nulls, Kubernetes names
one character off, wrong shapes, unknown fields.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kinfer.api import wire
from kinfer.api.crd import root_schema

Obj = dict[str, Any]

STRINGS = [
    "",
    " ",
    "a",
    "A",
    "-a",
    "a-",
    "a.b",
    "a/b",
    "a_b",
    "a b",
    "a/b/c",
    "/a",
    "a/",
    "x" * 63,
    "x" * 64,
    "x" * 254,
    "nvidia.com/gpu.product",
    "NVIDIA-L4",
    "NVIDIA-L4-",
    "Example.com/a",
    "example.com/A",
    "1e3",
    "1Pi",
    "500u",
    "-1",
    "1.5Gi",
    "2GB",
    "0.5",
    "+1",
    ".5",
    "1e",
    "8Gi ",
    "pvc://a.b/c",
    "pvc://A/c",
    "pvc://claim",
    "pvc:///x",
    "file:///x",
    "file://x",
    "s3://x",
    "x-model",
    "x model",
    "high-priority",
    "ghcr.io/k/r:1",
    " ghcr.io/k/r:1",
    "true",
    "10",
    "ä",
]
JUNK: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    1.5,
    2**63,
    1e20,
    "1",
    "true",
    [],
    {},
    [None],
    {"unknownField": 1},
]


def _values(schema: Obj, rng: random.Random) -> list[Any]:
    """Candidate values for a field: near its bounds, its enum, its formats, and junk."""
    kind = "int-or-string" if schema.get("x-kubernetes-int-or-string") else schema.get("type")
    out: list[Any] = list(JUNK)
    if kind in ("integer", "number"):
        for key in ("minimum", "maximum"):
            if key in schema:
                b = schema[key]
                out += [b, b - 1, b + 1, b - 0.5, b + 0.5, str(b)]
        out += [0, 0.005, 0.01, 0.0099, 100, 101, 10**6, 1.0, 2.0]
    if kind in ("string", "int-or-string"):
        out += STRINGS + [e.lower() for e in schema.get("enum", []) if isinstance(e, str)]
        out += list(schema.get("enum", [])) * 3
    if kind == "int-or-string":
        out += [2, 0, -2, 0.5, "2", "500m"]
    if kind == "array":
        items = schema.get("items", {})
        item = rng.choice(_values(items, rng)) if items else 1
        out += [[item], [item, item], [10, 10, 100], [50, 25, 100], [100], list(range(1, 22))]
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        out += [{rng.choice(STRINGS): rng.choice(STRINGS)} for _ in range(6)]
    return out


def _fields(schema: Obj, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Obj]]:
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from _fields(child, (*path, name))
    items = schema.get("items")
    if isinstance(items, dict) and "properties" in items:
        for sub, child in _fields(items):
            if sub:
                yield (*path, "0", *sub), child


def _set(doc: Obj, path: tuple[str, ...], value: Any) -> None:
    node: Any = doc
    for step in path[:-1]:
        if isinstance(node, list):
            if not node:
                node.append({})
            node = node[0]
            continue
        if not isinstance(node, dict):
            return
        if not isinstance(node.get(step), dict | list):
            node[step] = {} if not step.isdigit() else []
        node = node[step]
    if isinstance(node, list):
        if not node:
            node.append({})
        node = node[0]
    if isinstance(node, dict):
        node[path[-1]] = copy.deepcopy(value)


def bases(folders: list[Path]) -> list[Obj]:
    """The valid documents to break, without a namespace (the test creates them in one)."""
    docs = []
    for folder in folders:
        for path in sorted(folder.glob("*.yaml")):
            for doc in wire.load_all(path.read_text()):
                doc["metadata"].pop("namespace", None)
                docs.append(doc)
    return docs


def broken(seed: int, count: int, base_docs: list[Obj]) -> list[Obj]:
    rng = random.Random(seed)
    spec = root_schema()["properties"]["spec"]
    fields = [(("spec", *p), s) for p, s in _fields(spec) if p]
    name_values = ["ranker", "Ranker", "r" * 46, "a.b", "2ab", "ab-", "ab", "x" * 254, 1, True, None]
    label_values = [{"a b": "x"}, {"ok": "-bad"}, {"x/y/z": "v"}, {"tier": 1}, {"app": "ranker"}]
    docs = []
    for _ in range(count):
        doc = copy.deepcopy(rng.choice(base_docs))
        for _ in range(rng.randint(1, 3)):
            roll = rng.random()
            if roll < 0.08:
                doc["metadata"]["name"] = rng.choice(name_values)
            elif roll < 0.12:
                doc["metadata"]["labels"] = rng.choice(label_values)
            else:
                path, schema = rng.choice(fields)
                _set(doc, path, rng.choice(_values(schema, rng)))
        docs.append(doc)
    return docs
