"""`fab report`: Markdown and HTML pages with the tables and figures of seed paper 002, from records.

Every number comes with how far to trust it: convergence (iterations, converged, final change, error
bound) and verification (error against the reference, passed) per row, and the provenance of each group
(commit and whether the tree was dirty, the cluster's inventory name, CPU models).  Figures (PNG): time vs
nodes per (workload, dataset); time vs dataset size per (workload, nodes); quality per run; CPU and memory
per node when the records carry resource samples.  The seed's own measured numbers stand beside ours only
where the work is the same (:func:`seed_comparison`); elsewhere they are labelled not comparable, with why.
"""
from __future__ import annotations

import datetime as dt
import html
import re
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import jinja2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from scalelab import results  # noqa: E402
from scalelab.cli import REPO_ROOT  # noqa: E402
from scalelab.errors import UserError  # noqa: E402

TEMPLATES = REPO_ROOT / "templates"
SEED_NOTE = ("seed: measured by the seed paper on 3 Okeanos VMs (4 vCPU, 8 GB, other hardware than ours); shown "
             "as a number only where our run did the same work, otherwise labelled not comparable with the reason")
COLORS = {"ray": "#1f77b4", "torch": "#d62728", "reference": "#2ca02c"}
DATASET_ORDER = ["tiny", "test_data", "data_1", "data_2", "data"]


def _ds_key(name: str) -> tuple[int, str]:
    return (DATASET_ORDER.index(name) if name in DATASET_ORDER else len(DATASET_ORDER), name)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.{digits}g}"
        return f"{v:.{digits}f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def seed_cells() -> dict[tuple[str, str, str, int], float]:
    """(workload, dataset, framework, nodes) -> the seed's mean measured time."""
    acc: dict[tuple, list[float]] = defaultdict(list)
    for r in results.load_seed():
        acc[(r.workload, r.dataset, r.framework, r.nodes)].append(r.time_s)
    return {k: sum(v) / len(v) for k, v in acc.items()}


# What the seed computed, per (workload, framework): the parameters a run of ours must have to do the same
# work (shared/research/seed-audit.md §2), or why no run of ours does.  The seed ran its own stopping rules
# (torch_ppr's epsilon per batch, sklearn's KMeans per block), so "the same work" is the same algorithm on
# the same data with the same parameters, never our converged or fixed-iteration global methods.
SEED_WORK: dict[tuple[str, str], dict[str, Any] | str] = {
    ("pagerank", "ray"): {"method": "seed", "damping": 0.95, "block_mb": 10},
    ("pagerank", "torch"): "the seed's PyTorch PageRank ran on every W-th edge of 1 Mi-edge batches with "
                           "float32 node ids (ids above 2^24 rounded): no run of ours repeats that",
    ("kmeans", "ray"): {"method": "blockwise", "k": 16, "seed": 42, "block_mb": 20},
    ("kmeans", "torch"): "the seed's PyTorch k-means clustered a random 1 Mi-row sample per rank (its CH "
                         "depends on the world size): no run of ours repeats that",
    ("pneumonia", "ray"): {"epochs": 10, "lr": 0.01, "per_worker_batch": 64},
    ("pneumonia", "torch"): {"epochs": 10, "lr": 0.01, "per_worker_batch": 64},
}
SEED_DATASETS = {"pagerank": ("data_1", "data_2", "data"), "kmeans": ("data_1", "data_2", "data"),
                 "pneumonia": ("chest_xray",)}


def seed_comparison(rec: dict) -> str | None:
    """None when this ok run did the seed's work (same algorithm, parameters and dataset), else why not."""
    wl, fw, ds = rec["workload"], rec["framework"], results.dataset_name(rec)
    work = SEED_WORK.get((wl, fw))
    if work is None:
        return f"the seed has no {fw} {wl} numbers"
    if ds not in SEED_DATASETS.get(wl, ()):
        return f"the seed did not run {wl} on {ds}"
    if isinstance(work, str):
        return work
    params = rec.get("params") or {}
    diff = []
    for key, want in work.items():
        have = params.get(key)
        if key == "per_worker_batch":  # ours records the split of the global batch over the workers
            have = sorted(set(have)) if isinstance(have, list) else have
            ok = have == [want]
        else:
            ok = have == want
        if not ok:
            diff.append(f"{key} {have if have is not None else 'unset'} (seed {want})")
    if diff:
        return "different work: " + ", ".join(diff)
    return None


def _span(values: list[Any]) -> str:
    vals = sorted(set(values))
    if not vals:
        return "-"
    return _fmt(vals[0]) if len(vals) == 1 else f"{_fmt(vals[0])}-{_fmt(vals[-1])}"


