"""The status page's data and HTTP serving without Ray: the page's numbers are the registry's (what
/metrics exports), the board observes the graph's callbacks without replacing them, its rejection
buffer is bounded, pages carry a script-free CSP, and a failing page never takes /metrics down.
(The page in a real browser, on a real service: tests/test_pages.py.)"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from curator.commit import Committed
from curator.records import Position, Rejection
from pipelines.metrics import HealthServer, Metrics
from pipelines.status import StatusBoard


def _get(port: int, path: str) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def _metrics() -> Metrics:
    m = Metrics()
    m.items_out.labels("kept").inc(7)
    m.items_out.labels("dropped-duplicate").inc(2)
    m.lag.labels("0").set(5)
    m.lag.labels("10").set(1)
    m.lag.labels("2").set(0)
    m.queue_items.labels("embed").set(3)
    m.index_size.set(42)
    m.batch_seconds.labels("select").observe(0.5)
    m.batch_seconds.labels("select").observe(1.5)
    return m


def test_view_is_the_registry(tmp_path: Path) -> None:
    m = _metrics()
    v = StatusBoard(m, tmp_path).view()
    exported = {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(m.render().decode()) for s in fam.samples}
    assert {t["decision"]: t["total"] for t in v["throughput"]} == {
        dict(k[1])["decision"]: val for k, val in exported.items() if k[0] == "curator_items_out_total"}
    assert [p for p, _ in v["lag"]] == ["0", "2", "10"] and dict(v["lag"])["0"] == 5
    assert v["queues"]["embed"] == 3 and v["index_size"] == exported[("curator_index_size", ())] == 42
    assert v["latency"]["select"] == 1.0
    assert v["last_commit"] is None and not v["has_report"]


def test_board_keeps_the_newest_rejections_and_the_last_commit(tmp_path: Path) -> None:
    b = StatusBoard(Metrics(), tmp_path, maxlen=3)
    b.note_rejections([Rejection(Position("t", 0, i), f"bad {i}", f"id{i}") for i in range(5)])
    b.note_commit(Committed(4, {"t": {0: 5}}, 0.1))
    assert [r.id for r in b.rejections] == ["id4", "id3", "id2"]  # bounded, newest first
    v = b.view()
    assert v["last_commit"]["commit"] == 4 and v["last_commit"]["positions"] == {"t": {"0": 5}}
    b.note_rejections([Rejection(Position("f", 0, 9), "x")])
    assert b.rejections[0].offset == 9


def test_pages_over_http(tmp_path: Path) -> None:
    m = _metrics()
    board = StatusBoard(m, tmp_path / "no-run-yet")
    board.note_rejections([Rejection(Position("t", 1, 2), "reason <b>bold</b>", "<script>alert(1)</script>")])

    def broken(_q: dict[str, Any]) -> tuple[int, bytes]:
        raise RuntimeError("boom")

    srv = HealthServer("127.0.0.1", 0, m, lambda: True, lambda: True, {**board.pages(), "/broken": broken}).start()
    try:
        code, headers, body = _get(srv.port, "/?refresh=0")
        assert code == 200 and headers["Content-Type"].startswith("text/html")
        assert "script-src" not in headers["Content-Security-Policy"]  # nothing may run: default-src 'none'
        assert headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body and "<script>" not in body
        assert "&lt;b&gt;bold&lt;/b&gt;" in body and 'http-equiv="refresh"' not in body
        assert 'http-equiv="refresh" content="5"' in _get(srv.port, "/")[2]
        assert 'content="3600"' in _get(srv.port, "/?refresh=99999")[2]
        code, _, body = _get(srv.port, "/report")
        assert code == 503 and "No report yet" in body
        assert _get(srv.port, "/broken")[0] == 500
        code, _, text = _get(srv.port, "/metrics")
        assert code == 200 and "curator_items_out_total" in text
        assert _get(srv.port, "/nope")[0] == 404
    finally:
        srv.close()
