"""Build (and run) one of shapes.py's JSON graphs with LangGraph: the peer's whole process.

    <langgraph venv>/bin/python bench/peers/langgraph_graph.py GRAPH.json [--compile-only]

Every node is trivial (it appends its id to a list with an ``operator.add`` reducer, so
parallel writes merge); a node with dependencies gets ``add_edge([deps...], node)``, so it
runs once all of them are done. Nodes of the first layer hang off START; nodes nothing
depends on lead to END. Prints the number of nodes that ran (or were compiled).
"""

from __future__ import annotations

import json
import operator
import sys
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph


class State(TypedDict):
    done: Annotated[list[str], operator.add]


def _node(sid: str):  # type: ignore[no-untyped-def]
    def run(state: State) -> dict[str, list[str]]:
        return {"done": [sid]}

    return run


def build(path: str):  # type: ignore[no-untyped-def]
    doc = json.loads(open(path, encoding="utf-8").read())
    g = StateGraph(State)
    has_dependents: set[str] = set()
    for node in doc["nodes"]:
        g.add_node(node["id"], _node(node["id"]))
    for node in doc["nodes"]:
        deps = node["deps"]
        if not deps:
            g.add_edge(START, node["id"])
        elif len(deps) == 1:
            g.add_edge(deps[0], node["id"])
        else:
            g.add_edge(deps, node["id"])
        has_dependents.update(deps)
    for node in doc["nodes"]:
        if node["id"] not in has_dependents:
            g.add_edge(node["id"], END)
    return g.compile(), len(doc["nodes"])


def main() -> int:
    graph, n = build(sys.argv[1])
    if "--compile-only" in sys.argv[2:]:
        print(f"compiled {n} nodes")
        return 0
    out = graph.invoke({"done": []}, {"recursion_limit": n + 10})
    ran = len(out["done"])
    print(f"ran {ran} of {n} nodes")
    return 0 if ran == n else 1


if __name__ == "__main__":
    sys.exit(main())
