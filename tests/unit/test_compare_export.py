"""`fab compare` and `fab export` on real records (tests/unit/records, written by the workloads)."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from scalelab import compare, export
from scalelab import results as _results
from scalelab.errors import UserError
from tests.unit.test_records import RECORDS, all_real, real, real_of, runner_record

REPO = Path(__file__).resolve().parents[2]
FAB = str(REPO / ".venv" / "bin" / "fab")


def results_dir(tmp_path: Path, records: list[dict]) -> Path:
    d = tmp_path / "results"
    for r in records:
        (d / r["workload"]).mkdir(parents=True, exist_ok=True)
        (d / r["workload"] / f"{r['run_id']}.json").write_text(json.dumps(r))
    return d


def fab(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([FAB, "-r", str(REPO), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def row(rows: list[dict], key: str) -> dict:
    return next(r for r in rows if r[""] == key)


# ------------------------------------------------------------------------------------------ compare
def test_two_comparable_runs_ratios_match_the_records() -> None:
    a, b = real("pagerank-torch"), real("pagerank-ray")
    c = compare.run(str(RECORDS / "pagerank-torch.json"), str(RECORDS / "pagerank-ray.json"))
    for step in ("startup", "load", "build", "compute", "total"):
        r = row(c.times, step)
        assert r["A"] == f"{a['timings_s'][step]:.3f}" and r["B"] == f"{b['timings_s'][step]:.3f}"
        assert r["B/A"] == f"{b['timings_s'][step] / a['timings_s'][step]:.3f}"
    assert row(c.metrics, "iterations")["B/A"] == "1.000"
    assert row(c.verification, "passed") == {"": "passed", "A": "yes", "B": "yes", "B/A": "-"}
    assert not [n for n in c.notes if n.startswith("not comparable")], c.notes
    assert c.notes == ["note: framework differs: torch (A) vs ray (B)"]


def test_runs_with_different_parameters_are_flagged_not_comparable() -> None:
    c = compare.run(str(RECORDS / "pagerank-torch.json"), str(RECORDS / "pagerank-torch-maxiter5.json"))
    assert "not comparable: parameters differ: max_iter 240 vs 5" in c.notes, c.notes
    assert "not comparable: iterations differs: 60 (A) vs 5 (B)" in c.notes
    assert "not comparable: converged differs: yes (A) vs no (B)" in c.notes
    assert row(c.times, "total")["B/A"] != "-"          # a note, not a refusal


def test_fab_compare_prints_the_tables_ratios_and_notes() -> None:
    a, b = real("pagerank-torch"), real("pagerank-torch-maxiter5")
    proc = fab("compare", str(RECORDS / "pagerank-torch.json"), str(RECORDS / "pagerank-torch-maxiter5.json"))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"A: {a['run_id']}" in out and f"B: {b['run_id']}" in out
    for title in ("time per step (s)", "metrics", "verification"):
        assert title in out
    total = next(line for line in out.splitlines() if "│ total" in line)
    assert f"{b['timings_s']['total'] / a['timings_s']['total']:.3f}" in total
    assert "not comparable: parameters differ: max_iter 240 vs 5" in out


def test_two_framework_sets_are_means_of_their_runs(tmp_path: Path) -> None:
    t1, t2, r1 = real("pagerank-torch"), real("pagerank-torch"), real("pagerank-ray")
    t2["run_id"] += "-again"
    t2["timings_s"]["total"] = t1["timings_s"]["total"] * 3
    failed = real("pagerank-failed")                       # a failed torch run is left out, and said so
    res = results_dir(tmp_path, [t1, t2, r1, failed, real("kmeans-global-torch")])
    c = compare.run("torch", "ray", results_dir=res, workload="pagerank")
    assert c.a.describe() == "framework torch: 2 ok run(s), 1 failed left out"
    mean = (t1["timings_s"]["total"] + t2["timings_s"]["total"]) / 2
    assert row(c.times, "total")["A"] == f"{mean:.3f}"
    assert row(c.times, "total")["B/A"] == f"{r1['timings_s']['total'] / mean:.3f}"
    with pytest.raises(UserError, match="A: framework torch holds runs of several workloads \\(kmeans, pagerank\\): "
                                        "choose one with --workload"):
        compare.run("torch", "ray", results_dir=res)


def test_two_clusters_and_two_commits(tmp_path: Path) -> None:
    lab, real_cluster = runner_record("pagerank-torch", tmp_path, "lab"), runner_record("pagerank-torch", tmp_path, "okeanos")
    real_cluster["run_id"] += "-okeanos"
    real_cluster["provenance"]["git"]["commit"] = "0123abcd" * 5
    res = results_dir(tmp_path, [lab, real_cluster])
    c = compare.run("lab", "okeanos", results_dir=res)
    assert (c.a.kind, c.b.kind) == ("cluster", "cluster")
    assert not any("cluster differs" in n for n in c.notes)   # the axis of the comparison is no note
    c = compare.run(lab["provenance"]["git"]["commit"][:7], "0123abc", results_dir=res)
    assert (c.a.kind, c.b.kind) == ("commit", "commit")
    assert "not comparable: cluster differs: lab (A) vs okeanos (B)" in c.notes


def test_sides_named_by_run_id(tmp_path: Path) -> None:
    a, b = real("kmeans-global-torch"), real("kmeans-blockwise-reference")
    c = compare.run(a["run_id"], b["run_id"], results_dir=results_dir(tmp_path, [a, b]))
    assert (c.a.records[0]["run_id"], c.b.records[0]["run_id"]) == (a["run_id"], b["run_id"])
    assert row(c.metrics, "ch_score")["B/A"] == f"{b['metrics']['ch_score'] / a['metrics']['ch_score']:.3f}"
    assert "not comparable: parameters differ: method \"global\" vs \"blockwise\"" in c.notes, c.notes


def test_compare_errors_are_one_line(tmp_path: Path) -> None:
    res = results_dir(tmp_path, [real("pagerank-torch")])
    proc = fab("compare", "ray", "nonsense", "--results", str(res))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "A: no ok run of framework ray" in proc.stderr
    proc = fab("compare", "torch", "nonsense", "--results", str(res))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: B: 'nonsense' is not a record file, a run id, a framework"), proc.stderr
    proc = fab("compare", str(tmp_path / "gone.json"), "torch", "--results", str(res))
    assert proc.returncode == 2 and proc.stderr == f"error: A: {tmp_path / 'gone.json'}: no such record file\n"
    (tmp_path / "bad.json").write_text(json.dumps({**real("pagerank-torch"), "workers": 0}))
    proc = fab("compare", "torch", str(tmp_path / "bad.json"), "--results", str(res))
    assert proc.returncode == 2
    assert proc.stderr == (f"error: B: {tmp_path / 'bad.json'}: workers: input should be greater than or equal to 1 "
                           "(got 0)\n")


# ------------------------------------------------------------------------------------------ export


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_export_round_trips_through_pandas(tmp_path: Path, fmt: str) -> None:
    recs = [real_of(p) for p in all_real() if p.stem != "pagerank-ray"] + [runner_record("pagerank-ray", tmp_path, "lab")]
    res = results_dir(tmp_path, recs)
    (res / "pagerank" / "garbage.json").write_text("{not json")
    out = tmp_path / "out" / f"records.{fmt}"
    proc = fab("export", "--format", fmt, "--out", str(out), "--results", str(res))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"export: {len(recs)} records -> {out}\n"
    assert proc.stderr.startswith(f"skipped: {res / 'pagerank' / 'garbage.json'}: not JSON")
    df = pd.read_csv(out) if fmt == "csv" else pd.read_parquet(out)
    assert len(df) == len(recs) and df["run_id"].is_unique
    by = df.set_index("run_id")
    for r in recs:
        got = by.loc[r["run_id"]]
        assert got["workload"] == r["workload"] and got["status"] == r["status"] and got["nodes"] == r["nodes"]
        for step, secs in r["timings_s"].items():
            assert (pd.isna(got[f"timings_s_{step}"]) if secs is None
                    else got[f"timings_s_{step}"] == pytest.approx(secs, rel=1e-12))
        if r["status"] == "ok" and r.get("verification"):
            assert bool(got["verification_passed"]) is r["verification"]["passed"]
        elif r["status"] == "ok":  # not verified (a reference run): no verdict, not a false one
            assert pd.isna(got["verification_passed"]), r["run_id"]
        if "accuracy" in r["metrics"]:
            assert got["metrics_accuracy"] == pytest.approx(r["metrics"]["accuracy"], rel=1e-12)
    pr = by.loc[recs[-1]["run_id"]]
    assert pr["provenance_inventory_name"] == "lab" and pr["provenance_git_commit"] == recs[-1]["provenance"]["git"]["commit"]
    assert pr["metrics_iterations"] == recs[-1]["metrics"]["iterations"]
    assert json.loads(pr["metrics_top"]) == recs[-1]["metrics"]["top"]       # lists are JSON text
    assert pr["resources_hosts_master_cpu_peak"] == 150.0
    assert pd.isna(by.loc[real("pagerank-failed")["run_id"]]["metrics_iterations"])


def test_export_is_atomic_and_errors_are_one_line(tmp_path: Path) -> None:
    res = results_dir(tmp_path, [real("pagerank-torch")])
    out = tmp_path / "records.csv"
    out.write_text("the previous export\n")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no records under"):
        export.export("csv", out, tmp_path / "empty")
    assert out.read_text() == "the previous export\n"           # a failed export leaves the old file whole
    path, n, _ = export.export("csv", out, res)
    assert n == 1 and len(pd.read_csv(path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "records.csv", "results"]  # no temp file
    proc = fab("export", "--format", "xlsx", "--results", str(res))
    assert proc.returncode == 2 and proc.stderr == "error: --format 'xlsx': give csv or parquet\n"
    proc = fab("export", "--out", str(tmp_path), "--results", str(res))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr == (f"error: cannot write the export to {tmp_path}: it is a directory; name a file, "
                           f"e.g. {tmp_path / 'records.csv'}\n")
    shutil.rmtree(res)


def test_an_int_beyond_int64_is_exported_exactly_as_text(tmp_path: Path) -> None:
    """Parquet's int64 cannot hold 2**64 (a seed, say): that column is text, not a traceback."""
    r = real("pagerank-torch")
    r["params"]["seed"] = 2**64
    df = pd.read_parquet(io.BytesIO(export.encode([r], "parquet")))
    assert df["params_seed"][0] == str(2**64)


