"""Result records on the controller: load, validate, group, and the seed's own measured numbers."""
from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scalelab.cli import REPO_ROOT
from scalelab.errors import UserError
from workloads.recordmodel import BadRecord as BadRecord  # the one error for a file that is not a record
from workloads.recordmodel import check, load

RESULTS_DIR = Path(os.environ.get("SCALELAB_RESULTS") or REPO_ROOT / "results")
SEED_RESULTS = Path(__file__).with_name("data") / "seed-results.csv"
SEED_FRAMEWORKS = {"Ray": "ray", "PyTorch": "torch"}


def validate(rec: Any, source: str = "record") -> dict[str, Any]:
    """A record checked against the model (workloads/recordmodel.py), upgraded to the current schema."""
    return check(rec, source)


BENCH_DIR = "bench"  # results/bench: `make bench`'s own output (bench/), not run records


def record_paths(root: Path = RESULTS_DIR, workloads: Iterable[str] | None = None) -> list[Path]:
    wanted = set(workloads) if workloads else None
    return [p for p in sorted(root.glob("*/*.json"))
            if p.parent.name != BENCH_DIR and (not wanted or p.parent.name in wanted)]


def require_results(root: Path) -> None:
    """A user's ``--results`` that does not exist is said as such (not as a directory with no records)."""
    if not root.exists():
        raise UserError(f"{root} does not exist: give --results a directory of runs (WORKLOAD/RUN.json), or "
                        "run `fab run-experiment WORKLOAD --nodes N` first")


def load_records(root: Path = RESULTS_DIR, workloads: Iterable[str] | None = None) -> tuple[list[dict], list[str]]:
    """All records under results/<workload>/*.json, checked and upgraded; files that are not records
    are reported (one line each: the file and what is wrong), not fatal."""
    recs, problems, seen = [], [], {}
    for path in record_paths(root, workloads):
        try:
            rec = load(path)
        except BadRecord as exc:
            problems.append(str(exc))
            continue
        if (first := seen.setdefault(rec["run_id"], path)) != path:  # a copy would count twice in every mean
            problems.append(f"{path}: the same run ({rec['run_id']}) as {first}: counted once")
            continue
        recs.append(rec)
    return recs, problems


@dataclass(frozen=True)
class SeedRow:
    workload: str
    framework: str
    dataset: str
    nodes: int
    run: int
    time_s: float
    quality: float | None   # CH score (k-means) or accuracy (pneumonia)


def _seed_dataset(raw: str) -> str:
    """'data_1.csv(1.06GB)' -> 'data_1'; 'chest_xray(train5216/test624)' -> 'chest_xray'."""
    return re.sub(r"(\.csv)?\(.*\)$", "", raw)


def load_seed(path: Path = SEED_RESULTS) -> list[SeedRow]:
    rows = []
    with path.open() as f:
        for r in csv.DictReader(f):
            q = r.get("ch_score") or r.get("accuracy") or None
            rows.append(SeedRow(r["experiment"], SEED_FRAMEWORKS.get(r["framework"], r["framework"].lower()),
                                _seed_dataset(r["dataset"]), int(r["nodes"]), int(r["run"]),
                                float(r["time_s"]), float(q) if q else None))
    return rows


def cluster_name(rec: dict) -> str:
    """Where the run ran: the inventory's name (a lab's name, a cluster's directory); '-' when unknown."""
    return (((rec.get("provenance") or {}).get("inventory") or {}).get("name")) or "-"


def dataset_name(rec: dict) -> str:
    return ((rec.get("dataset") or {}).get("name")) or "-"


def total_time(rec: dict) -> float | None:
    t = (rec.get("timings_s") or {}).get("total")
    return float(t) if t is not None else None


def quality(rec: dict) -> tuple[str, float] | None:
    """The workload's quality number: accuracy, CH score, or (PageRank) the verification error."""
    m = rec.get("metrics") or {}
    for key in ("accuracy", "ch_score"):
        if m.get(key) is not None:
            return key, float(m[key])
    v = rec.get("verification") or {}
    if v.get("error") is not None:
        return "verification error", float(v["error"])
    return None


def summarise(recs: list[dict]) -> list[dict[str, Any]]:
    """One row per (cluster, workload, dataset, framework, nodes): runs, ok runs, mean/min time, verdicts.
    Runs on different clusters (the lab, a real one) are never averaged together."""
    groups: dict[tuple, list[dict]] = {}
    for r in recs:
        groups.setdefault((cluster_name(r), r["workload"], dataset_name(r), r["framework"], int(r["nodes"])),
                          []).append(r)
    rows = []
    for (cl, wl, ds, fw, n), rs in sorted(groups.items()):
        ok = [r for r in rs if r["status"] == "ok"]
        times = [t for r in ok if (t := total_time(r)) is not None]
        verified = [r["verification"]["passed"] for r in ok if r.get("verification")]
        q = [qq[1] for r in ok if (qq := quality(r))]
        rows.append({
            "cluster": cl, "workload": wl, "dataset": ds, "framework": fw, "nodes": n, "runs": len(rs), "ok": len(ok),
            "time_mean_s": sum(times) / len(times) if times else None,
            "time_min_s": min(times) if times else None,
            "quality": sum(q) / len(q) if q else None,
            "quality_name": (quality(ok[0]) or ("", 0))[0] if ok else "",
            "verified": ("-" if not verified else ("pass" if all(verified) else
                         f"FAIL ({verified.count(False)}/{len(verified)})")),
        })
    return rows
