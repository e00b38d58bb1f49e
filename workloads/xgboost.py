"""Breast-cancer XGBoost with a max_depth grid search: plain xgboost vs Ray Train + Ray Tune.

    python -m workloads.xgboost --framework ray|reference --workers N [--output OUT.json]

Data: scikit-learn's copy of the Wisconsin Diagnostic Breast Cancer set (569 x 30, the seed's Kaggle
CSV without its leaked `id` column); label 1 = malignant, as the seed's `diagnosis`. One seeded,
stratified split into train / validation / test (60/20/20). Both frameworks train 30 boosting rounds for
every max_depth of the grid (the seed's values 1, 5, 50, 100), select the depth with the lowest
*validation* logloss (the seed sampled at random and selected on training loss), and score the chosen
model on the held-out test split.

Inside this module ``import xgboost`` is the real package: under ``python -m workloads.xgboost`` this
file is ``workloads.xgboost`` and absolute imports never look in workloads/.
"""
from __future__ import annotations

import argparse
import math
import os
import time
import uuid
from typing import Any

import numpy as np
import xgboost as xgb

from workloads import procs
from workloads.harness import cli, learning, raylaunch, runs, track
from workloads.record import UserError, run_main, timer

DEFAULT_DEPTHS = (1, 5, 50, 100)
METRIC = "valid-logloss"
MODEL_FILE = "model.ubj"


def load_split(seed: int, val_fraction: float = 0.2, test_fraction: float = 0.2) -> dict[str, tuple]:
    """{'train'|'valid'|'test': (X float32, y int)}: stratified, seeded."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    data = load_breast_cancer()
    X, y = data.data.astype(np.float32), (1 - data.target).astype(np.int64)  # sklearn: 0 = malignant
    X_rest, X_test, y_rest, y_test = train_test_split(X, y, test_size=test_fraction, stratify=y, random_state=seed)
    X_tr, X_va, y_tr, y_va = train_test_split(X_rest, y_rest, test_size=val_fraction / (1 - test_fraction),
                                              stratify=y_rest, random_state=seed)
    return {"train": (X_tr, y_tr), "valid": (X_va, y_va), "test": (X_test, y_test)}


def booster_params(max_depth: int, cfg: dict[str, Any]) -> dict[str, Any]:
    """xgboost's parameters for one depth of the grid.  (``seed`` is the booster's: with ``hist`` and no
    row or column sampling training draws no random numbers, so any seed gives the same model.)"""
    return {"objective": "binary:logistic", "eval_metric": ["logloss", "error"], "max_depth": int(max_depth),
            "eta": cfg["eta"], "tree_method": "hist", "nthread": cfg["threads"], "device": cfg["xgb_device"],
            "seed": cfg["seed"]}


def score(booster, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy and logloss of a binary booster on (X, y)."""
    from sklearn.metrics import log_loss
    p = booster.predict(xgb.DMatrix(X))
    return {"accuracy": float(((p > 0.5).astype(np.int64) == y).mean()),
            "logloss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]))}


# ------------------------------------------------------------------------------------------
# reference: plain xgboost, one process
# ------------------------------------------------------------------------------------------

def train_reference(split: dict, params: dict, rounds: int) -> tuple[Any, dict[str, list[float]]]:
    dtrain, dvalid = (xgb.DMatrix(*split[k]) for k in ("train", "valid"))
    history: dict[str, dict[str, list[float]]] = {}
    bst = xgb.train(params, dtrain, rounds, evals=[(dtrain, "train"), (dvalid, "valid")],
                    evals_result=history, verbose_eval=False)
    return bst, {f"{d}-{m}": v for d, ms in history.items() for m, v in ms.items()}


def grid_reference(split: dict, depths: list[int], cfg: dict) -> dict[str, Any]:
    trials = []
    for depth in depths:
        bst, hist = train_reference(split, booster_params(depth, cfg), cfg["rounds"])
        trials.append({"max_depth": depth, "history": hist, "booster": bst})
    best = min(trials, key=lambda t: t["history"][METRIC][-1])
    return {"trials": trials, "best": best, "booster": best["booster"]}


# ------------------------------------------------------------------------------------------
# ray: Ray Tune grid over Ray Train XGBoostTrainer runs on N workers
# ------------------------------------------------------------------------------------------

def xgb_worker(config: dict) -> None:
    """Per Ray Train worker: its shard of train/valid, distributed hist boosting via xgboost.collective.

    Evaluation metrics are all-reduced by xgboost over the workers' shards. The result is reported once,
    at the end (a Train V2 report is a synchronisation with the controller: one per round costs ~1 s
    each on a loaded 2-core machine), with the per-round history and rank 0's model as the checkpoint.
    """
    import tempfile

    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()

    def shard(name: str) -> xgb.DMatrix:  # rows rank::world of the split
        X, y = config["data"][name]
        return xgb.DMatrix(X[rank::world], label=y[rank::world])

    dtrain, dvalid = shard("train"), shard("valid")
    history: dict = {}
    bst = xgb.train(config["params"], dtrain, config["rounds"], evals=[(dtrain, "train"), (dvalid, "valid")],
                    evals_result=history, verbose_eval=False)
    hist = {f"{d}-{m}": [float(x) for x in v] for d, ms in history.items() for m, v in ms.items()}
    metrics = {METRIC: hist[METRIC][-1], "history": hist}
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            bst.save_model(os.path.join(d, MODEL_FILE))
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=checkpoint)


