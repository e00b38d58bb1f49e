"""The report is generated from recorded results and contains each figure."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from scalelab import report, results
from scalelab.errors import UserError
from workloads.record import fail_record, finish_record, new_record, write_record


def _rec(wl, fw, nodes, ds, size, total, **metrics):
    r = new_record(wl, fw, workers=nodes, nodes=nodes,
                   dataset={"name": ds, "uri": f"file:///data/{ds}.csv", "bytes": size, "records": 10})
    r["timings_s"] = {"total": total, "load": total / 3}
    r["metrics"] = metrics
    if wl == "pagerank":
        r["verification"] = {"reference": "scipy", "error": 1e-9, "passed": True}
    r["resources"] = {"hosts": {"master": {"cpu_mean": 80.0, "cpu_peak": 190.0, "mem_mean": 900, "mem_peak": 1500}}}
    return finish_record(r)


@pytest.fixture
def resdir(tmp_path: Path) -> Path:
    d = tmp_path / "results"
    n = 0
    for wl in ("pagerank", "kmeans"):
        for fw in ("ray", "torch"):
            for nodes in (1, 2, 3):
                for ds, size in (("data_1", 1_060_000_000), ("test_data", 10_000_000)):
                    # PageRank benchmark-style: 20 fixed iterations, not converged
                    extra = ({"ch_score": 1.5e7, "converged": True} if wl == "kmeans"
                             else {"iterations": 20, "converged": False})
                    n += 1
                    write_record(_rec(wl, fw, nodes, ds, size, 100.0 / nodes + (fw == "torch") * 5, **extra),
                                 d / wl / f"r{n}.json")
    bad = new_record("pagerank", "torch", workers=4, nodes=4)
    write_record(fail_record(bad, "UserError: --nodes 4 but the cluster has 3 hosts"), d / "pagerank" / "fail.json")
    (d / "pagerank" / "garbage.json").write_text("{not json")
    return d


def test_report_has_tables_figures_and_seed_numbers(resdir: Path, tmp_path: Path) -> None:
    out = report.build(resdir, tmp_path / "rep")
    md = out["markdown"].read_text()
    page = out["html"].read_text()
    figs = sorted(p.name for p in out["figures"].glob("*.png"))
    assert "time_vs_nodes_pagerank_data_1.png" in figs
    assert "time_vs_size_kmeans_2nodes.png" in figs
    assert "quality_kmeans.png" in figs and "quality_pagerank.png" in figs
    assert "resources.png" in figs
    for f in figs:  # each figure is a real image, referenced by both pages
        with Image.open(out["figures"] / f) as im:
            assert im.size[0] > 300 and im.size[1] > 200
        assert f"figures/{f}" in md and f"figures/{f}" in page
    # the seed's measured number sits beside ours for the same cell: PageRank, data_1, Ray, 1 node = 442.8 s
    row = next(line for line in md.splitlines() if line.startswith("| - | pagerank | data_1 | ray | 1 |"))
    assert "442.8" in row and "| pass |" in row and "| no (max-iter) |" in row
    km = next(line for line in md.splitlines() if line.startswith("| - | kmeans | data_1 | torch | 2 |"))
    assert "| yes |" in km and ">no (max-iter)</td>" in page
    assert "measured by the seed paper" in md
    # a failed run is listed as failed, never counted as ok; unreadable files are reported
    assert "--nodes 4 but the cluster has 3 hosts" in md
    assert "| - | pagerank | - | torch | 4 | 0/1 |" in md
    assert "garbage.json" in md and "garbage.json" in page


def test_report_without_records_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="run `fab run-experiment"):
        report.build(tmp_path / "empty", tmp_path / "rep")


def test_validate_rejects_ok_with_error() -> None:
    r = finish_record(new_record("pagerank", "ray", workers=1))
    r["error"] = "boom"
    with pytest.raises(results.BadRecord):
        results.validate(r)


def test_seed_rows_parse() -> None:
    rows = results.load_seed()
    assert len(rows) == 48
    pr = [r for r in rows if (r.workload, r.framework, r.dataset, r.nodes) == ("pagerank", "torch", "data_1", 1)]
    assert pr and abs(pr[0].time_s - 1763.1) < 0.1
    assert json.dumps(report.seed_cells()[("kmeans", "data_2", "ray", 3)])


def test_runs_on_different_clusters_are_never_averaged() -> None:
    """A lab run and a real-cluster run of the same cell are two rows, not one mean."""
    def rec(cluster: str, total: float) -> dict:
        r = new_record("pagerank", "ray", workers=2, nodes=2, dataset={"name": "tiny"})
        r["timings_s"] = {"total": total}
        r["provenance"] = {"inventory": {"name": cluster, "hash": "x"}}
        return finish_record(r)
    rows = results.summarise([rec("lab", 1.0), rec("okeanos", 9.0), rec("okeanos", 11.0)])
    assert [(r["cluster"], r["runs"], r["time_mean_s"]) for r in rows] == [("lab", 1, 1.0), ("okeanos", 2, 10.0)]
