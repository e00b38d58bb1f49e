"""The report in a real browser: records from real local runs, `fab report`, then report.html opened in
headless Chromium (tests/report/chromium.py): every figure decodes (naturalWidth > 0), the tables have
their rows, and a screenshot lands next to the report.  Needs Debian's chromium (`make browser-deps`,
root); `make test` installs it and runs this, so it fails rather than skips when chromium is missing."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.report import chromium
from workloads import data, kmeans, pagerank

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(600)

# What the page shows, read in the page itself after its load event.
PAGE_CHECK = """({
  images: [...document.images].map(i => ({src: i.getAttribute('src'), complete: i.complete,
                                            width: i.naturalWidth, height: i.naturalHeight})),
  tables: Object.fromEntries([...document.querySelectorAll('table')].map((t, n) =>
            [t.id || 'table' + n, t.querySelectorAll('tr').length])),
  text: document.body.innerText,
})"""


def broken_images(page: dict) -> list[str]:
    return [i["src"] for i in page["images"] if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]


def _run(module, out: Path, *args: str) -> int:
    return module.main([*args, "--output", str(out)])


@pytest.fixture(scope="module")
def built_report(tmp_path_factory) -> Path:
    """Real records (PageRank and k-means; the single-process reference, and torch ranks with
    verification; two graph sizes; one failed run), then `fab report` on them."""
    tmp = tmp_path_factory.mktemp("browser")
    small = data.synthetic(tmp / "small.csv", nodes=400, edges=3000, seed=1)
    large = data.synthetic(tmp / "large.csv", nodes=1500, edges=12000, seed=2)
    res = tmp / "results"
    ref = ["--framework", "reference", "--workers", "1"]
    runs = [(pagerank, "pagerank/ref-small.json", [*ref, "--input", str(small)]),
            (pagerank, "pagerank/ref-large.json", [*ref, "--input", str(large), "--tol", "0", "--max-iter", "20"]),
            (pagerank, "pagerank/torch-small.json", ["--framework", "torch", "--workers", "2", "--input", str(small),
                                                     "--verify"]),
            (kmeans, "kmeans/ref-small.json", [*ref, "--input", str(small)])]
    for module, rel, args in runs:
        (res / rel).parent.mkdir(parents=True, exist_ok=True)
        assert _run(module, res / rel, *args) == 0, rel
    # a run that fails (more clusters than points): a failed record the report must list as failed
    assert _run(kmeans, res / "kmeans/failed.json", "--framework", "reference", "--workers", "1",
                "--input", str(small), "--k", "100000") == 2
    out = tmp / "reports" / "browser"
    proc = subprocess.run([str(REPO / ".venv/bin/fab"), "report", "--results", str(res), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        b = chromium.Browser(tmp_path_factory.mktemp("chromium-profile"))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield b
    b.close()


def test_report_renders_in_chromium(built_report: Path, browser) -> None:
    shot = built_report / "screenshot.png"
    page = browser.evaluate((built_report / "report.html").as_uri(), PAGE_CHECK, screenshot=shot)
    figures = sorted(p.name for p in (built_report / "figures").glob("*.png"))
    # every figure is on the page and decodes
    assert len(figures) >= 3, figures
    assert sorted(Path(i["src"]).name for i in page["images"]) == figures
    assert broken_images(page) == [], page["images"]
    assert all(i["width"] > 300 for i in page["images"]), page["images"]
    # the tables render with their rows: a header plus one row per group / provenance line / failed run
    md = (built_report / "report.md").read_text()
    groups = [ln for ln in md.split("## Summary", 1)[1].split("##", 1)[0].splitlines() if ln.startswith("| ")][1:]
    assert page["tables"]["summary"] == 1 + len(groups) and len(groups) >= 4, (page["tables"], groups)
    assert page["tables"]["provenance"] >= 2, page["tables"]
    assert "Failed runs" in page["text"] and "k-means with --k 100000" in page["text"]
    assert "converged" in page["text"] and "verification error" in page["text"]
    # the fixed-iteration run's group says it did not converge, and only that group
    stopped = [g for g in groups if "no (max-iter)" in g]
    assert len(stopped) == 1 and "no (max-iter)" in page["text"], groups
    # the screenshot is a real full-page PNG
    from PIL import Image
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size[0] >= 1000 and im.size[1] >= 1000, im.size


def test_a_missing_figure_shows_as_broken(built_report: Path, browser, tmp_path: Path) -> None:
    """The image check can fail: the same page with one figure file gone reports that figure."""
    import shutil
    copy = tmp_path / "report"
    shutil.copytree(built_report, copy)
    gone = sorted((copy / "figures").glob("*.png"))[0]
    gone.unlink()
    page = browser.evaluate((copy / "report.html").as_uri(), PAGE_CHECK)
    assert broken_images(page) == [f"figures/{gone.name}"], page["images"]
