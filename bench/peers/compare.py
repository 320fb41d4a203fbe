#!/usr/bin/env python3
"""Compare our engine with Lobster and LangGraph on the same workflows, in one run.

    python bench/peers/compare.py [--pairs N] [--json] [--no-lobster] [--no-langgraph]

Installs the peers first if they are not in the cache (bench/peers/setup.py), writes every
system's files from one shape definition (bench/peers/shapes.py) into a temp dir, then times
whole processes in rounds: each round runs every system once, the order rotating from round
to round (A/B/A/B), with ``time.perf_counter`` around the process and its CPU time and peak
RSS from ``os.wait4``. A ratio is ours ÷ peer: the median of the per-round ratios. Absolute
times on a shared 2-core machine drift with the load; the ratios of one run are what to quote.

Works (see docs/performance.md for what each figure means):

- the 200-step DAG (10 layers of 20, 2-3 deps each) and a 50-step chain, run to the end:
  `workflow run` on echo agents (embedded gateway, pool off, 20 in flight), Lobster's
  no-op shell steps (one ``parallel:`` step per layer), LangGraph's trivial nodes;
- 1,000 steps (20 layers of 50, 3 deps each) checked, not run: `workflow validate` and
  `workflow run --dry-run` against `lobster run --dry-run` and LangGraph build + compile;
- start-up: `orchestrate --help` against the venv's `python -c pass`;
- the engine's cost per delegation against the bare floor (bench/delegation.py);
- concurrency in-process (bench/peers/concurrency.py): throughput of 100 ms agents with
  16 in flight ÷ 1, CPU per step of instant agents with 20 in flight ÷ 1;
- peak RSS of each system on the 200-step DAG.

With --json the last line is one JSON object with every row and the raw samples' medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
import setup as peers_setup  # noqa: E402
import shapes  # noqa: E402
from concurrency import write_config  # noqa: E402

OURS, LOBSTER, LANGGRAPH = "ours", "lobster", "langgraph"
#: Steps in flight for our DAG runs (Lobster runs a layer's 20 branches at once).
DAG_PARALLEL = 20


class BenchError(RuntimeError):
    """A timed process failed: the message has its command and the tail of its output."""


@dataclass(frozen=True)
class Sample:
    """One whole process: wall time, CPU time (user + system, children included), peak RSS."""

    wall: float
    cpu: float
    maxrss_mib: float


#: GNU time, when present, reports the peak RSS: a child's own ru_maxrss starts at the RSS
#: of the process that forked it (Linux keeps the high-water mark across exec), so measured
#: straight from this harness (~30 MiB) a small process would look as big as the harness.
GNU_TIME = Path("/usr/bin/time")


def run_process(cmd: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> Sample:
    """Run ``cmd`` to the end (stdin closed, output to ``log``); wall time around it, CPU
    time (children included) from wait4, peak RSS from GNU time if present, else wait4."""
    rss_file = log.with_suffix(".rss")
    full = [str(GNU_TIME), "-f", "%M", "-o", str(rss_file), *cmd] if GNU_TIME.exists() else cmd
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            full, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd
        )
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-12:])
        raise BenchError(f"`{' '.join(cmd)}` exited {code}; last lines of {log}:\n{tail}")
    # ru_maxrss and GNU time's %M: KiB on Linux, the largest process of the waited-for tree.
    maxrss_kib = float(ru.ru_maxrss)
    if full is not cmd:
        lines = rss_file.read_text().split()
        maxrss_kib = float(lines[-1]) if lines else maxrss_kib
    return Sample(wall, ru.ru_utime + ru.ru_stime, maxrss_kib / 1024)


@dataclass
class Group:
    """Commands timed together: one of each per round, the order rotating."""

    name: str
    commands: dict[str, list[str]]
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    error: str | None = None

    def run(self, rounds: int, cwd: Path, base_env: dict[str, str]) -> None:
        labels = list(self.commands)
        self.samples = {label: [] for label in labels}
        try:
            for k in range(rounds + 1):  # round 0 warms caches (page cache, .pyc) and is dropped
                shift = k % len(labels)
                for label in labels[shift:] + labels[:shift]:
                    s = run_process(
                        self.commands[label],
                        env=self.env.get(label, base_env),
                        cwd=cwd,
                        log=cwd / f"{self.name}-{re.sub(r'[^A-Za-z0-9]+', '-', label)}.log",
                    )
                    if k > 0:
                        self.samples[label].append(s)
        except BenchError as exc:
            self.error = str(exc)

    def median(self, label: str, what: Callable[[Sample], float] = lambda s: s.wall) -> float:
        return statistics.median(what(s) for s in self.samples[label])

    def ratio(self, a: str, b: str, what: Callable[[Sample], float] = lambda s: s.wall) -> float:
        """Median over rounds of what(a) / what(b) in the same round."""
        return statistics.median(
            what(x) / what(y) for x, y in zip(self.samples[a], self.samples[b], strict=True)
        )


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    work: str
    ours: str
    peer: str
    ratio: float | None
    goal: str
    met: bool | None
    note: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "work": self.work,
            "ours": self.ours,
            "peer": self.peer,
            "ratio": self.ratio,
            "goal": self.goal,
            "met": self.met,
            "note": self.note,
        }


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.1f} s"


def _goal_le(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def time_rows(
    g: Group, work: str, ours: str, peers: dict[str, str], goals: dict[str, float]
) -> list[Row]:
    """Rows ours ÷ each peer of a group (wall time); a goal only where one is set.

    Each row's note gives the same ratio for CPU time (user + system, children included),
    which moves less with the machine's load than wall time does.
    """
    if g.error is not None:
        return [Row(work, "-", "-", None, "-", None, _failed(g.error))]
    rows = []
    for label, peer_name in peers.items():
        if label not in g.samples:
            continue
        r = g.ratio(ours, label)
        limit = goals.get(label)
        rows.append(
            Row(
                f"{work} vs {peer_name}",
                _fmt_s(g.median(ours)),
                _fmt_s(g.median(label)),
                round(r, 2),
                f"<= {limit}x" if limit is not None else "-",
                _goal_le(r, limit) if limit is not None else None,
                _cpu_note(g, ours, label),
            )
        )
    return rows


def _cpu_note(g: Group, ours: str, peer: str) -> str:
    """``CPU 0.45x (0.590 s vs 1.310 s)``: the per-round CPU ratio and the medians."""

    def cpu(s: Sample) -> float:
        return s.cpu

    if not all(cpu(s) > 0 for s in g.samples[peer]):
        return ""
    r = g.ratio(ours, peer, cpu)
    return f"CPU {r:.2f}x: {_fmt_s(g.median(ours, cpu))} vs {_fmt_s(g.median(peer, cpu))}"


def sub_json(cmd: list[str], cwd: Path, timeout: float = 900) -> dict[str, object]:
    """Run a bench script with --json and return its last line, parsed."""
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-12:])
        raise BenchError(f"`{' '.join(cmd)}` exited {proc.returncode}:\n{tail}")
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _table(rows: list[Row]) -> str:
    head = ("work", "ours (median)", "peer (median)", "ratio", "goal", "met?")
    body = [
        (
            r.work,
            r.ours,
            r.peer,
            "-" if r.ratio is None else f"{r.ratio:.2f}",
            r.goal,
            {True: "yes", False: "NO", None: "-"}[r.met],
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r, cells in zip(rows, body, strict=True):
        line = "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
        lines.append(line + (f"   ({r.note})" if r.note else ""))
    return "\n".join(lines)


def _bin(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


@dataclass
class Peers:
    """The installed peers, and why a column is skipped."""

    lobster: peers_setup.LobsterInstall | None = None
    langgraph: peers_setup.LangGraphInstall | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> dict[str, str]:
        """Label -> display name of the peers that run."""
        return {k: v for k, v in NAMES.items() if k not in self.skipped}


NAMES = {LOBSTER: "Lobster", LANGGRAPH: "LangGraph"}


def install_peers(cache: Path | None, *, lobster: bool, langgraph: bool) -> Peers:
    """Install (or find) each peer asked for; a peer that cannot be had is skipped."""
    peers = Peers()
    if not lobster:
        peers.skipped[LOBSTER] = "--no-lobster"
    else:
        try:
            peers.lobster = peers_setup.ensure_lobster(cache)
        except peers_setup.PeerUnavailable as exc:
            peers.skipped[LOBSTER] = str(exc)
    if not langgraph:
        peers.skipped[LANGGRAPH] = "--no-langgraph"
    else:
        try:
            peers.langgraph = peers_setup.ensure_langgraph(cache)
        except peers_setup.PeerUnavailable as exc:
            peers.skipped[LANGGRAPH] = str(exc)
    return peers


def build_groups(tmp: Path, peers: Peers) -> dict[str, Group]:
    """Every system's files from the shapes, and the commands timed together."""
    cfg = str(write_config(tmp))
    files = {
        s.name: shapes.write_all(s, tmp)
        for s in (shapes.dag200(), shapes.chain50(), shapes.dag1000())
    }
    wf = _bin("workflow")
    lob, lg = peers.lobster, peers.langgraph

    def ours_run(name: str) -> list[str]:
        flags = ["--non-interactive", "--quiet", "--max-parallel", str(DAG_PARALLEL)]
        return [wf, "run", str(files[name]["ours"]), "--config", cfg, *flags]

    def peers_of(name: str, *, check: bool) -> dict[str, list[str]]:
        cmds: dict[str, list[str]] = {}
        if lob is not None:
            extra = ["--dry-run"] if check else []
            cmds[LOBSTER] = lob.command("run", *extra, "--file", str(files[name]["lobster"]))
        if lg is not None:
            extra = ["--compile-only"] if check else []
            script = str(HERE / "langgraph_graph.py")
            cmds[LANGGRAPH] = [str(lg.python), script, str(files[name]["langgraph"]), *extra]
        return cmds

    big = str(files["dag1000"]["ours"])
    groups = [
        Group("dag200", {OURS: ours_run("dag200"), **peers_of("dag200", check=False)}),
        Group("chain50", {OURS: ours_run("chain50"), **peers_of("chain50", check=False)}),
        Group(
            "check1000",
            {
                "validate": [wf, "validate", big, "--config", cfg],
                "dry-run": [wf, "run", "--dry-run", big, "--config", cfg],
                **peers_of("dag1000", check=True),
            },
        ),
        Group(
            "startup",
            {
                "orchestrate --help": [_bin("orchestrate"), "--help"],
                "python -c pass": [sys.executable, "-c", "pass"],
            },
        ),
    ]
    env = dict(os.environ, LOBSTER_STATE_DIR=str(tmp / "lobster-state"))
    if lob is not None:
        env["PATH"] = f"{lob.node.parent}{os.pathsep}{env.get('PATH', '')}"
    for g in groups:
        g.env = {LOBSTER: env}
    return {g.name: g for g in groups}


