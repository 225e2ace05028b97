"""The pages people look at, in a real headless Chromium (Debian's, installed when missing):

- the report of the digits demo (with a real `curator train` run on it): no console error or
  failed load, every plot and gallery present and drawn, screenshot;
- the report of a run whose ids, captions, metadata, source file name and image bytes are
  hostile: nothing runs (also with the page's CSP stripped), the page still renders;
- the live status page of a real `curator serve` on Ray and the Kafka-protocol broker, fed
  hostile messages too: its numbers are /metrics' numbers, its recent rejections are escaped,
  and its report link serves the current report.

Screenshots and the rendered pages go to test-output/ (CURATOR_TEST_OUTPUT overrides).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curator.config import load_config
from curator.report.build import write_report
from curator.store import read_manifest, read_table
from tests.browser import OUTPUT, Page, browser, png_ink
from tests.conftest import KafkaTestBroker
from tests.test_service import (  # noqa: F401 - fixtures
    REPO,
    ServiceProcess,
    digits_inputs,
    ingest_files,
    produce_digits,
    ray_cluster,
    run_config,
    serve_config,
    service_env,
    write_config,
)

pytestmark = [pytest.mark.ray]

#: Strings that would run if a page put them into HTML unescaped; each sets window.__pwned.
XSS = (
    "<script>window.__pwned = 'script'</script>",
    "<img src=x onerror=\"window.__pwned='img'\">",
    "javascript:window.__pwned='link'",
    "\"><svg onload=\"window.__pwned='svg'\"><a href=\"javascript:window.__pwned='a'\">click</a>",
    "</pre></details><iframe src=\"javascript:window.__pwned='iframe'\"></iframe>",
)
#: Image bytes that are not (safe) images.
BAD_IMAGES = (
    b"<script>window.__pwned='bytes'</script>",
    b"<svg xmlns='http://www.w3.org/2000/svg' onload=\"window.__pwned='svgbytes'\"><rect/></svg>",
    b"GIF89a\x00\x00\x00",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x08",  # truncated
)

PLOTS = ("counts", "stream", "growth", "sources")
SAFETY_JS = """
const bad = [];
if (window.__pwned !== undefined) bad.push('ran: ' + window.__pwned);
if (document.scripts.length) bad.push(document.scripts.length + ' script elements');
for (const el of document.querySelectorAll('*')) {
  for (const a of el.attributes) {
    if (a.name.startsWith('on')) bad.push('event attribute ' + a.name + ' on ' + el.tagName);
    if (['href', 'src', 'action', 'formaction', 'xlink:href'].includes(a.name)
        && /^\\s*javascript:/i.test(a.value)) bad.push('javascript: URL in ' + el.tagName);
  }
}
for (const t of ['iframe', 'object', 'embed', 'svg', 'form', 'base']) {
  if (document.getElementsByTagName(t).length) bad.push(t + ' element');
}
for (const i of document.images) {
  if (!/^data:image\\/(png|svg\\+xml);base64,/.test(i.getAttribute('src'))) bad.push('img src ' + i.src.slice(0, 40));
}
return bad;
"""


def assert_clean_load(page: Page, external_ok: tuple[str, ...] = ()) -> None:
    errors = page.errors()
    assert not errors, f"{len(errors)} console errors / failed loads on {page.url}, e.g. {errors[:3]}"
    fetched = [u for u in page.resources() if not u.startswith(external_ok)] if external_ok else page.resources()
    assert not fetched, f"{page.url} fetched resources: {fetched}"
    assert not page.broken_images(), f"images that did not decode: {page.broken_images()}"
    assert page.js(SAFETY_JS) == []


def assert_plots_drawn(page: Page, ids: tuple[str, ...]) -> None:
    for key in ids:
        assert page.count(f"#{key} img.plot") == 1, f"plot {key} missing"
        ink = png_ink(page.element_png(f"#{key} img.plot"))
        assert ink > 0.01, f"plot {key} is blank ({ink:.3%} of pixels drawn)"


# =====================================================================================
# The demo's report
# =====================================================================================


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, ray_cluster: str) -> Path:  # noqa: F811
    """`curator demo` (in-process loop), then a real 3-epoch `curator train` on the curated set."""
    from pipelines.demo import run_demo

    out = tmp_path_factory.mktemp("pages") / "demo"
    assert run_demo(out, 0, progress=False) == 0
    r = subprocess.run([sys.executable, "-m", "pipelines.cli", "train", str(out), "--task", "mlp", "--workers", "2",
                        "--epochs", "3", "--address", ray_cluster, "--name", "mlp-test"], cwd=REPO,
                       env=service_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (out / "train" / "mlp-test" / "train_summary.json").is_file()
    return out


@pytest.mark.timeout(900)  # a fresh machine installs Chromium first (apt) in here
def test_demo_report_in_chromium(demo_run: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pipelines.cli", "report", str(demo_run)], cwd=REPO, env=service_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip().splitlines()[-1])
    assert path == (demo_run / "report" / "index.html").resolve() and path.is_file()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, OUTPUT / "report-demo.html")
    dec = read_table(demo_run, "decisions").column("decision").to_pylist()
    with browser() as b:
        page = b.open(path.as_uri())
        page.screenshot(OUTPUT / "report-demo.png")
        assert_clean_load(page)
        assert_plots_drawn(page, (*PLOTS, "dist-label_agreement", "dist-gain", "dist-max_sim", "train-0"))
        assert page.count("#dist-align") == 0  # digits have no captions: no alignment scores to draw
        for g in ("kept", "relabelled", "dropped-duplicate", "dropped-noisy"):
            n = page.count(f"#gallery-{g} figure.card")
            assert n == min(24, dec.count(g)) and n > 0, (g, n)
            assert page.count(f"#gallery-{g} figure.card .thumb img") >= n, f"{g}: cards without thumbnails"
        # every duplicate is shown beside the item it duplicates, both as images
        assert page.count("#gallery-dropped-duplicate figure.card .item") == 2 * page.count(
            "#gallery-dropped-duplicate figure.card")
        assert "duplicates" in page.text("#gallery-dropped-duplicate")
        # the duplicate clusters: the kept item, then its copies, each an image
        groups = len({r["dup_of"] for r in read_table(demo_run, "decisions").to_pylist()
                      if r["decision"] == "dropped-duplicate"})
        clusters = page.count("#duplicate-clusters figure.cluster")
        assert clusters == min(12, groups) and clusters > 0
        assert page.count("#duplicate-clusters figure.cluster .item") == page.count(
            "#duplicate-clusters figure.cluster .thumb img") >= 2 * clusters
        relabelled = page.text("#gallery-relabelled")
        assert "\u2192" in relabelled  # "label 9 -> 2": both labels
        assert page.count("details.query") >= 10  # a query per table and plot
        assert "curator query" in page.js("return document.querySelector('details.query pre.cmd').textContent")
        training = page.text("#training")
        assert "mlp-test" in training and "achieved InfoBatch saving" in training
        th = page.text("#thresholds")
        eps = read_manifest(demo_run)["calibration"]["eps_dup"]  # the demo's eps_dup is calibrated
        assert f"{1 - eps['value']:.4f}" in th and "selector.eps_dup" in th
        assert eps["origin"].startswith("calibrated from") and eps["origin"] in th  # its status, as the manifest says


@pytest.mark.timeout(900)
def test_image_folder_report_in_chromium(tmp_path: Path) -> None:
    """An image folder curated without storing its images: the duplicate gallery and the duplicate
    clusters show every item as an image read from its file; screenshot of the clusters."""
    from tests.photos import ingest_photos, write_photo_folder

    write_photo_folder(tmp_path / "imgs", per_class=10, copies=3)
    path = write_report(ingest_photos(tmp_path / "imgs", tmp_path / "run", store_images=False))
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with browser() as b:
        page = b.open(path.as_uri())
        page.screenshot(OUTPUT / "report-images.png")
        (OUTPUT / "report-images-clusters.png").write_bytes(page.element_png("#duplicate-clusters"))
        assert_clean_load(page)
        assert_plots_drawn(page, PLOTS)
        cards = page.count("#gallery-dropped-duplicate figure.card")
        assert cards == 12 and page.count("#gallery-dropped-duplicate figure.card .thumb img") == 2 * cards
        assert page.count("#duplicate-clusters figure.cluster") == 9
        assert page.count("#duplicate-clusters .thumb img") == 9 + 12  # each kept item and its copies
        assert page.count(".placeholder") == 0
        assert page.count("#sources-section tbody tr") == 3  # an image per source: keep rates per class folder


# =====================================================================================
# Hostile data
# =====================================================================================


def _png(seed: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (12, 12), dtype=np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def hostile_records(dim: int = 16, n: int = 90, seed: int = 0) -> list[dict[str, Any]]:
    """Four clusters with labels; hostile ids, captions, metadata, URIs and image bytes; copies and
    flipped labels so every gallery has members; a few records that are rejected."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, dim))
    recs: list[dict[str, Any]] = []
    for i in range(n):
        c = i % 4
        x = centres[c] + 0.15 * rng.normal(size=dim)
        bad = XSS[i % len(XSS)]
        recs.append({
            "id": f"{bad} #{i}", "text": f"caption {i}: {XSS[(i + 1) % len(XSS)]}",
            "label": c if i % 9 else (c + 1) % 4, "embedding": x.astype(np.float32).tolist(),
            "image": _png(i) if i % 5 == 0 else BAD_IMAGES[i % len(BAD_IMAGES)],
            "image_uri": "javascript:window.__pwned='uri'" if i % 3 == 0 else None,
            "metadata": json.dumps({"homepage": XSS[2], "html": bad}),
        })
        if i % 7 == 3:  # an exact copy under another hostile id: dropped as a duplicate of the one above
            recs.append({**recs[-1], "id": f"copy {bad} #{i}", "image": BAD_IMAGES[0]})
    for j, bad in enumerate(XSS):  # rejected: wrong-sized / NaN embeddings, empty caption
        recs.append({"id": f"rejected {bad}", "text": bad, "embedding": [float("nan")] * dim, "label": 1,
                     "image": BAD_IMAGES[j % len(BAD_IMAGES)], "image_uri": None, "metadata": None})
        recs.append({"id": f"short {bad}", "text": "", "embedding": [1.0] * dim, "label": 1, "image": None,
                     "image_uri": None, "metadata": None})
    return recs


