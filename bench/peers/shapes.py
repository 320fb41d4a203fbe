"""One shape definition, written out as a workflow for each system (ours, Lobster, LangGraph).

A :class:`Shape` is a list of layers of step ids, each step with the ids it depends on (all in
the layer before). The writers turn one shape into:

- ours: a workflow YAML (``depends_on``; each task reads its dependencies' status);
- Lobster: a ``.lobster`` file. Lobster has no ``depends_on`` (steps run in file order), so a
  layer of several steps becomes one ``parallel:`` step (a barrier per layer); a layer of one
  step is a plain step. Each step is a no-op shell command that reads its dependencies'
  output (``: $dep.stdout ...; printf ID``), which keeps the edges in the file;
- LangGraph: a JSON graph (nodes and, per node, its dependencies) that ``langgraph_graph.py``
  builds with ``add_edge([deps...], node)`` (a node waits for all of its dependencies).

The counters read each file back independently, so a test can check that all three have the
same number of nodes and edges.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

#: The agent every step of ours is delegated to, and the caller (see compare.py's config).
AGENT = "webster"
CALLER = "manager"


@dataclass(frozen=True)
class Shape:
    """Layers of step ids; ``deps[id]`` are the ids (of the layer before) a step waits for."""

    name: str
    layers: tuple[tuple[str, ...], ...]
    deps: dict[str, tuple[str, ...]]

    @property
    def steps(self) -> int:
        """Number of steps (nodes)."""
        return sum(len(layer) for layer in self.layers)

    @property
    def edges(self) -> int:
        """Number of dependency edges."""
        return sum(len(d) for d in self.deps.values())

    def ordered(self) -> list[str]:
        """Every step id, layer by layer."""
        return [sid for layer in self.layers for sid in layer]


def layered(
    name: str, layers: int, width: int, deps: tuple[int, int] = (2, 3), seed: int = 7
) -> Shape:
    """``layers`` layers of ``width`` steps; each step after the first layer depends on
    between ``deps[0]`` and ``deps[1]`` steps of the layer before (a fixed random seed)."""
    rng = random.Random(seed)
    ids = [tuple(f"s{k * width + i:04d}" for i in range(width)) for k in range(layers)]
    dep: dict[str, tuple[str, ...]] = {}
    for k, layer in enumerate(ids):
        for sid in layer:
            if k == 0:
                dep[sid] = ()
            else:
                n = min(rng.randint(*deps), len(ids[k - 1]))
                dep[sid] = tuple(sorted(rng.sample(ids[k - 1], n)))
    return Shape(name, tuple(ids), dep)


def chain(name: str, steps: int) -> Shape:
    """``steps`` steps, each depending on the one before."""
    return layered(name, steps, 1, deps=(1, 1))


def flat(name: str, steps: int) -> Shape:
    """``steps`` independent steps (one layer)."""
    return layered(name, 1, steps)


#: The shapes the comparison runs.
def dag200() -> Shape:
    """200 steps: 10 layers of 20, each step depending on 2-3 steps of the layer before."""
    return layered("dag200", 10, 20, deps=(2, 3))


def chain50() -> Shape:
    """A 50-step chain."""
    return chain("chain50", 50)


def dag1000() -> Shape:
    """1,000 steps: 20 layers of 50, each step depending on 3 steps of the layer before."""
    return layered("dag1000", 20, 50, deps=(3, 3))


# --------------------------------------------------------------------------- writers


def write_ours(shape: Shape, directory: Path, *, agent: str = AGENT) -> Path:
    """Our workflow YAML for ``shape``."""
    steps: list[dict[str, object]] = []
    for sid in shape.ordered():
        step: dict[str, object] = {"id": sid, "agent": agent}
        deps = shape.deps[sid]
        if deps:
            step["depends_on"] = list(deps)
            seen = " ".join(f"{{{{ steps.{d}.status }}}}" for d in deps)
            step["task"] = f"step {sid} after {seen}"
        else:
            step["task"] = f"step {sid}"
        steps.append(step)
    doc = {
        "name": shape.name,
        "description": f"{shape.steps} steps, {shape.edges} edges (bench/peers)",
        "caller": CALLER,
        "steps": steps,
    }
    path = directory / f"{shape.name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def _lobster_run(sid: str, deps: tuple[str, ...], command: str | None) -> str:
    reads = f": {' '.join(f'${d}.stdout' for d in deps)}; " if deps else ""
    return f"{reads}{command + '; ' if command else ''}printf {sid}"


def write_lobster(shape: Shape, directory: Path, *, command: str | None = None) -> Path:
    """A Lobster workflow for ``shape``: one ``parallel:`` step per layer of several steps.

    ``command`` (e.g. ``sleep 0.1``) runs in every step before it prints its id.
    """
    steps: list[dict[str, object]] = []
    for k, layer in enumerate(shape.layers):
        if len(layer) == 1:
            sid = layer[0]
            steps.append({"id": sid, "run": _lobster_run(sid, shape.deps[sid], command)})
            continue
        branches = [
            {"id": sid, "run": _lobster_run(sid, shape.deps[sid], command)} for sid in layer
        ]
        steps.append({"id": f"layer{k:03d}", "parallel": {"wait": "all", "branches": branches}})
    doc = {"name": shape.name, "steps": steps}
    path = directory / f"{shape.name}.lobster"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def write_langgraph(shape: Shape, directory: Path) -> Path:
    """The JSON graph ``langgraph_graph.py`` builds: nodes in order, each with its deps."""
    doc = {
        "name": shape.name,
        "nodes": [{"id": sid, "deps": list(shape.deps[sid])} for sid in shape.ordered()],
    }
    path = directory / f"{shape.name}.langgraph.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- counters

_REF = re.compile(r"\$(s\d{4})\.stdout")


def count_ours(path: Path) -> tuple[int, int]:
    """(steps, edges) of our workflow file."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    steps = doc["steps"]
    return len(steps), sum(len(s.get("depends_on") or []) for s in steps)


def count_lobster(path: Path) -> tuple[int, int]:
    """(shell steps, dependency references) of a Lobster file generated above."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    runs: list[str] = []
    for step in doc["steps"]:
        if "parallel" in step:
            runs.extend(b["run"] for b in step["parallel"]["branches"])
        else:
            runs.append(step["run"])
    return len(runs), sum(len(_REF.findall(r)) for r in runs)


def count_langgraph(path: Path) -> tuple[int, int]:
    """(nodes, edges) of a LangGraph JSON graph."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    return len(doc["nodes"]), sum(len(n["deps"]) for n in doc["nodes"])


def write_all(shape: Shape, directory: Path) -> dict[str, Path]:
    """The three files for ``shape`` in ``directory``: {"ours", "lobster", "langgraph"}."""
    directory.mkdir(parents=True, exist_ok=True)
    return {
        "ours": write_ours(shape, directory),
        "lobster": write_lobster(shape, directory),
        "langgraph": write_langgraph(shape, directory),
    }