def process_rows(groups: dict[str, Group], peers: Peers) -> list[Row]:
    """The whole-process rows: runs, checks, start-up."""
    goal = {LOBSTER: 0.5}
    rows = time_rows(groups["dag200"], "200-step DAG run", OURS, peers.names, goal)
    rows += time_rows(groups["chain50"], "50-step chain run", OURS, peers.names, goal)
    check = {LOBSTER: "Lobster --dry-run", LANGGRAPH: "LangGraph compile"}
    check = {k: v for k, v in check.items() if k in peers.names}
    for label, cmd in (
        ("validate", "`workflow validate`"),
        ("dry-run", "`workflow run --dry-run`"),
    ):
        rows += time_rows(groups["check1000"], f"1,000 steps {cmd}", label, check, goal)
    g = groups["startup"]
    if g.error is not None:
        return [*rows, Row("start-up", "-", "-", None, "<= 60 ms", None, _failed(g.error))]
    ours_ms = g.median("orchestrate --help") * 1000
    rows.append(
        Row(
            "start-up `orchestrate --help` vs `python -c pass`",
            f"{ours_ms:.1f} ms",
            f"{g.median('python -c pass') * 1000:.1f} ms",
            round(g.ratio("orchestrate --help", "python -c pass"), 2),
            "<= 60 ms (ours)",
            ours_ms <= 60,
        )
    )
    return rows