@pytest.mark.timeout(900)
def test_hostile_items_do_not_run_in_the_report(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    src = folder / "in<img src=x onerror=window.__pwned=1>.parquet"  # hostile source name too
    pq.write_table(pa.Table.from_pylist(hostile_records()), src)
    out = tmp_path / "run"
    cfg = load_config(None, {"embedder": {"kind": "precomputed", "model": "hostile", "pretrained": ""},
                             "selector": {"min_trusted": 5, "k_label": 5},
                             "store": {"out": str(out), "commit_every": 40},
                             "source": {"paths": [str(src)], "batch_size": 16}})
    ingest_files(cfg)
    dec = read_table(out, "decisions").column("decision").to_pylist()
    for d in ("kept", "dropped-duplicate", "rejected-bad-input"):
        assert d in dec, (d, set(dec))
    path = write_report(out, tmp_path / "report")
    html = path.read_text()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, OUTPUT / "report-hostile.html")
    stripped = tmp_path / "report" / "no-csp.html"  # the same page without its CSP: escaping alone must hold
    assert html.count('http-equiv="Content-Security-Policy"') == 1
    stripped.write_text(html.replace('http-equiv="Content-Security-Policy"', 'name="x-csp-removed"'))
    with browser() as b:
        page = b.open(path.as_uri())
        page.screenshot(OUTPUT / "report-hostile.png")
        assert_clean_load(page)
        assert_plots_drawn(page, PLOTS)
        text = page.text()
        assert XSS[0] in text and "onerror" in text  # shown as text, not run
        kept = page.text("#gallery-kept")
        assert "javascript:window.__pwned='uri'" in kept and '"homepage"' in kept  # URIs and metadata: text
        assert page.count("#gallery-kept figure.card") > 0 and page.count("#gallery-rejected-bad-input figure.card")
        assert "not a decodable image" in page.text("#gallery-kept")  # bytes that are no image: a placeholder
        assert page.count("#gallery-kept .thumb img") > 0  # the real PNGs still get thumbnails
        dup = page.text("#gallery-dropped-duplicate")
        assert "copy <script>" in dup or "copy <img" in dup
        page2 = b.open(stripped.as_uri())
        assert page2.js(SAFETY_JS) == [] and not page2.errors()
        assert XSS[1] in page2.text()


