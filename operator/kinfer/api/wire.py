"""Read YAML the way kubectl does, so that `kinfer validate -f` sees the document the API server sees.

kubectl turns YAML into JSON with sigs.k8s.io/yaml, which resolves plain scalars by YAML 1.1 rules
(go-yaml v2), not by PyYAML's: `y`, `n`, `on` and `off` are booleans, `1e3` is a number, `12:30` and
`2024-01-01` stay strings, `08` is 8, `0o10` and `0b11` are integers. Then JSON has its own say:
map keys become strings (`1: a` is `"1": a`, `true: b` is `"true": b`), a float with no fraction is
sent as an integer (`2.0` is `2`), and NaN or infinity cannot be sent at all.
"""

from __future__ import annotations

import math
import re
import struct
from decimal import Decimal
from typing import Any

import yaml

_PLAIN = "tag:kinfer.dev,2025:go-plain"

_BOOLS = {
    **dict.fromkeys(["y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"], True),
    **dict.fromkeys(["n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"], False),
}
_NULLS = {"", "~", "null", "Null", "NULL"}
_SPECIAL_FLOATS = {
    **dict.fromkeys([".nan", ".NaN", ".NAN"], math.nan),
    **dict.fromkeys([".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"], math.inf),
    **dict.fromkeys(["-.inf", "-.Inf", "-.INF"], -math.inf),
}
# go-yaml v2's float syntax (a YAML 1.1 subset): "1e3" is a float, "1_000.5" after removing "_".
_YAML_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
# Go's strconv.ParseInt(s, 0, 64): an optional sign, then a base prefix or a leading 0 for octal.
_GO_INT = re.compile(r"([-+]?)(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)")
# Go's strconv.ParseFloat for text starting with '.', which is all go-yaml tries it on.
_GO_DOT_FLOAT = re.compile(r"\.[0-9]+([eE][-+]?[0-9]+)?")
INT64 = (-(2**63), 2**63 - 1)
UINT64_MAX = 2**64 - 1


class LoadError(ValueError):
    """The document cannot become JSON, so kubectl refuses it before the API server sees it."""


def _go_int(text: str) -> int | None:
    m = _GO_INT.fullmatch(text)
    if m is None:
        return None
    sign, digits = m.groups()
    lower = digits.lower()
    if lower.startswith(("0x", "0o", "0b")):
        value = int(lower[2:], {"x": 16, "o": 8, "b": 2}[lower[1]])
    elif digits.startswith("0"):
        value = int(digits, 8)
    else:
        value = int(digits)
    value = -value if sign == "-" else value
    if INT64[0] <= value <= INT64[1] or 0 <= value <= UINT64_MAX:
        return value
    return None


def resolve_plain(text: str) -> Any:
    """What go-yaml v2 makes of an unquoted scalar (kubectl's YAML reader)."""
    if text in _BOOLS:
        return _BOOLS[text]
    if text in _NULLS:
        return None
    if text in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[text]
    first = text[0]
    if first == ".":
        if _GO_DOT_FLOAT.fullmatch(text):
            value = float(text)
            return text if math.isinf(value) else value
        return text
    if first in "+-0123456789":
        # Timestamps (2024-01-01) stay strings when decoded into untyped values; none of them
        # parses as a number either, so there is nothing to do for them here.
        plain = text.replace("_", "")
        number = _go_int(plain)
        if number is not None:
            return number
        if _YAML_FLOAT.fullmatch(plain):
            value = float(plain)
            return text if math.isinf(value) else value  # out of range: ParseFloat fails
        return text
    return text


def _go_float32_key(value: float) -> str:
    """strconv.FormatFloat(f, 'g', -1, 32), which sigs.k8s.io/yaml uses for float map keys."""
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    single = struct.unpack("f", struct.pack("f", value))[0]
    # The shortest decimal that reads back as the same float32.
    for digits in range(1, 10):
        text = f"{single:.{digits}g}"
        if struct.unpack("f", struct.pack("f", float(text)))[0] == single:
            return go_float_text(float(text))
    return go_float_text(single)


def go_float_text(value: float) -> str:
    """Go's %v of a float64 (strconv 'g', shortest digits): 1e+06, 1.5e-05, 0.001, 100000."""
    if math.isnan(value) or math.isinf(value):
        return {True: "+Inf", False: "-Inf"}[value > 0] if math.isinf(value) else "NaN"
    if value == 0:
        return "0"
    # repr gives the shortest digits that read back as the same float, as Go does.
    sign, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    point = len(digits) + int(exponent) - 1  # the exponent in d.ddd form
    text = "-" if sign else ""
    if point < -4 or point >= 6:
        tail = f".{digits[1:]}" if len(digits) > 1 else ""
        return f"{text}{digits[0]}{tail}e{'-' if point < 0 else '+'}{abs(point):02d}"
    if point >= 0:
        whole, frac = digits[: point + 1].ljust(point + 1, "0"), digits[point + 1 :]
        return f"{text}{whole}{'.' + frac if frac else ''}"
    return f"{text}0.{'0' * (-point - 1)}{digits}"


def _key(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not INT64[0] <= value <= INT64[1]:
            raise LoadError("error converting YAML to JSON: unsupported map key of type: uint64")
        return str(value)
    if isinstance(value, float):
        return _go_float32_key(value)
    raise LoadError(f"error converting YAML to JSON: unsupported map key of type: {value!r}")


def as_sent(value: Any) -> Any:
    """What kubectl sends: a whole float as an integer, an integer beyond int64 as a float, NaN and
    infinity not at all."""
    if isinstance(value, dict):
        return {k: as_sent(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_sent(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
        return float(value)  # kubectl decodes it as a float64 and sends that
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            shown = "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
            raise LoadError(f"error converting YAML to JSON: json: unsupported value: {shown}")
        if value.is_integer() and abs(value) < 1e21:
            return int(value)
    return value


class GoLoader(yaml.SafeLoader):
    """PyYAML's parser with go-yaml v2's scalar resolution and sigs.k8s.io/yaml's keys."""

    yaml_implicit_resolvers: dict[Any, list[tuple[str, re.Pattern[str]]]] = {}

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            out[_key(key)] = self.construct_object(value_node, deep=deep)
        return out


def _construct_plain(loader: GoLoader, node: yaml.ScalarNode) -> Any:
    return resolve_plain(str(loader.construct_scalar(node)))


def _construct_map(loader: GoLoader, node: yaml.MappingNode) -> Any:
    return loader.construct_mapping(node, deep=True)


GoLoader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])
GoLoader.add_implicit_resolver(_PLAIN, re.compile(r"(?s).*"), None)
GoLoader.add_constructor(_PLAIN, _construct_plain)
GoLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)


def load_all(text: str) -> list[Any]:
    """The non-empty documents of a YAML stream, as kubectl would send them (JSON values).

    Raises yaml.YAMLError for YAML that does not parse, LoadError for YAML that cannot be JSON.
    """
    return [as_sent(doc) for doc in yaml.load_all(text, Loader=GoLoader) if doc is not None]
