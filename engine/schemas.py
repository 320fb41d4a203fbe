"""The JSON Schemas shipped with the engine, compiled once per process.

``validator(name)`` returns a pre-compiled validator (compiling on every call costs
35x more, see notes/performance.md); ``schema_problems(name, data)`` returns every
problem as a readable line that names the key and never echoes a value (a value might be
a secret).

Valid data (the common case: every config load, every workflow, every handoff) is checked
by ``jsonschema-rs`` first, about 100x faster than ``jsonschema`` on a 1,000-step workflow
and 6x cheaper to import; only data it finds invalid is walked by ``jsonschema``, whose
errors word the problems, and whose verdict is the one that counts (``jsonschema-rs`` is
at least as strict on these schemas: its ``$`` does not match before a trailing newline,
and it checks ``date-time``). The shipped schemas are checked against the metaschema by
the tests (tests/test_schemas.py), not on every start.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import did_you_mean

_SCHEMAS = Path(__file__).with_name("schemas")

_FORBIDDEN_KEYS = {
    "token": "tokens are never written in the file: put the name of an environment "
    "variable in `token_env`, or a file path in `token_file`",
    "api_key": "keys are never written in the file: use `api_key_env`",
}


def schema_text(name: str) -> str:
    """Return the raw text of ``schemas/<name>.schema.json``.

    Read beside this module (the package's data, pyproject.toml's ``package-data``), not
    through ``importlib.resources``, whose import costs ~4 ms per process (``tempfile``,
    ``shutil``, ``zipfile``) for a path this module already knows.
    """
    return (_SCHEMAS / f"{name}.schema.json").read_text("utf-8")


@functools.cache
def schema(name: str) -> dict[str, Any]:
    """Return the parsed schema ``name``."""
    data: dict[str, Any] = json.loads(schema_text(name))
    return data


@functools.cache
def validator(name: str) -> Any:
    """Return the compiled Draft 2020-12 ``jsonschema`` validator for schema ``name`` (cached).

    The schema itself is not checked against the metaschema here (that cost 10-25 ms per
    schema on every start): tests/test_schemas.py checks every shipped schema.
    """
    from jsonschema import Draft202012Validator, FormatChecker

    return Draft202012Validator(schema(name), format_checker=FormatChecker())


@functools.cache
def fast_validator(name: str) -> Any:
    """The ``jsonschema-rs`` validator of schema ``name`` (cached), or None without it."""
    try:
        import jsonschema_rs
    except ImportError:  # pragma: no cover - a dependency; the slow path still works
        return None
    return jsonschema_rs.validator_for(schema(name), validate_formats=True)


def pointer(path: Any) -> str:
    """Return the JSON pointer for a jsonschema error path (``/`` for the root)."""
    parts = [str(p).replace("~", "~0").replace("/", "~1") for p in path]
    return "/" + "/".join(parts) if parts else "/"


def dotted(path: Any) -> str:
    """Return a config-style dotted key for an error path (``agents.webster.url``)."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def schema_problems(name: str, data: Any, *, style: str = "dotted") -> list[str]:
    """Validate ``data`` against schema ``name``; return one line per problem, sorted.

    ``style``: ``dotted`` keys (``agents.webster.url``) or JSON ``pointer``s. Returns
    ``[]`` for valid data.
    """
    if _fast_valid(name, data):
        return []
    problems: list[str] = []
    for err in validator(name).iter_errors(data):
        problems.extend(_describe(err, style))
    return sorted(set(problems))


def _fast_valid(name: str, data: Any) -> bool:
    """True when ``jsonschema-rs`` finds ``data`` valid; False when invalid or it cannot
    tell (a value that is not JSON, like the dates YAML makes, or an integer past 64 bits)."""
    fast = fast_validator(name)
    if fast is None:
        return False
    try:
        return bool(fast.is_valid(data))
    except (ValueError, TypeError, OverflowError):
        return False


def _describe(err: Any, style: str) -> list[str]:
    """One line per problem a jsonschema error stands for (one per unknown key, say)."""
    where = pointer(err.absolute_path) if style == "pointer" else dotted(err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        return _unknown_keys(err, where, style)
    if err.validator == "required":
        missing = [k for k in err.validator_value if k not in (err.instance or {})]
        return [f"`{where}`: missing required key `{k}`." for k in missing]
    describe = _ONE_LINE.get(err.validator)
    if describe is None:
        return [f"`{where}`: fails `{err.validator}`."]
    return [describe(err, f"`{where}`")]


def _unknown_keys(err: Any, where: str, style: str) -> list[str]:
    allowed = set(err.schema.get("properties", {}))
    lines = []
    for key in err.instance:
        if key in allowed:
            continue
        sub = f"{where}.{key}" if style == "dotted" and where != "(top level)" else key
        if style == "pointer":
            sub = (where.rstrip("/") + "/" + str(key)) if where != "/" else "/" + str(key)
        why = _FORBIDDEN_KEYS.get(str(key))
        if why:
            lines.append(f"`{sub}` is not allowed: {why}.")
        else:
            near = did_you_mean(str(key), allowed) or _camel_hint(str(key), allowed)
            lines.append(f"`{sub}` is not a known key{near}")
    return lines


def _camel_hint(key: str, allowed: set[str]) -> str:
    """``"; did you mean `dir`?"`` for a camelCase key (``tokenDir``, seed configs) whose
    snake_case form, or its last word, is an allowed key; else ""."""
    import re

    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).lower()
    if snake == key:
        return ""
    for name in (snake, snake.rsplit("_", 1)[-1]):
        if name in allowed:
            return f"; did you mean `{name}`?"
    return ""