def tune_trial(config: dict, data: dict, cfg: dict) -> None:
    """One Tune trial = one distributed XGBoostTrainer run with this trial's max_depth."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.xgboost import XGBoostTrainer
    from ray.tune.integration.ray_train import TuneReportCallback
    params = booster_params(config["max_depth"], cfg)
    trainer = XGBoostTrainer(
        xgb_worker, train_loop_config={"params": params, "rounds": cfg["rounds"], "data": data},
        scaling_config=ScalingConfig(num_workers=cfg["workers"], use_gpu=cfg["use_gpu"],
                                     resources_per_worker={"CPU": cfg["threads"]}),
        run_config=RunConfig(storage_path=cfg["storage"], name=f"xgb-depth{config['max_depth']}-{uuid.uuid4().hex[:6]}",
                             callbacks=[TuneReportCallback()]))
    trainer.fit()


def grid_ray(split: dict, depths: list[int], cfg: dict, timeout_s: float | None = None) -> dict[str, Any]:
    from ray import tune
    cpus, gpus = raylaunch.node_resources()  # trials at once: as many trainers as the nodes hold workers for
    concurrent = max(1, raylaunch.worker_room(cfg["threads"], cpus, gpus if cfg["use_gpu"] else None) // cfg["workers"])
    trainable = tune.with_resources(tune.with_parameters(tune_trial, data={k: split[k] for k in ('train', 'valid')}, cfg=cfg), {"cpu": 0, "memory": 1 << 20})
    tuner = tune.Tuner(
        trainable, param_space={"max_depth": tune.grid_search(list(depths))},
        tune_config=tune.TuneConfig(metric=METRIC, mode="min", max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(storage_path=cfg["storage"], name=f"xgb-grid-{uuid.uuid4().hex[:6]}", verbose=0))
    grid = learning.fit_within(tuner.fit, timeout_s, f"the {len(depths)} Ray Tune trials")
    if grid.errors:
        raise RuntimeError(f"{len(grid.errors)} Ray Tune trial(s) failed: {grid.errors[0]}")
    trials = [{"max_depth": res.config["max_depth"], "history": res.metrics["history"],
               "checkpoint_path": res.metrics["checkpoint_path"]} for res in grid]
    best = min(trials, key=lambda t: t["history"][METRIC][-1])
    booster = xgb.Booster(model_file=os.path.join(best["checkpoint_path"], MODEL_FILE))
    return {"trials": trials, "best": best, "booster": booster, "concurrent_trials": concurrent,
            "experiment_dir": grid.experiment_path}


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m workloads.xgboost", description=__doc__.split("\n")[0])
    p.add_argument("--framework", choices=("ray", "reference"), required=True)
    p.add_argument("--rounds", type=int, default=30, help="boosting rounds (seed: 30)")
    p.add_argument("--depths", default=",".join(map(str, DEFAULT_DEPTHS)), help="max_depth grid (comma list)")
    p.add_argument("--eta", type=float, default=0.3, help="learning rate (xgboost default, as the seed)")
    p.add_argument("--split-seed", type=int, default=13, help="random_state of the split (the seed's baseline: 13)")
    cli.add_learning_args(p, workers="data-parallel xgboost workers of each trial")
    return p.parse_args(argv)


def parse_depths(text: str) -> list[int]:
    try:
        depths = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise UserError(f"--depths must be a comma list of integers, got {text!r}") from exc
    if not depths or min(depths) < 1:
        raise UserError(f"--depths needs integers >= 1, got {text!r}")
    if len(set(depths)) < len(depths):  # (each would be trained, and listed in the grid, twice)
        raise UserError(f"--depths lists a depth more than once, got {text!r}; give each once")
    return depths


def make_config(args: argparse.Namespace) -> dict[str, Any]:
    cli.check_positive(workers=args.workers, threads=args.threads, rounds=args.rounds, nodes=args.nodes)
    if args.framework == "reference" and args.workers != 1:
        raise UserError("--framework reference runs in one process; use --workers 1 (or --framework ray)")
    if not (math.isfinite(args.eta) and args.eta > 0):  # xgboost's own error was a trace
        raise UserError(f"--eta must be a learning rate > 0, not {args.eta:g}")
    if (wrong := cli.wrong_seed("split-seed", args.split_seed)) is not None:
        raise UserError(wrong)
    use_gpu = args.device == "cuda" or (args.device == "auto" and _torch_cuda())
    return {"workers": args.workers, "threads": cli.threads_per_worker(args),
            "rounds": args.rounds, "eta": args.eta, "depths": parse_depths(args.depths),
            "split_seed": args.split_seed, "seed": args.seed, "use_gpu": use_gpu,
            "xgb_device": "cuda" if use_gpu else "cpu"}


def _torch_cuda() -> bool:
    try:
        import torch
        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def run(args: argparse.Namespace, rec: dict, t_start: float) -> None:
    cfg = make_config(args)
    rec["params"].update({k: v for k, v in cfg.items()})
    timings = rec["timings_s"]
    with timer(timings, "load"):
        split = load_split(cfg["split_seed"])
    rec["dataset"] = {"name": "breast_cancer_wisconsin", "uri": "sklearn.datasets.load_breast_cancer",
                      "records": int(sum(len(v[1]) for v in split.values())),
                      "bytes": int(sum(v[0].nbytes + v[1].nbytes for v in split.values()))}
    if args.framework == "reference":
        learning.check_device(args.device)
        with timer(timings, "compute"):
            out = grid_reference(split, cfg["depths"], cfg)
    else:
        with timer(timings, "startup"):
            raylaunch.ray_connect(args.address, train=True, num_cpus=max(procs.usable_cpus(),
                                                                         cfg["workers"] * cfg["threads"]))
        raylaunch.check_ray_cluster(args.device, cfg["workers"], cfg["threads"], cfg["use_gpu"])
        with learning.ray_storage(args.storage) as storage, timer(timings, "compute"):
            out = grid_ray(split, cfg["depths"], {**cfg, "storage": storage}, args.timeout)
    rec["experiment_dir"] = learning.experiment_dir(args.storage, out.get("experiment_dir"))
    fill_metrics(rec, out, split, cfg)
    timings["total"] = time.time() - t_start


def fill_metrics(rec: dict, out: dict, split: dict, cfg: dict) -> None:
    test = score(out["booster"], *split["test"])
    best = out["best"]
    rec["metrics"] = {
        "accuracy": test["accuracy"], "logloss": test["logloss"],
        "best_config": {"max_depth": best["max_depth"]},
        "selected_on": METRIC,
        "loss_per_epoch": best["history"].get("train-logloss"),   # per boosting round
        "valid_logloss_per_round": best["history"].get(METRIC),
        "grid": [{"max_depth": t["max_depth"], "valid_logloss": t["history"][METRIC][-1],
                  "train_logloss": t["history"]["train-logloss"][-1]} for t in out["trials"]],
        "split_sizes": {k: int(len(v[1])) for k, v in split.items()},
    }
    if "concurrent_trials" in out:
        rec["params"]["concurrent_trials"] = out["concurrent_trials"]
    rec["verification"] = {"reference": "held-out test accuracy >= 0.93", "error": None,
                           **track.verdict(test["accuracy"] >= 0.93, f"held-out test accuracy {test['accuracy']:.3f} < 0.93")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def summary(rec: dict) -> str:
        m = rec["metrics"]
        return (f"xgboost {args.framework} workers={args.workers}: best max_depth {m['best_config']['max_depth']} "
                f"(valid logloss), test accuracy {m['accuracy']:.4f}, logloss {m['logloss']:.4f}, "
                f"total {rec['timings_s']['total']:.1f}s")

    return runs.record_run("xgboost", args, lambda rec, t0: run(args, rec, t0), summary)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
