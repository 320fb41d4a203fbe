"""The peer comparison's shape generator: every system gets the same graph (offline, fast).

Nothing is installed here: the files for ours, Lobster and LangGraph are written from one
shape and read back by independent counters; ours is also planned by the real engine.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

BENCH = Path(__file__).resolve().parents[1] / "bench" / "peers"


def _load(name: str) -> ModuleType:
    if str(BENCH) not in sys.path:  # concurrency.py imports shapes as a sibling
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_peers_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


shapes = _load("shapes")

#: (shape, steps, edges, layers): the figures the comparison quotes.
CASES = [
    (shapes.dag200, 200, None, 10),
    (shapes.chain50, 50, 49, 50),
    (shapes.dag1000, 1000, 19 * 50 * 3, 20),
]


@pytest.mark.parametrize(
    ("make", "steps", "edges", "layers"), CASES, ids=["dag200", "chain50", "dag1000"]
)
def test_every_system_gets_the_same_graph(
    tmp_path: Path, make: object, steps: int, edges: int | None, layers: int
) -> None:
    shape = make()  # type: ignore[operator]
    assert shape.steps == steps and len(shape.layers) == layers
    if edges is not None:
        assert shape.edges == edges
    files = shapes.write_all(shape, tmp_path)
    counts = {
        "ours": shapes.count_ours(files["ours"]),
        "lobster": shapes.count_lobster(files["lobster"]),
        "langgraph": shapes.count_langgraph(files["langgraph"]),
    }
    assert counts == dict.fromkeys(counts, (shape.steps, shape.edges))


def test_dag200_has_two_or_three_deps_from_the_layer_before() -> None:
    shape = shapes.dag200()
    assert [len(layer) for layer in shape.layers] == [20] * 10
    assert 2 * 9 * 20 <= shape.edges <= 3 * 9 * 20
    for k, layer in enumerate(shape.layers):
        for sid in layer:
            deps = shape.deps[sid]
            if k == 0:
                assert deps == ()
            else:
                assert 2 <= len(deps) <= 3 and set(deps) <= set(shape.layers[k - 1])
    assert shapes.dag200() == shape  # the seed is fixed: the same graph every time


def test_the_edges_are_the_same_edges(tmp_path: Path) -> None:
    shape = shapes.dag200()
    files = shapes.write_all(shape, tmp_path)
    ours = yaml.safe_load(files["ours"].read_text())
    ours_edges = {(d, s["id"]) for s in ours["steps"] for d in s.get("depends_on", [])}
    graph = json.loads(files["langgraph"].read_text())
    lg_edges = {(d, n["id"]) for n in graph["nodes"] for d in n["deps"]}
    lob = yaml.safe_load(files["lobster"].read_text())
    lob_edges = set()
    for k, step in enumerate(lob["steps"]):
        # one `parallel:` step per layer (Lobster has no depends_on), all branches waited for
        assert step["id"] == f"layer{k:03d}" and step["parallel"]["wait"] == "all"
        assert [b["id"] for b in step["parallel"]["branches"]] == list(shape.layers[k])
        for b in step["parallel"]["branches"]:
            lob_edges |= {(d, b["id"]) for d in shapes._REF.findall(b["run"])}
    expected = {(d, s) for s, deps in shape.deps.items() for d in deps}
    assert ours_edges == lg_edges == lob_edges == expected


def test_a_chain_is_plain_lobster_steps_in_order(tmp_path: Path) -> None:
    path = shapes.write_lobster(shapes.chain50(), tmp_path, command="sleep 0.1")
    steps = yaml.safe_load(path.read_text())["steps"]
    assert [s["id"] for s in steps] == [f"s{i:04d}" for i in range(50)]
    assert steps[0]["run"] == "sleep 0.1; printf s0000"
    assert steps[7]["run"] == ": $s0006.stdout; sleep 0.1; printf s0007"


def test_our_files_plan_on_the_real_engine(tmp_path: Path) -> None:
    from engine.config import load_config
    from engine.runner import prepare

    concurrency = _load("concurrency")
    cfg = load_config(concurrency.write_config(tmp_path))
    for shape in (shapes.dag200(), shapes.chain50()):
        path = shapes.write_ours(shape, tmp_path)
        plan = prepare(cfg, str(path), {}).plan
        assert len(plan.steps) == shape.steps
        assert len(plan.groups) == len(shape.layers)
        assert {sid: tuple(sorted(plan.steps[sid].depends_on)) for sid in plan.steps} == {
            sid: tuple(sorted(d)) for sid, d in shape.deps.items()
        }


def test_rounds_time_whole_processes_and_rotate(tmp_path: Path) -> None:
    compare = _load("compare")
    py = sys.executable
    g = compare.Group(
        "g",
        {
            "a": [py, "-c", "import time; time.sleep(0.05)"],
            "b": [py, "-c", "pass"],
        },
    )
    g.run(2, tmp_path, {"PATH": "/usr/bin:/bin"})
    assert g.error is None
    assert [len(g.samples["a"]), len(g.samples["b"])] == [2, 2]
    assert g.median("a") >= 0.05 and g.median("b") > 0  # wall time around the process
    assert g.ratio("a", "b") == statistics.median(
        x.wall / y.wall for x, y in zip(g.samples["a"], g.samples["b"], strict=True)
    )
    rss = g.median("b", lambda s: s.maxrss_mib)
    assert rss > 1
    if compare.GNU_TIME.exists():  # the child's own peak, not the forking process's
        assert rss < 40


def test_a_failing_process_is_a_row_with_the_reason(tmp_path: Path) -> None:
    compare = _load("compare")
    cmd = [sys.executable, "-c", "import sys; print('boom here'); sys.exit(3)"]
    g = compare.Group("bad", {"ours": cmd, "lobster": [sys.executable, "-c", "pass"]})
    g.run(1, tmp_path, {"PATH": "/usr/bin:/bin"})
    assert g.error is not None and "exited 3" in g.error and "boom here" in g.error
    rows = compare.time_rows(g, "work", "ours", {"lobster": "Lobster"}, {"lobster": 0.5})
    assert [(r.work, r.ratio, r.met) for r in rows] == [("work", None, None)]
    assert rows[0].note.startswith("failed: `")
    table = compare._table(rows)
    assert "failed: `" in table and table.splitlines()[0].split() == [
        "work",
        "ours",
        "(median)",
        "peer",
        "(median)",
        "ratio",
        "goal",
        "met?",
    ]


def test_ab_runs_both_trees_in_alternating_rounds(tmp_path: Path) -> None:
    """bench/ab.py times a command against two engine trees and prints both and a ratio."""
    import subprocess

    root = str(BENCH.parents[1])
    marker = tmp_path / "trees.txt"
    code = f"import engine, pathlib; open({str(marker)!r}, 'a').write(engine.__file__ + '\\n')"
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH.parent / "ab.py"),
            "--rounds",
            "2",
            root,
            root,
            "--",
            sys.executable,
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=tmp_path,  # not the worktree: `python -c` imports the current directory first
    ).stdout
    assert out.count(f"{root}: wall median") == 2
    assert "new / old: wall" in out
    runs = marker.read_text().splitlines()
    assert len(runs) == 6  # warm-up round + 2 rounds, both trees each
    assert all(r.startswith(root) for r in runs)
    refused = subprocess.run(
        [sys.executable, str(BENCH.parent / "ab.py"), root, root, "--", sys.executable, "-c", ""],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )
    assert refused.returncode == 2 and "holds an `engine/` package" in refused.stderr
