"""The CLI pointed (`--server`) at an HTTP server that is not `orchestrate serve`.

A real `python -m http.server`-style server on 127.0.0.1 answers with HTML pages (404 to a
GET, 501 to a POST): the client says which address answered what, in one paragraph,
exit 2, and never prints the page.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from engine.cli import orchestrate, workflow
from tests.servekit import cli


@pytest.fixture(scope="module")
def other(tmp_path_factory: Any) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("www")

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, directory=str(folder), **kw)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(
    ("group", "args", "status", "path"),
    [
        (workflow, ["runs"], 404, "/v1/runs"),
        (workflow, ["status", "wf-20260101T000000-00000000"], 404, "/v1/runs/"),
        (workflow, ["run", "gate", "-i", "query=x"], 501, "/v1/runs"),
        (orchestrate, ["webster", "find the CTE", "--caller", "manager"], 501, "/v1/delegations"),
    ],
)
def test_another_server_is_named_in_one_paragraph(
    other: str, tmp_path: Path, group: Any, args: list[str], status: int, path: str
) -> None:
    res = cli(group, *args, "--server", other)
    out = res.output
    assert res.exit_code == 2, out
    assert "<html" not in out.lower() and "doctype" not in out.lower(), out
    assert f"`{other}` answered {status} to {path}" in out, out
    assert "is `orchestrate serve` running there" in out
    assert out.strip().count("\n") == 0, out  # one paragraph
