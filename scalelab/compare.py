"""`fab compare A B`: two runs, or two sets of runs, side by side with ratios (B/A).

A side is a record file, a run id, or a set of ok runs under results/: a framework (``ray``), a
cluster (the inventory's name in the provenance, e.g. the lab's) or a commit of this project (a prefix
of the provenance's git commit).  ``--workload``, ``--dataset``, ``--nodes`` and ``--framework`` narrow
the sets.  A set is shown as the mean of its runs.  Where the two sides differ in what makes times
comparable (workload, dataset, parameters, iterations, convergence, cluster, nodes) the output says so;
it never refuses.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalelab import results as _results
from scalelab.errors import UserError

FRAMEWORKS = ("ray", "torch", "reference")


@dataclass
class Side:
    name: str               # "A" or "B"
    kind: str               # run, framework, cluster, commit
    token: str
    records: list[dict[str, Any]]
    left_out: int = 0       # failed runs of a set, not averaged

    def describe(self) -> str:
        n = len(self.records)
        what = f"{self.records[0]['run_id']}" if self.kind == "run" else f"{self.kind} {self.token}: {n} ok run(s)"
        return what + (f", {self.left_out} failed left out" if self.left_out else "")


@dataclass
class Comparison:
    a: Side
    b: Side
    times: list[dict[str, str]] = field(default_factory=list)
    metrics: list[dict[str, str]] = field(default_factory=list)
    verification: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------- the two sides
def cluster_of(rec: dict) -> str | None:
    return ((rec.get("provenance") or {}).get("inventory") or {}).get("name")


def commit_of(rec: dict) -> str | None:
    return (((rec.get("provenance") or {}).get("git")) or {}).get("commit")


def _filters(recs: list[dict], workload: str | None, dataset: str | None, nodes: int | None,
             framework: str | None) -> list[dict]:
    return [r for r in recs if (workload is None or r["workload"] == workload)
            and (dataset is None or _results.dataset_name(r) == dataset)
            and (nodes is None or int(r["nodes"]) == nodes) and (framework is None or r["framework"] == framework)]


def names_a_file(token: str) -> bool:
    """Whether a side's ``token`` is a record file (read as it is: no results directory needed)."""
    return token.endswith(".json") or Path(token).is_file()


def side(name: str, token: str, recs: list[dict], *, results_dir: Path, workload: str | None = None,
         dataset: str | None = None, nodes: int | None = None, framework: str | None = None) -> Side:
    """What ``token`` names: a record file, a run id, a framework, a cluster or a commit prefix."""
    path = Path(token)
    if names_a_file(token):
        if not path.is_file():
            raise UserError(f"{name}: {token}: no such record file")
        try:
            return Side(name, "run", token, [_results.load(path)])
        except _results.BadRecord as exc:
            raise UserError(f"{name}: {exc}") from None
    runs = [r for r in recs if r["run_id"] == token]
    if runs:
        return Side(name, "run", token, runs[:1])
    if token in FRAMEWORKS:
        kind, chosen = "framework", [r for r in recs if r["framework"] == token]
    elif any(cluster_of(r) == token for r in recs):
        kind, chosen = "cluster", [r for r in recs if cluster_of(r) == token]
    elif re.fullmatch(r"[0-9a-f]{4,40}", token) and any((commit_of(r) or "").startswith(token) for r in recs):
        kind, chosen = "commit", [r for r in recs if (commit_of(r) or "").startswith(token)]
    else:
        clusters = sorted({c for r in recs if (c := cluster_of(r))})
        commits = sorted({c[:8] for r in recs if (c := commit_of(r))})
        raise UserError(f"{name}: {token!r} is not a record file, a run id, a framework ({', '.join(FRAMEWORKS)}), "
                        f"a cluster ({', '.join(clusters) or 'none recorded'}) or a commit "
                        f"({', '.join(commits[:3]) or 'none recorded'}) of the runs in {results_dir}")
    chosen = _filters(chosen, workload, dataset, nodes, None if kind == "framework" else framework)
    ok = [r for r in chosen if r["status"] == "ok"]
    if not ok:
        narrowed = ", ".join(f"--{k} {v}" for k, v in (("workload", workload), ("dataset", dataset),
                                                       ("nodes", nodes), ("framework", framework)) if v is not None)
        raise UserError(f"{name}: no ok run of {kind} {token}{' with ' + narrowed if narrowed else ''} "
                        f"in {results_dir}: `fab export` writes them all to one table, to see what there is")
    for key, opt, get in (("workloads", "workload", lambda r: r["workload"]),
                          ("datasets", "dataset", _results.dataset_name),
                          ("node counts", "nodes", lambda r: str(r["nodes"])),
                          ("frameworks", "framework", lambda r: r["framework"])):
        seen = sorted({get(r) for r in ok})
        if len(seen) > 1:
            raise UserError(f"{name}: {kind} {token} holds runs of several {key} ({', '.join(seen)}): "
                            f"choose one with --{opt}")
    return Side(name, kind, token, ok, left_out=len(chosen) - len(ok))


# --------------------------------------------------------------------------------- values
def _scalars(d: Any, prefix: str = "") -> dict[str, Any]:
    """Numbers, booleans and short strings of a dict, nested dicts as dotted keys; lists are skipped."""
    out: dict[str, Any] = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_scalars(v, key + "."))
        elif isinstance(v, bool | int | float | str) or v is None:
            out[key] = v
    return out