def _type_line(err: Any, prefix: str) -> str:
    expected = err.validator_value
    expected = " or ".join(expected) if isinstance(expected, list) else expected
    return f"{prefix} must be {_article(str(expected))}."


def _enum_line(err: Any, prefix: str) -> str:
    choices = ", ".join(f"`{v}`" for v in err.validator_value)
    near = did_you_mean(str(err.instance), [str(v) for v in err.validator_value])
    short = isinstance(err.instance, str) and len(err.instance) < 40
    shown = f"`{err.instance}`" if short else "value"
    return f"{prefix}: {shown} is not one of {choices}{near}"


#: What each pattern of our schemas allows, in words (a message names the characters).
_PATTERN_WORDS = {
    "^[a-z0-9][a-z0-9_-]{0,63}$": "lowercase letters, digits, `-` and `_` (1 to 64 "
    "characters, the first a letter or digit)",
    "^[A-Za-z_][A-Za-z0-9_]*$": "letters, digits and `_` (not a digit first)",
    "^[A-Za-z_][A-Za-z0-9_]{0,63}$": "letters, digits and `_` (1 to 64 characters, not a "
    "digit first)",
    "^[0-9]{1,25}$": "digits only (1 to 25)",
}


def _pattern_line(err: Any, prefix: str) -> str:
    """A value or a key (``propertyNames``) that fails a pattern: which one, shown with
    its control characters escaped, and what the pattern allows."""
    from engine.textio import terminal_text

    pattern = str(err.validator_value)
    text = str(err.instance)
    shown = terminal_text(text[:80]) + ("…" if len(text) > 80 else "")
    words = _PATTERN_WORDS.get(pattern)
    allowed = f"use {words}" if words else f"it must match the pattern `{pattern}`"
    if "propertyNames" in err.schema_path:
        return f"{prefix} has a key `{shown}` that is not allowed: {allowed}."
    return f"{prefix} is `{shown}`, which is not allowed: {allowed}."


_BOUNDS = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
_NAME_RULE = "lowercase letters, digits, `-`, `_`"

#: The line for each jsonschema keyword that fails with one line: ``(error, prefix) -> line``.
_ONE_LINE: dict[str, Callable[[Any, str], str]] = {
    "type": _type_line,
    "enum": _enum_line,
    "const": lambda err, prefix: f"{prefix} must be `{err.validator_value}`.",
    "pattern": lambda err, prefix: _pattern_line(err, prefix),
    **{
        kw: lambda err, prefix: f"{prefix} must be {_BOUNDS[err.validator]} {err.validator_value}."
        for kw in _BOUNDS
    },
    **dict.fromkeys(
        ("minItems", "minProperties", "minLength"),
        lambda err, prefix: f"{prefix} must not be empty.",
    ),
    "format": lambda err, prefix: f"{prefix} is not a valid {err.validator_value}.",
    "propertyNames": lambda err, prefix: (
        f"{prefix} has a key that is not a valid name ({_NAME_RULE})."
    ),
    **dict.fromkeys(
        ("oneOf", "anyOf"), lambda err, prefix: f"{prefix} does not match any allowed form."
    ),
}


def _article(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def example_value(schema: Any, label: str, text: Callable[[str], str], *, paths: bool) -> Any:
    """A deterministic example of a JSON Schema: a ``const`` or an enum's first value,
    every declared property of an object, ``minItems`` (at least one) items of an array, a
    number at its ``minimum`` (or ``exclusiveMinimum`` + 1, else 0), false, null, and for
    text ``text(label)`` padded to ``minLength``. With ``paths``, a property's label is
    ``label.key`` and an item's ``label[0]``; else the key, and the array's own label.

    Used for the dry run's placeholders (``engine.dag``) and the demo agents' ``data``."""
    if not isinstance(schema, dict):
        return text(label)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) and kind else kind
    props = schema.get("properties")
    if kind == "object" or (kind is None and isinstance(props, dict)):
        props = props if isinstance(props, dict) else {}
        return {
            k: example_value(v, f"{label}.{k}" if paths else k, text, paths=paths)
            for k, v in props.items()
        }
    if kind == "array":
        n = max(1, int(schema.get("minItems", 1) or 1))
        item = f"{label}[0]" if paths else label
        return [example_value(schema.get("items"), item, text, paths=paths) for _ in range(n)]
    return _example_scalar(schema, kind, text(label))


def _example_scalar(schema: dict[str, Any], kind: Any, text: str) -> Any:
    if kind in ("number", "integer"):
        low = schema.get("minimum")
        if low is None and isinstance(schema.get("exclusiveMinimum"), int | float):
            low = schema["exclusiveMinimum"] + 1
        value = low if isinstance(low, int | float) else 0
        return int(value) if kind == "integer" else value
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return text.ljust(int(schema.get("minLength", 0) or 0), ".")