def rss_rows(g: Group, peers: Peers) -> list[Row]:
    """Peak RSS of each system on the 200-step DAG (from the timed runs)."""
    if g.error is not None:
        return []

    def rss(s: Sample) -> float:
        return s.maxrss_mib

    return [
        Row(
            f"peak RSS, 200-step DAG vs {name}",
            f"{g.median(OURS, rss):.1f} MiB",
            f"{g.median(label, rss):.1f} MiB",
            round(g.ratio(OURS, label, rss), 2),
            "-",
            None,
        )
        for label, name in peers.names.items()
    ]


def delegation_rows(medians: dict[str, object]) -> list[Row]:
    """The engine's cost per delegation against the bare floor, from bench/delegation.py."""
    print("running bench/delegation.py ...", file=sys.stderr, flush=True)
    script = str(REPO / "bench" / "delegation.py")
    try:
        # --workdir: its files are kept until the end of the comparison, so its cleanup
        # does not slow the file creates of what runs next (docs/performance.md, "Files")
        cmd = [sys.executable, script, "--json", "-n", "500", "--workdir", os.environ["TMPDIR"]]
        d = sub_json(cmd, REPO)
        r = float(d["ratio_p50"])  # type: ignore[arg-type]
        medians["delegation"] = d
        return [
            Row(
                "engine cost per delegation vs bare floor (p50)",
                f"{d['engine_p50_ms']} ms",
                f"{d['bare_p50_ms']} ms",
                r,
                "<= 1.5x",
                r <= 1.5,
            )
        ]
    except (BenchError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
        return [Row("engine cost per delegation", "-", "-", None, "<= 1.5x", None, _failed(exc))]


def concurrency_rows(pairs: int, medians: dict[str, object]) -> list[Row]:
    """Throughput at 16 in flight vs 1, CPU per step at 20 vs 1 (bench/peers/concurrency.py)."""
    print("running bench/peers/concurrency.py ...", file=sys.stderr, flush=True)
    cmd = [sys.executable, str(HERE / "concurrency.py"), "--json", "--pairs", str(pairs),
           "--workdir", os.environ["TMPDIR"]]  # fmt: skip
    try:
        c = sub_json(cmd, REPO)
        steps = int(c["sleep_steps"])  # type: ignore[call-overload]
        w1, w16 = float(c["wall_1_s"]), float(c["wall_16_s"])  # type: ignore[arg-type]
        t = float(c["throughput_ratio_16_vs_1"])  # type: ignore[arg-type]
        cr = float(c["cpu_per_step_ratio_20_vs_1"])  # type: ignore[arg-type]
        medians["concurrency"] = c
    except (BenchError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
        return [Row("concurrency", "-", "-", None, "-", None, _failed(exc))]
    return [
        Row(
            "throughput, 100 ms agents: 16 in flight vs 1",
            f"{steps / w16:.1f} steps/s",
            f"{steps / w1:.1f} steps/s",
            t,
            ">= 10x",
            t >= 10,
        ),
        Row(
            "CPU per step, echo agents: 20 in flight vs 1",
            f"{c['cpu_per_step_20_ms']} ms",
            f"{c['cpu_per_step_1_ms']} ms",
            cr,
            "<= 1x",
            cr <= 1,
        ),
    ]


def create_cost_us(directory: Path, n: int = 100) -> float:
    """Median microseconds to create (and write, close, rename) a small file in
    ``directory``: 30 us in a quiet directory, up to 900 us where many files were deleted
    in the last minutes (see docs/performance.md, "Files")."""
    probe = Path(tempfile.mkdtemp(prefix="probe-", dir=directory))
    times = []
    for i in range(n):  # the files stay (with the run's): deleting them would slow the run
        t0 = time.perf_counter()
        tmp = probe / f".t{i}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"{}")
        os.close(fd)
        os.rename(tmp, probe / f"f{i}.json")
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


@contextlib.contextmanager
def _tempdir(parent: Path, keep: bool) -> Iterator[str]:
    """A new directory under ``parent``, removed at the end unless ``keep``."""
    path = tempfile.mkdtemp(prefix="bench-peers-", dir=parent)
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def compile_bytecode() -> None:
    """Compile the engine's modules to bytecode, as ``pip install`` does.

    An editable install has no ``.pyc`` files until a run writes them, and a shell with
    ``PYTHONDONTWRITEBYTECODE=1`` never does: each timed process would then compile
    dozens of modules (about 100 ms), which no installed copy pays and the peers'
    installs do not either.
    """
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(REPO / "engine")],
        check=False,
        stdout=subprocess.DEVNULL,
    )


