"""The report is generated from recorded results and contains each figure."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from scalelab import compare, export, report, results
from scalelab.errors import UserError
from workloads.record import fail_record, finish_record, new_record, write_record

SEED_PR = {"method": "seed", "damping": 0.95, "block_mb": 10}
GLOBAL_KM = {"method": "global", "k": 16, "seed": 42, "block_mb": 20}


def _rec(wl, fw, nodes, ds, size, total, params=None, **metrics):
    r = new_record(wl, fw, workers=nodes, nodes=nodes, params=params,
                   dataset={"name": ds, "uri": f"file:///data/{ds}.csv", "bytes": size, "records": 10})
    r["provenance"] = {"git": {"commit": "0123456789abcdef", "dirty": nodes == 3},
                       "inventory": {"name": "lab", "hash": "x"},
                       "nodes": {"master": {"cpu_model": "Test CPU 9000"}}}
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
                    extra = ({"ch_score": 1.5e7, "converged": True, "iterations": 7} if wl == "kmeans"
                             else {"iterations": 20, "converged": False, "l1_change": 2e-6, "error_bound": 1.1e-5})
                    n += 1
                    params = SEED_PR if wl == "pagerank" else GLOBAL_KM
                    write_record(_rec(wl, fw, nodes, ds, size, 100.0 / nodes + (fw == "torch") * 5, params, **extra),
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
    assert "time_vs_nodes_pagerank_data_1_lab.png" in figs  # two clusters: the lab and "-"
    assert "time_vs_size_kmeans_2nodes.png" in figs
    assert "quality_kmeans.png" in figs and "quality_pagerank.png" in figs
    assert "resources.png" in figs
    for f in figs:  # each figure is a real image, referenced by both pages
        with Image.open(out["figures"] / f) as im:
            assert im.size[0] > 300 and im.size[1] > 200
        assert f"figures/{f}" in md and f"figures/{f}" in page
    # the seed's measured number sits beside ours where the work is the same (its per-batch PageRank,
    # damping 0.95, 10 MiB batches): PageRank, data_1, Ray, 1 node = 442.8 s
    row = next(line for line in md.splitlines() if line.startswith("| lab | pagerank | data_1 | ray | 1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[7] == "442.8" and cells[8] == "20" and cells[9] == "no (max-iter)", row
    assert cells[10] == "2e-06" and cells[11] == "1.1e-05" and cells[13] == "1e-09" and cells[14] == "pass", row
    # elsewhere the seed's number is labelled not comparable, with the reason
    km = next(line for line in md.splitlines() if line.startswith("| lab | kmeans | data_1 | ray | 2 |"))
    assert "35.6 not comparable [" in km and "| yes |" in km, km
    assert "different work: method global (seed blockwise)" in md
    torch_km = next(line for line in md.splitlines() if line.startswith("| lab | kmeans | data_1 | torch | 2 |"))
    assert "355.9 not comparable [" in torch_km
    assert "random 1 Mi-row sample per rank" in md and "random 1 Mi-row sample per rank" in page
    assert ">no (max-iter)</td>" in page
    # provenance per group: the commit, clean or dirty, the cluster and the CPU model
    assert "| P1 | 0123456789ab | clean | lab | Test CPU 9000 |" in md
    assert "| P2 | 0123456789ab | dirty | lab | Test CPU 9000 |" in md
    assert row.endswith("| P1 |")
    assert "measured by the seed paper" in md
    # a failed run is listed as failed, never counted as ok; unreadable files are reported
    assert "--nodes 4 but the cluster has 3 hosts" in md
    assert "| - | pagerank | - | torch | 4 | 0/1 |" in md  # no provenance: a cluster of its own
    assert "garbage.json" in md and "garbage.json" in page


def test_report_without_records_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no result records under .*empty: run `fab run-experiment"):
        report.build(tmp_path / "empty", tmp_path / "rep")


@pytest.mark.parametrize("command", ["report", "export", "compare"])
def test_a_results_directory_that_does_not_exist_is_said_as_such(tmp_path: Path, command: str) -> None:
    """It was "no result records under DIR", as if DIR held none."""
    missing = tmp_path / "nope"
    calls = {"report": lambda: report.build(missing, tmp_path / "rep"),
             "export": lambda: export.export("csv", tmp_path / "r.csv", missing),
             "compare": lambda: compare.run("ray", "torch", results_dir=missing)}
    with pytest.raises(UserError, match=f"^{missing} does not exist: give --results a directory of runs"):
        calls[command]()
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_two_record_files_are_compared_without_a_results_directory(tmp_path: Path) -> None:
    """A clean clone has no results/: comparing two record files must not need one."""
    recs = Path(__file__).parent / "records"
    c = compare.run(str(recs / "pagerank-torch.json"), str(recs / "pagerank-ray.json"),
                    results_dir=tmp_path / "nope")
    assert c.a.records and c.b.records


def test_a_report_that_fails_leaves_the_last_one_as_it_was(resdir: Path, tmp_path: Path, monkeypatch) -> None:
    """It is made beside the last one and moved in only once whole: the old figures were deleted first,
    and a report that then failed left pages pointing at images that were gone."""
    out = report.build(resdir, tmp_path / "rep")
    before = {p.name: p.read_bytes() for p in [out["markdown"], out["html"], *out["figures"].glob("*.png")]}

    def broken(*_a: object) -> list[dict]:
        raise RuntimeError("a figure failed")
    monkeypatch.setattr(report, "fig_quality", broken)
    with pytest.raises(RuntimeError, match="a figure failed"):
        report.build(resdir, tmp_path / "rep")
    after = {p.name: p.read_bytes() for p in [out["markdown"], out["html"], *out["figures"].glob("*.png")]}
    assert after == before
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["figures", "report.html", "report.md"]


def test_report_out_that_cannot_be_a_directory_is_one_line(resdir: Path, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match=r"cannot write the report to .*afile: File exists; give --out a directory"):
        report.build(resdir, tmp_path / "afile")


def test_only_unreadable_records_say_why(tmp_path: Path) -> None:
    (tmp_path / "results" / "kmeans").mkdir(parents=True)
    (tmp_path / "results" / "kmeans" / "cut.json").write_text('{"schema": 2, "run_')
    with pytest.raises(UserError, match=r"no readable result records under .*: .*cut\.json"):
        report.build(tmp_path / "results", tmp_path / "rep")


def test_figures_are_plain_file_names_per_cluster_and_of_bounded_size(tmp_path: Path) -> None:
    """Dataset names with '/', ' ' or '#' (they broke the path or the pages' links); time against
    size per cluster (it averaged clusters together); one resources bar per configuration and
    host (one per run: 180,000 px high for 2,000 runs)."""
    d = tmp_path / "results"
    n = 0
    for cluster, scale in (("lab", 1.0), ("okeanos", 100.0)):
        for ds, size in (("sub/dir", 10**6), ("my data#1", 10**7)):
            for _ in range(60):
                n += 1
                r = _rec("kmeans", "ray", 2, ds, size, scale * size / 10**6, GLOBAL_KM, ch_score=1.0)
                r["provenance"]["inventory"]["name"] = cluster
                write_record(r, d / "kmeans" / f"r{n}.json")
    out = report.build(d, tmp_path / "rep")
    figs = sorted(p.name for p in out["figures"].glob("*.png"))
    assert "time_vs_nodes_kmeans_sub_dir_lab.png" in figs and "time_vs_nodes_kmeans_my_data_1_okeanos.png" in figs
    assert {"time_vs_size_kmeans_2nodes_lab.png", "time_vs_size_kmeans_2nodes_okeanos.png"} <= set(figs)
    md = out["markdown"].read_text()
    for f in figs:
        assert f"figures/{f})" in md
    with Image.open(out["figures"] / "resources.png") as im:
        assert im.size[1] < 600, im.size  # 2 bars (a configuration on each cluster), not 240


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


@pytest.mark.parametrize(("wl", "fw", "ds", "params", "why"), [
    ("pagerank", "ray", "data_1", SEED_PR, None),
    ("pagerank", "ray", "data_1", {"method": "power", "damping": 0.85}, "method power (seed seed), damping 0.85"),
    ("pagerank", "ray", "tiny", SEED_PR, "the seed did not run pagerank on tiny"),
    ("pagerank", "torch", "data_1", SEED_PR, "float32 node ids"),
    ("kmeans", "ray", "data_2", {"method": "blockwise", "k": 16, "seed": 42, "block_mb": 20}, None),
    ("pneumonia", "ray", "chest_xray", {"epochs": 10, "lr": 3e-4, "per_worker_batch": [32, 32]}, "lr 0.0003 (seed 0.01)"),
    ("pneumonia", "torch", "chest_xray", {"epochs": 10, "lr": 0.01, "per_worker_batch": [64, 64]}, None),
    ("xgboost", "ray", "higgs", {}, "the seed has no ray xgboost numbers"),
])
def test_seed_comparison_names_what_differs(wl, fw, ds, params, why) -> None:
    rec = finish_record(new_record(wl, fw, workers=2, nodes=2, params=params, dataset={"name": ds}))
    got = report.seed_comparison(rec)
    assert got is None if why is None else (got is not None and why in got), got
