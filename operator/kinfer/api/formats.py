"""Kubernetes' own rules for the strings kinfer passes into pods: label keys and values, DNS names,
resource quantities. Each is a CEL rule with a Python twin (rules.Rule) and a length bound, so the
CRD, `kinfer validate` and the pods the operator renders agree.

The regular expressions are Kubernetes' (k8s.io/apimachinery/pkg/util/validation); they use only
constructs on which Go's RE2 and Python's re agree. CEL gets them anchored, Python uses fullmatch.
"""

from __future__ import annotations

import re
from typing import Any

from kinfer.api.rules import Rule

DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = rf"{DNS_LABEL}(\.{DNS_LABEL})*"
DNS_1035_LABEL = r"[a-z]([-a-z0-9]*[a-z0-9])?"
# A label key's name part: at most 63 characters (1 + 61 + 1).
LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY = rf"({DNS_SUBDOMAIN}/)?{LABEL_NAME}"
LABEL_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"
HEADER_NAME = r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+"

LABEL_VALUE_MAX = 63
DNS_SUBDOMAIN_MAX = 253
# prefix (253) + "/" + name (63)
LABEL_KEY_MAX = DNS_SUBDOMAIN_MAX + 1 + 63
QUANTITY_MAX = 64
NODE_SELECTOR_MAX = 64


def cel_string(text: str) -> str:
    """A CEL string literal (double-quoted) holding `text` exactly."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def matches(var: str, pattern: str) -> str:
    return f"{var}.matches({cel_string('^(?:' + pattern + ')$')})"


def _full(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


_LABEL_KEY = _full(LABEL_KEY)
_LABEL_VALUE = _full(LABEL_VALUE)
_DNS_SUBDOMAIN = _full(DNS_SUBDOMAIN)
_HEADER_NAME = _full(HEADER_NAME)


def is_label_key(text: str) -> bool:
    return _LABEL_KEY.fullmatch(text) is not None and text.find("/") <= DNS_SUBDOMAIN_MAX


def is_label_value(text: str) -> bool:
    return _LABEL_VALUE.fullmatch(text) is not None


def is_dns_subdomain(text: str) -> bool:
    return _DNS_SUBDOMAIN.fullmatch(text) is not None


def _label_key_cel(var: str) -> str:
    # The prefix's 253 characters cannot be said in the expression without lookahead.
    return f"{matches(var, LABEL_KEY)} && {var}.indexOf('/') <= {DNS_SUBDOMAIN_MAX}"


LABEL_KEY_WORDS = (
    "a name of at most 63 characters (letters, digits, '-', '_', '.', starting and ending with a "
    "letter or digit), optionally after a DNS subdomain prefix of at most 253 characters and '/', "
    "e.g. nvidia.com/gpu.product"
)
LABEL_VALUE_WORDS = (
    "empty, or at most 63 characters: letters, digits, '-', '_', '.', starting and ending with a "
    "letter or digit"
)

LABEL_KEY_RULE = Rule(
    cel=_label_key_cel("self"),
    message=f"must be a label key: {LABEL_KEY_WORDS}",
    holds=is_label_key,
)
OPTIONAL_LABEL_KEY_RULE = Rule(
    cel=f"self == '' || ({_label_key_cel('self')})",
    message=f"must be empty or a label key: {LABEL_KEY_WORDS}",
    holds=lambda s: s == "" or is_label_key(s),
)
LABEL_KEYS_RULE = Rule(
    cel=f"self.all(k, {_label_key_cel('k')})",
    message=f"every key must be a label key: {LABEL_KEY_WORDS}",
    holds=lambda m: all(is_label_key(k) for k in m),
)
LABEL_VALUE_RULE = Rule(
    cel=matches("self", LABEL_VALUE),
    message=f"must be a label value: {LABEL_VALUE_WORDS}",
    holds=is_label_value,
)
OPTIONAL_DNS_SUBDOMAIN_RULE = Rule(
    cel=f"self == '' || {matches('self', DNS_SUBDOMAIN)}",
    message="must be empty or a DNS subdomain: lower-case letters, digits, '-' and '.', "
    "starting and ending with a letter or digit",
    holds=lambda s: s == "" or is_dns_subdomain(s),
)
HEADER_NAME_RULE = Rule(
    cel=matches("self", HEADER_NAME),
    message="must be an HTTP header name: letters, digits and !#$%&'*+-.^_`|~",
    holds=lambda s: _HEADER_NAME.fullmatch(s) is not None,
)
# Pod validation refuses an image with surrounding whitespace (ValidateContainer).
_SPACE = r"[ \t\n\v\f\r]"
NO_SURROUNDING_SPACE_RULE = Rule(
    cel=f"!self.matches({cel_string('^' + _SPACE + '|' + _SPACE + '$')})",
    message="must not have leading or trailing whitespace",
    holds=lambda s: re.search(f"^{_SPACE}|{_SPACE}\\Z", s) is None,
)


# --- resource quantities -------------------------------------------------------------------

_DECIMAL_SUFFIXES = frozenset({"", "n", "u", "m", "k", "M", "G", "T", "P", "E"})
_BINARY_SUFFIXES = frozenset({"Ki", "Mi", "Gi", "Ti", "Pi", "Ei"})
_SUFFIX_CHARS = frozenset("eEinumkKMGTP")
_DIGITS = frozenset("0123456789")


def _go_parse_int64(text: str) -> bool:
    """strconv.ParseInt(text, 10, 64) succeeds."""
    if not re.fullmatch(r"[-+]?[0-9]+", text):
        return False
    return -(2**63) <= int(text) <= 2**63 - 1


def _suffix_ok(suffix: str) -> bool:
    if suffix in _DECIMAL_SUFFIXES or suffix in _BINARY_SUFFIXES:
        return True
    return len(suffix) > 1 and suffix[0] in "eE" and _go_parse_int64(suffix[1:])


def parse_quantity(text: str) -> tuple[bool, bool]:
    """(valid, negative) as k8s.io/apimachinery's resource.ParseQuantity decides them.

    A port of its scanner: an optional sign, digits, optional '.digits', then a suffix that is a
    decimal SI prefix (n u m k M G T P E), a binary one (Ki … Ei) or an exponent (e3, E-2). The
    digits may be missing: ".", "m" and "+" are zero to Kubernetes.
    """
    if text == "":
        return False, False
    sign = text[0] == "-"
    pos = 1 if text[0] in "+-" else 0
    end = len(text)
    number_start = pos
    while pos < end and text[pos] in _DIGITS:
        pos += 1
    if pos < end and text[pos] == ".":
        pos += 1
        while pos < end and text[pos] in _DIGITS:
            pos += 1
    nonzero = any(c in "123456789" for c in text[number_start:pos])
    if pos >= end:
        return True, sign and nonzero
    suffix_start = pos
    while pos < end and text[pos] in _SUFFIX_CHARS:
        pos += 1
    if pos < end and text[pos] in "+-":
        pos += 1
    while pos < end and text[pos] in _DIGITS:
        pos += 1
    if pos < end:
        return False, False
    valid = _suffix_ok(text[suffix_start:])
    return valid, valid and sign and nonzero


def is_nonnegative_quantity(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    valid, negative = parse_quantity(value)
    return valid and not negative


QUANTITY_RULE = Rule(
    cel="type(self) == int ? self >= 0 : isQuantity(self) && !quantity(self).isLessThan(quantity('0'))",
    message="must be a non-negative Kubernetes quantity, e.g. 500m, 2, 1.5, 8Gi, 1e3",
    holds=is_nonnegative_quantity,
)
