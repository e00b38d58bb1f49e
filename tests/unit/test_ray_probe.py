"""The pre-run probe's Ray query (scalelab.provenance.RAY_NODES): the live nodes and their CPUs from the
head's dashboard JSON, sent with the cluster's token.  The reply in data/ray_nodes_summary.json was
captured from a lab's Ray 2.60 dashboard (``/nodes?view=summary``), trimmed to the fields that matter,
with the third node marked DEAD."""
from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from scalelab.provenance import RAY_NODES

REPLY = (Path(__file__).parent / "data" / "ray_nodes_summary.json").read_bytes()
TOKEN = "0123abcd" * 8


@pytest.fixture()
def dashboard():
    seen: list[tuple[str, str | None]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            seen.append((self.path, self.headers.get("Authorization")))
            ok = self.headers.get("Authorization") == f"Bearer {TOKEN}"
            self.send_response(200 if ok else 401)
            self.end_headers()
            self.wfile.write(REPLY if ok else b'{"result": false, "msg": "Unauthorized"}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/nodes?view=summary", seen
    server.shutdown()
    server.server_close()


def _probe(url: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", RAY_NODES, url], capture_output=True, text=True, timeout=60,
                          env=env)


def test_live_nodes_and_cpus_with_the_token(dashboard, tmp_path) -> None:
    url, seen = dashboard
    (tmp_path / "token").write_text(TOKEN + "\n")
    out = _probe(url, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [["10.111.1.1", 2.0], ["10.111.1.3", 2.0]]   # the DEAD node left out
    assert seen == [("/nodes?view=summary", f"Bearer {TOKEN}")]


def test_a_refused_query_ends_in_one_error_line(dashboard, tmp_path) -> None:
    url, _ = dashboard
    out = _probe(url, {})   # no token: the dashboard refuses
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1].startswith("urllib.error.HTTPError: HTTP Error 401")
