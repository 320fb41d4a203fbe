"""``engine.yamlio``: aliased values, bad numbers and merge keys read as PyYAML reads them,
and the quick node check passes only what the full, worded check passes (on every YAML
file the repository ships and on refused forms)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine import yamlio
from engine.errors import ConfigError

ROOT = Path(__file__).parent.parent

CASES = {
    "aliases": "a: &x {b: [1, 2.5, true, null, ~, s]}\nc: *x\nd: [*x, *x]\n",
    "merge": "base: &b {x: 1, y: 2}\nitem:\n  <<: *b\n  y: 3\n",
    "merge-list": "a: &a {x: 1}\nb: &b {y: 2}\nc: {<<: [*a, *b], z: 3}\n",
    "explicit": "a: !!str 1\nb: !!int '7'\nc: !!float '2'\nd: !!bool true\ne: !!null ''\n",
    "str-on-list": "a: !!str [1]\n",
    "map-on-list": "a: !!map [1]\n",
    "seq-on-scalar": "a: !!seq x\n",
    "merge-as-value": "a: !!merge x\n",
    "bool-yes": "a: !!bool yes\n",
    "two-bad-numbers": "a: {b: {c: 1_0}}\nd: !!int x\ne: [!!float y]\n",
    "bad-numbers-in-lists": "- [[!!int a]]\n- !!int b\n",
    "nested": "a:\n  - b: {c: [1, {d: e}]}\n  - []\n  - {}\n",
    "scalar-root": "just text\n",
    "list-root": "- 1\n- two\n",
    "keys-as-written": "1: a\ntrue: b\nnull: c\n1.5: d\n",
}


def _shipped() -> dict[str, str]:
    files = [*ROOT.glob("engine/workflows/*.yaml"), *ROOT.glob("examples/**/*.yaml")]
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in sorted(files)}


def test_aliased_values_are_one_object_and_errors_name_the_first_bad_number() -> None:
    data, _ = yamlio.parse_yaml(CASES["aliases"], source="f.yaml", error=ConfigError)
    assert data["c"] is data["a"] and data["d"][0] is data["a"]
    assert data["a"] == {"b": [1, 2.5, True, None, None, "s"]}
    with pytest.raises(ConfigError) as exc:
        yamlio.parse_yaml(CASES["two-bad-numbers"], source="f.yaml", error=ConfigError)
    assert "at line 2" in str(exc.value) and "`x` is not a decimal integer" in str(exc.value)
    data, _ = yamlio.parse_yaml(CASES["merge"], source="f.yaml", error=ConfigError)
    assert data["item"] == {"x": 1, "y": 3}


REFUSED = {
    "duplicate": "a: 1\nb:\n  c: 1\n  c: 2\n",
    "duplicate-top": "a: 1\na: 2\n",
    "jinja": "task: {{ inputs.query }}\n",
    "list-key": "? [a]\n: 1\n",
    "deep": "".join("  " * i + f"k{i}:\n" for i in range(70)),
    "deep-flow": "a: " + "[" * 70 + "]" * 70 + "\n",
    "set": "a: !!set {x}\n",
    "tag-in-list": "a: [1, !!binary aGk=]\n",
    "tag-on-key-value": "a: {b: !!timestamp 2001-12-14}\n",
    "many": "a: [" + ", ".join(["1"] * (yamlio.MAX_NODES + 1)) + "]\n",
    "merge": "a: {<<: {x: 1}, y: 2}\n",
}


def _nodes(text: str) -> Any:
    loader = yamlio._loader_class()(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def test_the_quick_check_passes_only_what_the_full_check_passes() -> None:
    for name, text in {**CASES, **_shipped()}.items():
        if "&" in text:
            continue  # documents with anchors always take the full check
        node = _nodes(text)
        if yamlio._plain_and_valid(node):
            assert yamlio._check_nodes(node, "f.yaml", ConfigError) == [], name
    for name, text in REFUSED.items():
        node = _nodes(text)
        assert not yamlio._plain_and_valid(node), name
        try:
            problems = yamlio._check_nodes(node, "f.yaml", ConfigError)
        except ConfigError:
            continue
        assert problems or name == "merge", name
    assert yamlio._plain_and_valid(_nodes(_shipped()["engine/workflows/quick-research.yaml"]))