# =====================================================================================
# The live status page
# =====================================================================================


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.mark.kafka
@pytest.mark.timeout(900)
def test_status_page_of_a_running_service(ray_cluster: str, kafka_broker: KafkaTestBroker,  # noqa: F811
                                          tmp_path: Path) -> None:
    from connectors.kafka.clients import kafka_producer

    digits = digits_inputs(tmp_path / "d")
    records = digits.records[:300]
    topic = kafka_broker.new_topic(3, "status")
    produce_digits(kafka_broker, topic, records)
    vec = records[0]["embedding"]
    hostile = [json.dumps({"id": XSS[0], "text": XSS[1], "embedding": vec,  # a duplicate of records[0]
                           "label": records[0]["label"]}).encode(),
               json.dumps({"id": XSS[1], "text": "no vector", "label": 2}).encode(),  # rejected: no embedding
               b"<script>window.__pwned='raw'</script>",  # rejected: not JSON
               json.dumps({"id": XSS[3], "embedding": [1.0] * 5}).encode()]  # rejected: wrong size
    prod = kafka_producer(kafka_broker.bootstrap, kafka_broker.api_version, kafka_broker.client)
    try:
        for i, m in enumerate(hostile):
            prod.send(topic, value=m, partition=i % 3)
        prod.flush()
    finally:
        prod.close()
    total = len(records) + len(hostile)
    out = tmp_path / "svc"
    scfg = serve_config(run_config(out, digits), kafka_broker, topic, ray_cluster,
                        kafka={"end_after_idle_s": 0.0, "dead_letter_topic": ""})
    sp = ServiceProcess(write_config(scfg, tmp_path / "svc.toml"), tmp_path / "svc.log")
    try:
        port = sp.port()
        deadline = time.monotonic() + 180

        def settled() -> bool:
            """Every message committed, and the service's own counts (which it takes from the results
            after the actor wrote the manifest) and lag gauges caught up with them."""
            if sum((read_manifest(out) or {}).get("positions", {}).get(topic, {"": 0}).values()) < total:
                return False
            got = _metrics(port)
            return (sum(v for k, v in got.items() if k[0] == "curator_items_out_total") == total + 100
                    and sum(k[0] == "curator_kafka_lag" for k in got) == 3)

        while not settled():
            assert time.monotonic() < deadline and sp.proc.poll() is None, sp.log()[-3000:]
            time.sleep(0.2)
        m = read_manifest(out)
        assert m is not None
        with browser() as b:
            page = b.open(f"http://127.0.0.1:{port}/?refresh=0")
            page.screenshot(OUTPUT / "status-page.png")
            assert_clean_load(page)
            metrics = _metrics(port)
            for sel in ("#throughput", "#lag", "#queues", "#commit", "#rejections"):
                assert page.count(sel) == 1, sel
            rows = page.js("return [...document.querySelectorAll('#throughput tbody tr')].map("
                           "r => [...r.cells].map(c => c.innerText))")
            page_totals = {r[0]: float(r[1]) for r in rows}
            metric_totals = {dict(k[1])["decision"]: v for k, v in metrics.items() if k[0] == "curator_items_out_total"}
            assert page_totals == metric_totals and sum(page_totals.values()) == total + 100  # + the bootstrap
            lag = page.js("return [...document.querySelectorAll('#lag tbody tr')].map(r => r.cells[0].innerText)")
            assert sorted(lag) == ["0", "1", "2"]
            assert float(page.text("#index-size")) == metrics[("curator_index_size", ())]
            assert int(page.text("#commit-no")) >= 1
            rej = page.text("#rejections")
            assert XSS[1] in rej and XSS[3][:20] in rej  # hostile ids, shown as text
            assert page.count("#rejections tbody tr") >= 3
            page.driver.find_element("css selector", "#report-link").click()
            report = Page(page.driver, page.driver.current_url)
            assert report.url.endswith("/report")
            report.screenshot(OUTPUT / "status-report.png")
            assert_clean_load(report)
            assert_plots_drawn(report, PLOTS)
            assert report.count("#gallery-kept figure.card") > 0
            assert XSS[0] in report.text("#gallery-dropped-duplicate")  # the hostile duplicate, escaped
    finally:
        sp.signal(signal.SIGTERM)
        assert sp.wait(90) == 0, sp.log()[-3000:]
