"""`make bench` compares each runtime's median run, not whichever single run the machine's phase favoured."""
from __future__ import annotations

from bench import graph_bench


def run(total: float, run_id: str) -> dict:
    return {"run_id": run_id, "timings_s": {"startup": 1.0, "load": 1.0, "build": 1.0, "compute": total - 3.0,
                                            "total": total}, "wall_s": total + 0.5, "metrics": {}}


def test_the_median_run_is_the_middle_total_not_the_first_or_the_fastest() -> None:
    runs = [run(14.4, "a"), run(10.4, "b"), run(11.3, "c")]
    assert graph_bench.median_run(runs)["run_id"] == "c"
    assert graph_bench.spread(runs) == "14.40 10.40 11.30 (median 11.30)"


def test_an_even_count_takes_the_lower_middle_run_and_one_run_is_its_own_median() -> None:
    assert graph_bench.median_run([run(9.0, "a"), run(8.0, "b"), run(12.0, "c"), run(11.0, "d")])["run_id"] == "a"
    assert graph_bench.median_run([run(9.0, "only")])["run_id"] == "only"


def test_the_ratios_compare_the_runtimes_medians() -> None:
    ray = graph_bench.median_run([run(14.4, "r1"), run(10.4, "r2"), run(11.3, "r3")])
    torch = graph_bench.median_run([run(8.0, "t1"), run(9.2, "t2"), run(8.9, "t3")])
    recs = {"ray": ray, "torch": torch, "reference": run(11.2, "ref")}
    assert round(graph_bench.ratios(recs, 20, None)["ray/torch total"], 4) == round(11.3 / 8.9, 4)
    lines = graph_bench.against_baseline("kmeans", recs, {"timings_s": {"compute": 20.6}, "wall_s": 34.7}, "data_1")
    assert lines[-1] == "  slower/faster runtime: 1.27x  [target <= 1.15x: NOT met]"
    # each target has its own verdict (11.3 s against 34.7 s and 24.0 s: 0.33x and 0.47x)
    assert lines[1] == "  ray: total 11.30 s = 0.33x scikit-learn KMeans  [target <= 15 s: met; <= 0.5x: met]", lines
    lines = graph_bench.against_baseline("pagerank", recs, {"timings_s": {"compute": 20.6}, "wall_s": 24.0}, "data_1")
    assert lines[1].endswith("[target <= 20 s: met; <= 0.4x: NOT met]"), lines
    lines = graph_bench.against_baseline("pagerank", recs, {"timings_s": {"compute": 20.6}, "wall_s": 24.0}, "data_2")
    assert lines[1].endswith("[target <= 20 s: set for data_1; <= 0.4x: set for data_1]"), lines


def test_the_table_sets_the_runtimes_steps_side_by_side_per_iteration_each_made() -> None:
    """One row per step, a column per runtime; compute per iteration divides by the iterations each run
    made (a k-means run stops early once no label changes), so the ratios to the reference compare
    like with like."""
    ray, torch, ref = run(11.3, "r"), run(8.9, "t"), run(13.0, "ref")
    ray["metrics"] = {"iterations": 20, "spmv_s_per_iter": 0.30}
    torch["metrics"] = {"iterations": 10, "spmv_s_per_iter": 0.25}  # compute 5.9 s over 10 iterations
    ref["metrics"] = {"spmv_s_per_iter": 0.50}                       # no count in the record: the 20 asked for
    recs = {"ray": ray, "torch": torch, "reference": ref}
    lines = graph_bench.table("kmeans (global, k=16)", recs, 20, "spmv_s_per_iter")
    assert lines[0] == "kmeans (global, k=16)" and lines[1].split() == ["step", "(s)", "ray", "torch", "reference"]
    rows = {ln[:28].strip(): ln[28:].split() for ln in lines[2:]}
    assert rows["total"] == ["11.30", "8.90", "13.00"] and rows["load+build+compute"] == ["10.30", "7.90", "12.00"]
    assert rows["process wall"] == ["11.80", "9.40", "13.50"]
    assert rows["compute / iter"] == ["0.415", "0.590", "0.500"]
    assert rows["SpMV / iter (slowest worker)"] == ["0.300", "0.250", "0.500"]
    r = graph_bench.ratios(recs, 20, "spmv_s_per_iter")
    assert round(r["torch compute-per-iter / reference"], 4) == round(0.59 / 0.5, 4)
    assert round(r["ray SpMV-per-iter / reference"], 4) == 0.6


def test_the_figure_stacks_each_bar_up_to_its_total_and_writes_a_png(tmp_path) -> None:
    """Each runtime's bar is its median run's steps topped up to its ``total`` by ``other``; the pipeline's
    bar its own steps up to its process wall; nothing negative where the steps cover more than the total."""
    import matplotlib.image

    ray, torch = run(11.3, "r"), run(8.9, "t")
    torch["timings_s"]["startup"] = None            # a step a record may lack counts as 0
    torch["timings_s"]["compute"] = 9.5             # steps above the total (rounding): no negative "other"
    base = {"timings_s": {"load": 9.5, "init": 2.9, "compute": 16.0}, "wall_s": 29.8}
    bars = graph_bench.stacks({"ray": ray, "torch": torch}, base, "scikit-learn KMeans")
    assert list(bars) == ["ray", "torch", "scikit-learn KMeans"]
    assert list(bars["ray"]) == ["startup", "load", "build", "compute", "other"]
    assert abs(sum(bars["ray"].values()) - 11.3) < 1e-9 and bars["ray"]["other"] < 1e-9
    assert bars["torch"]["startup"] == 0.0 and bars["torch"]["other"] == 0.0
    assert list(bars["scikit-learn KMeans"]) == ["load", "init", "compute", "other"]
    assert abs(sum(bars["scikit-learn KMeans"].values()) - 29.8) < 1e-9
    path = graph_bench.figure("kmeans on data_1", bars, 15.0, tmp_path / "kmeans.png")
    assert path == tmp_path / "kmeans.png"
    height, width, _ = matplotlib.image.imread(path).shape
    assert (width, height) == (715, 440)   # 6.5 x 4 in at 110 dpi
    assert graph_bench.figure("kmeans on tiny", bars, None, tmp_path / "tiny.png").is_file()   # no target line