def test_two_fields_that_would_share_a_column_keep_both_values() -> None:
    """``metrics.a_b`` and ``metrics.a.b`` both flatten to ``metrics_a_b``: the one overwrote the other."""
    r = real("pagerank-torch")
    r["metrics"]["a_b"], r["metrics"]["a"] = 1, {"b": 2}
    df = pd.read_csv(io.BytesIO(export.encode([r, real("pagerank-ray")], "csv")))
    assert (df["metrics.a_b"][0], df["metrics.a.b"][0]) == (1, 2) and "metrics_a_b" not in df
    assert df["metrics_iterations"][0] == r["metrics"]["iterations"]   # the rest as before


def test_table_cells_are_text_not_markup() -> None:
    """A record's text (a reason quoting torchrun's ``[rank1]:``, a stray ``[/]``) is shown as it is:
    read as rich markup it vanished or ended `fab compare` with a MarkupError."""
    from rich.console import Console

    from scalelab import cli

    con = Console(record=True, width=120)
    con.print(cli.table([{"k": "[/]"}, {"k": "[bold red]hi[/bold red] [rank1]:"}]))
    text = con.export_text()
    assert "[/]" in text and "[bold red]hi[/bold red] [rank1]:" in text


def test_runs_that_differ_only_in_notes_are_said_comparable(tmp_path: Path) -> None:
    """A `note:` (the framework here) is context: the verdict `comparable:` still follows it."""
    proc = fab("compare", str(RECORDS / "pagerank-torch.json"), str(RECORDS / "pagerank-ray.json"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "note: framework differs: torch (A) vs ray (B)" in lines and lines[-1].startswith("comparable: "), lines


def test_the_benchs_own_output_is_not_taken_for_a_record(tmp_path: Path) -> None:
    res = results_dir(tmp_path, [real("pagerank-torch")])
    (res / "bench").mkdir()
    (res / "bench" / "scale.json").write_text('{"pagerank": []}')
    recs, problems = _results.load_records(res)
    assert len(recs) == 1 and problems == []


def test_a_copied_record_is_counted_once(tmp_path: Path) -> None:
    res = results_dir(tmp_path, [real("pagerank-torch")])
    (first,) = (res / "pagerank").glob("*.json")
    (res / "pagerank" / "zz-copy.json").write_text(first.read_text())
    recs, problems = _results.load_records(res)
    assert len(recs) == 1 and problems == [f"{res / 'pagerank' / 'zz-copy.json'}: the same run "
                                           f"({recs[0]['run_id']}) as {first}: counted once"]


def test_a_run_compared_with_itself_is_said_so(tmp_path: Path) -> None:
    rec = real("pagerank-torch")
    c = compare.run(rec["run_id"], str(RECORDS / "pagerank-torch.json"), results_dir=results_dir(tmp_path, [rec]))
    assert "note: A and B are the same run(s): every ratio is 1 by construction" in c.notes, c.notes
    assert row(c.times, "total")["B/A"] == "1.000"
    other = compare.run(str(RECORDS / "pagerank-torch.json"), str(RECORDS / "pagerank-ray.json"))
    assert not [n for n in other.notes if "same run" in n or "on both sides" in n], other.notes
