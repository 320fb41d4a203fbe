"""A damaged history, read by real `orchestrate show`/`tree` and `metrics` processes.

A record file that is empty, truncated, not an object, of an unknown outcome or of a newer
schema gets one answer from all three (`engine.record.record_problem`): show and tree name
the file and what is wrong (exit 2), metrics lists it as a problem file. A record whose
file name is not `<runId>.json`, or that repeats a run id, is not counted by metrics.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_wf_fix_paths import _gate_wf, _parked, _wf

ORCH = [sys.executable, "-c", "from engine.cli import orchestrate_main; orchestrate_main()"]
METRICS = [sys.executable, "-c", "from engine.cli import metrics_main; metrics_main()"]


def _run(argv: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*argv, *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A finished two-step run: two delegation records under `handoffs/`."""
    tmp = tmp_path_factory.mktemp("history")
    config, mine, rid = _parked(tmp, _gate_wf())
    assert _wf(mine, config, "approve", rid, "review").returncode == 0
    assert _wf(mine, config, "resume", rid).returncode == 0
    handoffs = tmp / "handoffs"
    assert (handoffs / f"{rid}-research-1.json").is_file()
    return config, handoffs, f"{rid}-research-1"


def _metrics(config: Path) -> dict[str, object]:
    res = _run(METRICS, "json", "--config", str(config))
    assert res.returncode == 0, res.stderr
    doc: dict[str, object] = json.loads(res.stdout)
    return doc


def _problems(doc: dict[str, object]) -> dict[str, str]:
    files = doc["files"]
    assert isinstance(files, dict)
    return {f["path"]: f["reason"] for f in files["invalid_files"]}


def _delegations(doc: dict[str, object]) -> int:
    agents = doc["agents"]
    assert isinstance(agents, dict)
    return sum(int(a["delegations"]) for a in agents.values())


def _edit(path: Path, **changes: object) -> bytes:
    data = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if key == "outcome":
            data["envelope"]["outcome"] = value
        else:
            data[key] = value
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        ("empty", "empty"),
        ("truncated", "truncated JSON: "),
        ("array", "not a record: the JSON is an array, not an object"),
        ("outcome", "unknown outcome `teleported` (known: complete, "),
        ("schema", "written by a newer engine: schemaVersion 7.0, this engine reads 1.x"),
    ],
)
def test_show_tree_and_metrics_name_a_damaged_record_alike(
    history: tuple[Path, Path, str], damage: str, said: str
) -> None:
    config, handoffs, rid = history
    path = handoffs / f"{rid}.json"
    good = path.read_bytes()
    before = _delegations(_metrics(config))
    bad = {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "array": b"[1, 2]",
        "outcome": _edit(path, outcome="teleported"),
        "schema": _edit(path, schemaVersion="7.0"),
    }[damage]
    path.write_bytes(bad)
    try:
        for command in ("show", "tree"):
            res = _run(ORCH, command, rid, "--config", str(config))
            assert res.returncode == 2, (command, res.stdout, res.stderr)
            assert "Traceback" not in res.stderr
            assert res.stderr.startswith(f"error: the record `{path}` cannot be read: {said}")
            assert "no record for" not in res.stderr
        assert path.read_bytes() == bad  # nothing was delivered over it
        doc = _metrics(config)
        assert _problems(doc)[path.name].startswith(said)
        assert _delegations(doc) == before - 1
    finally:
        path.write_bytes(good)


def test_an_unknown_run_id_points_at_the_records(history: tuple[Path, Path, str]) -> None:
    config, handoffs, _ = history
    res = _run(ORCH, "show", "orch-nope", "--config", str(config))
    assert res.returncode == 2
    assert "metrics json" not in res.stderr
    assert f"the records are the `<runId>.json` files of `{handoffs}`" in res.stderr


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("{rid} (copy).json", "not counted: the file name is not `<runId>.json` (`runId` is `"),
        ("-rf.json", "not counted: '-rf' is not a run id"),
        ("weird name ü.json", "not counted: 'weird name ü' is not a run id"),
        ("esc\x1b[31m.json", "not counted: 'esc\\x1b[31m' is not a run id"),
        ("new\nline.json", "not counted: 'new\\nline' is not a run id"),
    ],
    ids=["copy", "dash", "space", "esc", "newline"],
)
def test_metrics_counts_a_record_only_under_its_run_id(
    history: tuple[Path, Path, str], name: str, reason: str
) -> None:
    config, handoffs, rid = history
    before = _delegations(_metrics(config))
    name = name.format(rid=rid)
    copy = handoffs / name
    stem = name.removesuffix(".json")
    runid = rid if "(copy)" in name else stem
    copy.write_bytes(_edit(handoffs / f"{rid}.json", runId=runid))
    try:
        doc = _metrics(config)
        assert _delegations(doc) == before
        assert _problems(doc)[name].startswith(reason)
        text = _run(METRICS, "text", "--config", str(config)).stdout
        assert "\x1b" not in text and "new\nline" not in text
    finally:
        copy.unlink()


def test_a_run_id_recorded_twice_is_counted_once(history: tuple[Path, Path, str]) -> None:
    config, handoffs, rid = history
    before = _delegations(_metrics(config))
    twin = handoffs / "sub" / f"{rid}.json"
    twin.parent.mkdir(exist_ok=True)
    twin.write_bytes((handoffs / f"{rid}.json").read_bytes())
    try:
        doc = _metrics(config)
        assert _delegations(doc) == before
        assert _problems(doc)[f"sub/{rid}.json"] == (
            f"not counted: run `{rid}` is already counted from another file"
        )
    finally:
        twin.unlink()
