"""`fab export`: every record under results/ as one table, one row per run, for pandas and friends.

Nested fields are flattened with ``_`` (``timings_s.load`` -> ``timings_s_load``,
``provenance.git.commit`` -> ``provenance_git_commit``; with ``.`` where two fields would share a
column); lists (PageRank's top nodes, centroids, loss curves) are JSON text in one column.  The file
is written atomically: a reader never sees half of it.
"""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

from scalelab import results as _results
from scalelab.cli import REPO_ROOT
from scalelab.errors import UserError
from workloads.record import write_atomic

FORMATS = ("csv", "parquet")
FIRST = ("run_id", "workload", "framework", "nodes", "workers", "status", "error", "schema")
NESTED = ("dataset", "params", "timings_s", "metrics", "verification", "env", "provenance", "resources",
          "cleanup_problems")  # null here: no columns (the other records' columns hold the values)


def _leaves(d: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out: list[tuple[tuple[str, ...], Any]] = []
    for k, v in d.items():
        p = (*path, str(k))
        if isinstance(v, dict):
            out += _leaves(v, p)
        elif v is None and not path and k in NESTED:
            continue
        else:
            out.append((p, json.dumps(v) if isinstance(v, list | tuple) else v))
    return out


def flatten(rec: dict[str, Any]) -> dict[str, Any]:
    """One record as {column: value}: nested names joined with ``_``, or with ``.`` where ``_`` would give
    two fields one column (``metrics.a_b`` and ``metrics.a.b``), so that no value overwrites another."""
    leaves = _leaves(rec)
    names = Counter("_".join(p) for p, _ in leaves)
    return {("_".join(p) if names["_".join(p)] == 1 else ".".join(p)): v for p, v in leaves}


def rows(recs: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    flat = [flatten(r) for r in recs]
    cols: dict[str, None] = dict.fromkeys(FIRST)
    for f in flat:
        cols.update(dict.fromkeys(f))
    return list(cols), flat


def _column(values: list[Any]) -> tuple[str, list[Any]]:
    """One type per column (parquet needs it): bool, int, float, else text (other values as JSON)."""
    present = [v for v in values if v is not None]

    def int64(v: Any) -> bool:  # (a larger int is written as text, exactly)
        return isinstance(v, int) and not isinstance(v, bool) and -2**63 <= v < 2**63

    if present and all(isinstance(v, bool) for v in present):
        return "bool", values
    if present and all(int64(v) for v in present):
        return "int64", values
    if present and all(int64(v) or isinstance(v, float) for v in present):
        return "float64", [None if v is None else float(v) for v in values]
    return "string", [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]


def encode(recs: list[dict[str, Any]], fmt: str) -> bytes:
    cols, flat = rows(recs)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for f in flat:
            w.writerow({c: f.get(c) for c in cols})
        return buf.getvalue().encode()
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for c in cols:
        kind, values = _column([f.get(c) for f in flat])
        arrays[c] = pa.array(values, type=pa.bool_() if kind == "bool" else kind)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(arrays), sink)
    return sink.getvalue().to_pybytes()


def default_out(fmt: str) -> Path:
    return REPO_ROOT / "reports" / f"records.{fmt}"


def export(fmt: str, out: Path | None = None, results_dir: Path = _results.RESULTS_DIR) -> tuple[Path, int, list[str]]:
    """Write every readable record under ``results_dir``; (the file, records written, files skipped)."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: give csv or parquet")
    _results.require_results(results_dir)
    recs, problems = _results.load_records(results_dir)
    if not recs:
        raise UserError(f"no records under {results_dir}: run `fab run-experiment` first (or give --results DIR)")
    if out is not None and out.is_dir():  # (write_atomic's example would be a .json file)
        raise UserError(f"cannot write the export to {out}: it is a directory; name a file, e.g. "
                        f"{out / default_out(fmt).name}")
    path = write_atomic(out or default_out(fmt), encode(recs, fmt), "the export")
    return path, len(recs), problems
