"""`fab report`: Markdown and HTML pages with the tables and figures of seed paper 002, from records.

Figures (PNG): time vs nodes per (workload, dataset); time vs dataset size per (workload, nodes);
quality per run; CPU and memory per node when the records carry resource samples.  The seed's own
measured numbers stand beside ours where the same cell exists, marked as measured on their hardware
with their approximate algorithms.
"""
from __future__ import annotations

import datetime as dt
import html
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
SEED_NOTE = ("seed: measured by the seed paper on 3 Okeanos VMs (4 vCPU, 8 GB) with its approximate "
             "algorithms (per-batch PageRank, per-block k-means); not the same computation")
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


def converged_cells(recs: list[dict]) -> dict[tuple[str, str, str, int], str]:
    """(workload, dataset, framework, nodes) -> whether its ok runs converged: "yes", "no (stopped at
    max-iter)", "k/n" when mixed; cells whose records do not say are left out (shown as "-")."""
    acc: dict[tuple, list[bool]] = defaultdict(list)
    for r in recs:
        flag = (r.get("metrics") or {}).get("converged")
        if r["status"] == "ok" and isinstance(flag, bool):
            acc[(r["workload"], results.dataset_name(r), r["framework"], int(r["nodes"]))].append(flag)
    return {k: "yes" if all(v) else ("no (max-iter)" if not any(v) else f"{sum(v)}/{len(v)}")
            for k, v in acc.items()}


def seed_cells() -> dict[tuple[str, str, str, int], float]:
    """(workload, dataset, framework, nodes) -> the seed's mean measured time."""
    acc: dict[tuple, list[float]] = defaultdict(list)
    for r in results.load_seed():
        acc[(r.workload, r.dataset, r.framework, r.nodes)].append(r.time_s)
    return {k: sum(v) / len(v) for k, v in acc.items()}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finish(fig, ax, path: Path, title: str) -> dict:
    """Grid, legend, save: the figure's entry for the pages."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return {"path": _save(fig, path).name, "title": title}


def fig_time_vs_nodes(summary: list[dict], seed: dict, outdir: Path) -> list[dict]:
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
            spts = sorted((n, t) for (w, d, f, n), t in seed.items() if (w, d, f) == (wl, ds, fw))
            if spts:
                ax.plot(*zip(*spts, strict=True), marker="s", ls="--", color=COLORS.get(fw), alpha=0.6, label=f"{fw} (seed)")
        where = f" ({cl})" if many else ""
        ax.set(title=f"{wl} on {ds}{where}: time vs nodes", xlabel="nodes", ylabel="total time (s)")
        ys = [y for line in ax.get_lines() for y in line.get_ydata() if y > 0]
        if ys and max(ys) / min(ys) > 20:
            ax.set_yscale("log")  # the seed's times are 10-100x ours: keep both readable
        ax.set_xticks(sorted({r["nodes"] for r in rows}))
        name = f"time_vs_nodes_{wl}_{ds}" + (f"_{cl}" if many else "")
        figs.append(_finish(fig, ax, outdir / f"{name}.png", f"{wl} on {ds}{where}: time vs nodes"))
    return figs


def fig_time_vs_size(recs: list[dict], outdir: Path) -> list[dict]:
    figs = []
    cells: dict[tuple[str, int], dict[str, list[tuple[float, str, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in recs:
        if r["status"] != "ok" or results.total_time(r) is None:
            continue
        size = float((r.get("dataset") or {}).get("bytes") or 0)
        cells[(r["workload"], int(r["nodes"]))][r["framework"]].append((size, results.dataset_name(r),
                                                                          results.total_time(r)))
    for (wl, n), fws in sorted(cells.items()):
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
        ax.set(title=f"{wl}, {n} node(s): time vs dataset size", xlabel="dataset size (MB)",
               ylabel="total time (s)")
        figs.append(_finish(fig, ax, outdir / f"time_vs_size_{wl}_{n}nodes.png",
                            f"{wl}, {n} node(s): time vs dataset size"))
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
        figs.append(_finish(fig, ax, outdir / f"quality_{wl}.png", f"{wl}: {name} per run"))
    return figs


def fig_resources(recs: list[dict], outdir: Path) -> list[dict]:
    """Peak and mean CPU / memory per node (the seed compared these from Ray's dashboard, Fig. 16-17)."""
    rows = []
    for r in recs:
        for host, u in ((r.get("resources") or {}).get("hosts") or {}).items():
            rows.append((f"{r['workload']}/{r['framework']}/{r['nodes']}n", host, u))
    if not rows:
        return []
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
    p = _save(fig, outdir / "resources.png")
    return [{"path": p.name, "title": "CPU and memory per node"}]


def build(results_dir: Path = results.RESULTS_DIR, out_dir: Path | None = None) -> dict[str, Path]:
    recs, problems = results.load_records(results_dir)
    if not recs:
        raise UserError(f"no result records under {results_dir}: run `fab run-experiment WORKLOAD --nodes N` first")
    out_dir = out_dir or (REPO_ROOT / "reports" / "latest")
    figdir = out_dir / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    for old in figdir.glob("*.png"):
        old.unlink()
    summary = results.summarise(recs)
    seed = seed_cells()
    converged = converged_cells(recs)
    for row in summary:
        key = (row["workload"], row["dataset"], row["framework"], row["nodes"])
        row["seed_time_s"] = seed.get(key)
        row["converged"] = converged.get(key, "-")
    figures = (fig_time_vs_nodes(summary, seed, figdir) + fig_time_vs_size(recs, figdir)
               + fig_quality(recs, figdir) + fig_resources(recs, figdir))
    failed = [r for r in recs if r["status"] == "failed"]
    ctx = {
        "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "n_records": len(recs), "n_failed": len(failed), "summary": summary, "figures": figures,
        "failed": failed, "problems": problems, "seed_note": SEED_NOTE, "fmt": _fmt,
        "results_dir": str(results_dir),
    }
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=jinja2.select_autoescape(["html"]),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    md = out_dir / "report.md"
    md.write_text(env.get_template("report.md.j2").render(**ctx))
    page = out_dir / "report.html"
    page.write_text(env.get_template("report.html.j2").render(**ctx, escape=html.escape))
    return {"markdown": md, "html": page, "figures": figdir}