def _max(values: list[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return max(vals) if vals else None


def group_key(rec: dict) -> tuple[str, str, str, str, int]:
    """The summary row a record belongs to (:func:`scalelab.results.summarise`'s grouping)."""
    return (results.cluster_name(rec), rec["workload"], results.dataset_name(rec), rec["framework"], int(rec["nodes"]))


def provenance_of(rec: dict) -> tuple[str, str, str, str]:
    """(commit, dirty, inventory name, CPU models) of a record; '-' where the record does not say."""
    prov = rec.get("provenance") or {}
    git = prov.get("git") or prov
    commit = str(git.get("commit") or "-")[:12]
    dirty = {True: "dirty", False: "clean"}.get(git.get("dirty"), "-")
    nodes = prov.get("nodes") or {}
    models = {str(f.get("cpu_model")) for f in nodes.values() if isinstance(f, dict) and f.get("cpu_model")}
    models |= {str(c.get("model")) for c in prov.get("cpus") or [] if isinstance(c, dict) and c.get("model")}
    env_cpu = (rec.get("env") or {}).get("cpu_model")
    if env_cpu:
        models.add(str(env_cpu))
    return commit, dirty, results.cluster_name(rec), "; ".join(sorted(models)) or "-"


def details(recs: list[dict]) -> tuple[dict[tuple, dict[str, Any]], list[dict[str, str]]]:
    """Per summary row: convergence, verification, the seed comparison and provenance ids; and the
    provenance table those ids point at (one line per distinct commit, tree state, cluster, CPUs)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in recs:
        groups[group_key(r)].append(r)
    prov_ids: dict[tuple[str, str, str, str], str] = {}
    out = {}
    for key, rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        m = [r.get("metrics") or {} for r in ok]
        v = [r.get("verification") or {} for r in ok]
        flags = [x["converged"] for x in m if isinstance(x.get("converged"), bool)]
        ids = []
        for r in rs:
            ids.append(prov_ids.setdefault(provenance_of(r), f"P{len(prov_ids) + 1}"))
        reasons = sorted({why for r in ok if (why := seed_comparison(r))})
        out[key] = {
            "iterations": _span([x["iterations"] for x in m if isinstance(x.get("iterations"), int)]),
            "converged": ("-" if not flags else "yes" if all(flags) else
                          "no (max-iter)" if not any(flags) else f"{sum(flags)}/{len(flags)}"),
            "final_change": _max([x.get("l1_change") for x in m]),
            "error_bound": _max([x.get("error_bound") for x in m]),
            "verify_error": _max([x.get("error") for x in v]),
            "seed_reason": "; ".join(reasons) if reasons else (None if ok else "no ok run"),
            "provenance": ", ".join(sorted(set(ids), key=lambda i: int(i[1:]))),
        }
    table = [{"id": pid, "commit": c, "tree": d, "cluster": cl, "cpu": cpu}
             for (c, d, cl, cpu), pid in sorted(prov_ids.items(), key=lambda kv: int(kv[1][1:]))]
    return out, table


def save_figure(fig, outdir: Path, name: str) -> Path:
    """Save ``fig`` in ``outdir`` as ``name``.png, made a plain file name (a dataset or cluster name may
    hold ``/``, a space or ``#``, which break the path or the pages' links) and kept apart from the
    figures already there."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    path, i = outdir / f"{stem}.png", 1
    while path.exists():  # two names that differ only in what was replaced
        i += 1
        path = outdir / f"{stem}_{i}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finish(fig, ax, outdir: Path, name: str, title: str) -> dict:
    """Grid, legend, save: the figure's entry for the pages."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return {"path": save_figure(fig, outdir, name).name, "title": title}


def fig_time_vs_nodes(summary: list[dict], seed: dict, outdir: Path) -> list[dict]:
    """seed: (cluster, workload, dataset, framework, nodes) -> the seed's time, for comparable cells only."""
    figs = []
    by_cell: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for row in summary:
        by_cell[(row["cluster"], row["workload"], row["dataset"])].append(row)
    many = len({c for c, _, _ in by_cell}) > 1
    for (cl, wl, ds), rows in sorted(by_cell.items()):
        if not any(r["time_mean_s"] for r in rows):
            continue  # only failed runs here: they are listed in the failed-runs table
        fig, ax = plt.subplots(figsize=(6, 4))
        for fw in sorted({r["framework"] for r in rows}):
            pts = sorted((r["nodes"], r["time_mean_s"]) for r in rows if r["framework"] == fw and r["time_mean_s"])
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", color=COLORS.get(fw), label=f"{fw} (scalelab)")
            spts = sorted((n, t) for (c, w, d, f, n), t in seed.items() if (c, w, d, f) == (cl, wl, ds, fw))
            if spts:
                ax.plot(*zip(*spts, strict=True), marker="s", ls="--", color=COLORS.get(fw), alpha=0.6, label=f"{fw} (seed)")
        where = f" ({cl})" if many else ""
        ax.set(title=f"{wl} on {ds}{where}: time vs nodes", xlabel="nodes", ylabel="total time (s)")
        ys = [y for line in ax.get_lines() for y in line.get_ydata() if y > 0]
        if ys and max(ys) / min(ys) > 20:
            ax.set_yscale("log")  # the seed's times are 10-100x ours: keep both readable
        ax.set_xticks(sorted({r["nodes"] for r in rows}))
        name = f"time_vs_nodes_{wl}_{ds}" + (f"_{cl}" if many else "")
        figs.append(_finish(fig, ax, outdir, name, f"{wl} on {ds}{where}: time vs nodes"))
    return figs


def fig_time_vs_size(recs: list[dict], outdir: Path) -> list[dict]:
    figs = []
    cells: dict[tuple[str, str, int], dict[str, list[tuple[float, str, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in recs:  # runs on different clusters are never averaged together
        if r["status"] != "ok" or results.total_time(r) is None:
            continue
        size = float((r.get("dataset") or {}).get("bytes") or 0)
        cells[(results.cluster_name(r), r["workload"], int(r["nodes"]))][r["framework"]].append(
            (size, results.dataset_name(r), results.total_time(r)))
    many = len({c for c, _, _ in cells}) > 1
    for (cl, wl, n), fws in sorted(cells.items()):
        if len({s for pts in fws.values() for s, _, _ in pts}) < 2:
            continue  # one dataset size: nothing to plot against
        fig, ax = plt.subplots(figsize=(6, 4))
        for fw, pts in sorted(fws.items()):
            agg: dict[float, list[float]] = defaultdict(list)
            for s, _, t in pts:
                agg[s].append(t)
            xs = sorted(agg)
            ax.plot([x / 1e6 for x in xs], [sum(agg[x]) / len(agg[x]) for x in xs], marker="o",
                    color=COLORS.get(fw), label=fw)
        where = f" ({cl})" if many else ""
        ax.set(title=f"{wl}, {n} node(s){where}: time vs dataset size", xlabel="dataset size (MB)",
               ylabel="total time (s)")
        figs.append(_finish(fig, ax, outdir, f"time_vs_size_{wl}_{n}nodes" + (f"_{cl}" if many else ""),
                            f"{wl}, {n} node(s){where}: time vs dataset size"))
    return figs


def fig_quality(recs: list[dict], outdir: Path) -> list[dict]:
    figs = []
    by_wl: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        if r["status"] == "ok" and results.quality(r):
            by_wl[r["workload"]].append(r)
    for wl, rs in sorted(by_wl.items()):
        name = results.quality(rs[0])[0]
        fig, ax = plt.subplots(figsize=(6, 4))
        for fw in sorted({r["framework"] for r in rs}):
            pts = [(int(r["nodes"]), results.quality(r)[1]) for r in rs if r["framework"] == fw]
            offs = {"ray": -0.08, "torch": 0.08}.get(fw, 0.0)
            ax.scatter([n + offs for n, _ in pts], [q for _, q in pts], color=COLORS.get(fw), label=fw)
        ax.set(title=f"{wl}: {name} per run", xlabel="nodes", ylabel=name)
        ax.set_xticks(sorted({int(r["nodes"]) for r in rs}))
        figs.append(_finish(fig, ax, outdir, f"quality_{wl}", f"{wl}: {name} per run"))
    return figs


def fig_resources(recs: list[dict], outdir: Path) -> list[dict]:
    """Peak and mean CPU / memory per node (the seed compared these from Ray's dashboard, Fig. 16-17): one
    bar per run configuration and host, its peak the highest of its runs' and its mean their mean (a bar
    per run grew the figure without limit: 180,000 px high for 2,000 runs)."""
    runs: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in recs:
        for host, u in ((r.get("resources") or {}).get("hosts") or {}).items():
            runs[(f"{results.cluster_name(r)} {r['workload']}/{r['framework']}/{r['nodes']}n", host)].append(u)
    if not runs:
        return []

    def merged(us: list[dict]) -> dict[str, float]:
        out = {}
        for key in ("cpu", "mem"):
            peaks = [u[f"{key}_peak"] for u in us if u.get(f"{key}_peak") is not None]
            means = [u[f"{key}_mean"] for u in us if u.get(f"{key}_mean") is not None]
            out[f"{key}_peak"] = max(peaks, default=0)
            out[f"{key}_mean"] = sum(means) / len(means) if means else 0
        return out

    rows = [(run, host, merged(us)) for (run, host), us in sorted(runs.items())]
    fig, axes = plt.subplots(1, 2, figsize=(10, max(3, 0.35 * len(rows) + 1)))
    labels = [f"{run} {host}" for run, host, _ in rows]
    for ax, key, unit in ((axes[0], "cpu", "%"), (axes[1], "mem", "MB")):
        peak = [u.get(f"{key}_peak") or 0 for _, _, u in rows]
        mean = [u.get(f"{key}_mean") or 0 for _, _, u in rows]
        y = range(len(rows))
        ax.barh(y, peak, color="#bbb", label="peak")
        ax.barh(y, mean, color="#1f77b4", height=0.5, label="mean")
        ax.set_yticks(list(y))
        ax.set_yticklabels(labels if ax is axes[0] else [""] * len(rows), fontsize=7)
        ax.set(title=f"{key.upper()} per node ({unit})")
        ax.legend(fontsize=8)
    p = save_figure(fig, outdir, "resources")
    return [{"path": p.name, "title": "CPU and memory per node"}]


def build(results_dir: Path = results.RESULTS_DIR, out_dir: Path | None = None) -> dict[str, Path]:
    """The report from the records under ``results_dir`` into ``out_dir``: made in a directory of its
    own there, then moved in (a report that fails leaves the last one as it was)."""
    results.require_results(results_dir)
    recs, problems = results.load_records(results_dir)
    if problems and not recs:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"no readable result records under {results_dir}: {problems[0]}{more}")
    if not recs:
        raise UserError(f"no result records under {results_dir}: run `fab run-experiment WORKLOAD --nodes N` first")
    out_dir = out_dir or (REPO_ROOT / "reports" / "latest")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".report-", dir=out_dir))
    except OSError as exc:
        raise UserError(f"cannot write the report to {out_dir}: {exc.strerror or exc}; give --out a directory "
                        "you can write") from None
    try:
        (stage / "figures").mkdir()
        _render(recs, problems, results_dir, stage)
        figdir = out_dir / "figures"
        figdir.mkdir(exist_ok=True)
        for old in figdir.glob("*.png"):
            old.unlink()
        for new in (stage / "figures").glob("*.png"):
            new.replace(figdir / new.name)
        for name in ("report.md", "report.html"):
            (stage / name).replace(out_dir / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {"markdown": out_dir / "report.md", "html": out_dir / "report.html", "figures": out_dir / "figures"}


def _render(recs: list[dict], problems: list[str], results_dir: Path, out_dir: Path) -> None:
    """The pages and figures into ``out_dir`` (empty but for ``figures/``)."""
    figdir = out_dir / "figures"
    summary = results.summarise(recs)
    seed = seed_cells()
    per_row, provenance = details(recs)
    comparable: dict[tuple, float] = {}
    not_comparable: list[str] = []
    for row in summary:
        key = (row["workload"], row["dataset"], row["framework"], row["nodes"])
        row.update(per_row[(row["cluster"], *key)])
        row["seed_time_s"] = seed.get(key)
        if row["seed_time_s"] is None:
            row["seed_cell"] = "-"
        elif row["seed_reason"] is None:
            comparable[(row["cluster"], *key)] = row["seed_time_s"]
            row["seed_cell"] = _fmt(row["seed_time_s"])
        else:
            if row["seed_reason"] not in not_comparable:
                not_comparable.append(row["seed_reason"])
            row["seed_cell"] = f"{_fmt(row['seed_time_s'])} not comparable [{not_comparable.index(row['seed_reason']) + 1}]"
    figures = (fig_time_vs_nodes(summary, comparable, figdir) + fig_time_vs_size(recs, figdir)
               + fig_quality(recs, figdir) + fig_resources(recs, figdir))
    failed = [r for r in recs if r["status"] == "failed"]
    ctx = {
        "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "n_records": len(recs), "n_failed": len(failed), "summary": summary, "figures": figures,
        "failed": failed, "problems": problems, "seed_note": SEED_NOTE, "fmt": _fmt, "provenance": provenance,
        "not_comparable": not_comparable,
        "results_dir": str(results_dir),
    }
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=jinja2.select_autoescape(["html"]),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    (out_dir / "report.md").write_text(env.get_template("report.md.j2").render(**ctx))
    (out_dir / "report.html").write_text(env.get_template("report.html.j2").render(**ctx, escape=html.escape))