def _failed(exc: object) -> str:
    return f"failed: {str(exc).splitlines()[0]}"


def main(argv: list[str] | None = None) -> int:
    """Install the peers, time every work, print the table (and JSON with --json)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5, help="timed rounds per work (default 5)")
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")
    ap.add_argument("--cache", type=Path, help="where the peers are installed")
    ap.add_argument("--no-lobster", action="store_true", help="leave Lobster out")
    ap.add_argument("--no-langgraph", action="store_true", help="leave LangGraph out")
    ap.add_argument("--no-delegation", action="store_true", help="skip bench/delegation.py")
    ap.add_argument("--no-concurrency", action="store_true", help="skip the concurrency figures")
    ap.add_argument(
        "--workdir",
        type=Path,
        help="where every system's files and runs go (default: a new directory under "
        "the cache; /tmp is slow to create files in on a busy machine)",
    )
    args = ap.parse_args(argv)
    if args.pairs < 1:
        ap.error("--pairs must be at least 1")

    peers = install_peers(args.cache, lobster=not args.no_lobster, langgraph=not args.no_langgraph)
    for name, why in peers.skipped.items():
        print(f"note: the {NAMES[name]} column is skipped: {why}", file=sys.stderr)
    compile_bytecode()
    workdir = (args.workdir or (args.cache or peers_setup.default_cache()) / "runs").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    # bench/delegation.py and concurrency.py make their temp dirs there too (TMPDIR).
    os.environ["TMPDIR"] = str(workdir)
    load_before = os.getloadavg()
    t_start = time.monotonic()
    medians: dict[str, object] = {}
    # With --workdir the run's files are kept: deleting thousands of files makes the next
    # minutes' file creates in that part of the disk slower (docs/performance.md, "Files").
    keep = args.workdir is not None
    with _tempdir(workdir, keep) as tmpname:
        tmp = Path(tmpname)
        os.environ["TMPDIR"] = tmpname  # the sub-benches' files go here, removed at the end
        create_us = create_cost_us(tmp)
        groups = build_groups(tmp, peers)
        for g in groups.values():
            rounds = args.pairs * 3 if g.name == "startup" else args.pairs
            print(
                f"timing {g.name}: {', '.join(g.commands)} x {rounds} ...",
                file=sys.stderr,
                flush=True,
            )
            g.run(rounds, tmp, dict(os.environ))
            if g.error is None:
                medians[g.name] = {
                    label: {
                        "wall_s": round(g.median(label), 4),
                        "cpu_s": round(g.median(label, lambda s: s.cpu), 4),
                        "maxrss_mib": round(g.median(label, lambda s: s.maxrss_mib), 1),
                    }
                    for label in g.commands
                }
        # Inside the work directory, before it is removed: removing thousands of files
        # makes the next half minute's file creates slow (docs/performance.md, "Files").
        rows = process_rows(groups, peers)
        if not args.no_delegation:
            rows += delegation_rows(medians)
        if not args.no_concurrency:
            rows += concurrency_rows(args.pairs, medians)
    rows += rss_rows(groups["dag200"], peers)
    for name, why in peers.skipped.items():
        rows.append(
            Row(
                f"{NAMES[name]} column",
                "-",
                "-",
                None,
                "-",
                None,
                f"skipped: {why.splitlines()[0]}",
            )
        )
    load_after = os.getloadavg()
    info = {
        "pairs": args.pairs,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "seconds": round(time.monotonic() - t_start, 1),
        "workdir": str(workdir),
        "file_create_us": round(create_us, 1),
        "lobster": None if peers.lobster is None else peers.lobster.version,
        "node": None if peers.lobster is None else str(peers.lobster.node),
        "langgraph": None if peers.langgraph is None else peers.langgraph.version,
    }
    print(
        f"ours vs peers, whole processes, {args.pairs} rounds (order rotating), medians; "
        f"ratio = ours / peer, the median of the per-round ratios"
    )
    print(
        f"machine: {info['cpus']} CPUs, load {info['loadavg_before'][0]} -> "
        f"{info['loadavg_after'][0]} (1-min average, before -> after); "
        f"Lobster {info['lobster'] or '-'}, LangGraph {info['langgraph'] or '-'}, "
        f"Python {info['python']}"
    )
    print(
        f"work directory: {workdir} (a small file create there: {create_us:.0f} us median; "
        "30 us is a quiet directory, hundreds of us mean recent mass deletions)"
    )
    print(_table(rows))
    if args.json:
        print(json.dumps({"info": info, "rows": [r.as_dict() for r in rows], "medians": medians}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