def _merge(values: list[Any]) -> Any:
    """A set's value: the mean of numbers, else the one value all runs share, else 'mixed'."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(v == present[0] for v in present):
        return present[0]
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return sum(present) / len(present)
    if all(isinstance(v, bool) for v in present):
        return f"{sum(present)}/{len(present)} true"
    return "mixed"


def _keys(dicts: Iterable[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for d in dicts:
        seen.update(dict.fromkeys(d))
    return list(seen)


def _fmt(v: Any, spec: str = ".6g") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def ratio(a: Any, b: Any) -> float | None:
    nums = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
    return b / a if nums and a else None


def _table(a: list[dict], b: list[dict], spec: str = ".6g") -> list[dict[str, str]]:
    rows = []
    for key in _keys(a + b):
        va, vb = _merge([d.get(key) for d in a]), _merge([d.get(key) for d in b])
        r = ratio(va, vb)
        rows.append({"": key, "A": _fmt(va, spec), "B": _fmt(vb, spec), "B/A": "-" if r is None else f"{r:.3f}"})
    return rows


# --------------------------------------------------------------------------------- notes
def _machine(rec: dict) -> str | None:
    nodes = (rec.get("provenance") or {}).get("nodes") or {}
    models = sorted({f"{f.get('cpu_model')} x{f.get('cores')}" for f in nodes.values()})
    return "; ".join(models) or None


# (what, value of a record, shown as "not comparable" when the sides differ)
FACTS = (
    ("workload", lambda r: r["workload"], True),
    ("dataset", _results.dataset_name, True),
    ("dataset bytes", lambda r: (r.get("dataset") or {}).get("bytes"), True),
    ("nodes", lambda r: r["nodes"], True),
    ("workers", lambda r: r["workers"], True),
    ("iterations", lambda r: (r.get("metrics") or {}).get("iterations"), True),
    ("converged", lambda r: (r.get("metrics") or {}).get("converged"), True),
    ("cluster", cluster_of, True),
    ("framework", lambda r: r["framework"], False),
    ("machine", _machine, False),
    ("commit", lambda r: (commit_of(r) or "")[:8] or None, False),
)


def _params(rec: dict) -> dict[str, str]:
    return {k: json.dumps(v, sort_keys=True) for k, v in (rec.get("params") or {}).items()}


def notes(a: Side, b: Side) -> list[str]:
    out = []
    axis = {"framework": "framework", "cluster": "cluster", "commit": "commit"}.get(a.kind if a.kind == b.kind else "")
    for what, get, hard in FACTS:
        if what == axis:
            continue
        va, vb = ({_fmt(get(r)) for r in s.records} for s in (a, b))
        for s, vs in ((a, va), (b, vb)):
            if len(vs) > 1:
                out.append(f"{'not comparable' if hard else 'note'}: {s.name} mixes {what} ({', '.join(sorted(vs))})")
        if len(va) == len(vb) == 1 and va != vb:
            out.append(f"{'not comparable' if hard else 'note'}: {what} differs: {va.pop()} (A) vs {vb.pop()} (B)")
    pa, pb = (_keys([_params(r) for r in s.records]) for s in (a, b))
    diff = []
    for k in _keys([dict.fromkeys(pa), dict.fromkeys(pb)]):
        sa, sb = ({_params(r).get(k, "absent") for r in s.records} for s in (a, b))
        if sa != sb or len(sa) > 1:
            diff.append(f"{k} {'/'.join(sorted(sa))} vs {'/'.join(sorted(sb))}")
    if diff:
        out.append(f"not comparable: parameters differ: {'; '.join(diff)}")
    def same_cell(r: dict) -> tuple:
        return r["framework"], r["nodes"], _results.dataset_name(r)
    if a.kind == b.kind == "run" and same_cell(a.records[0]) == same_cell(b.records[0]):
        ha, hb = ((s.records[0].get("provenance") or {}).get("params_hash") for s in (a, b))
        if ha and hb and ha != hb and not diff:
            out.append(f"not comparable: the options asked for differ (params hash {ha} vs {hb})")
    ids_a, ids_b = ({r["run_id"] for r in s.records} for s in (a, b))
    if ids_a == ids_b:
        out.append("note: A and B are the same run(s): every ratio is 1 by construction")
    elif both := sorted(ids_a & ids_b):
        out.append(f"note: {len(both)} run(s) on both sides ({', '.join(both[:3])}{', ...' if len(both) > 3 else ''})")
    for s in (a, b):
        failed = [r["run_id"] for r in s.records if r["status"] != "ok"]
        if failed:
            out.append(f"not comparable: {s.name} failed ({', '.join(failed)}): its numbers are partial")
    return out


def compare(a: Side, b: Side) -> Comparison:
    c = Comparison(a, b)
    c.times = _table([r.get("timings_s") or {} for r in a.records], [r.get("timings_s") or {} for r in b.records], ".3f")
    c.metrics = _table([_scalars(r.get("metrics")) for r in a.records],
                       [_scalars(r.get("metrics")) for r in b.records])
    c.verification = _table([_scalars(r.get("verification")) for r in a.records],
                            [_scalars(r.get("verification")) for r in b.records])
    c.notes = notes(a, b)
    return c


def run(a: str, b: str, *, results_dir: Path = _results.RESULTS_DIR, workload: str | None = None,
        dataset: str | None = None, nodes: int | None = None, framework: str | None = None) -> Comparison:
    if not (names_a_file(a) and names_a_file(b)):  # (two record files need no results directory)
        _results.require_results(results_dir)
    recs, _ = _results.load_records(results_dir)
    kw = {"results_dir": results_dir, "workload": workload, "dataset": dataset, "nodes": nodes, "framework": framework}
    return compare(side("A", a, recs, **kw), side("B", b, recs, **kw))
