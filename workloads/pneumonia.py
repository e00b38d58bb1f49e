"""Pneumonia chest X-ray CNN (seed 002), data-parallel under torch DDP or Ray TorchTrainer.

    python -m workloads.pneumonia --framework torch|ray --workers N [--input DIR] [--output OUT.json]

The model (`classify`) and train transforms are the seed's (Adam, 10 epochs, cross-entropy); its
comparability flaws are fixed, see docs/learning-workloads.md: the global batch is the same at every
worker count, the val split selects the epoch whose weights are tested, testing is batched and sharded,
both runtimes time the same span and use the same threads. So are its training flaws: Adam lr 3e-4 (the
seed's 0.01 blew the logits up) with the head's lr scaled by its fan-in, BatchNorm statistics recomputed
after every epoch, and val/test centre-cropped like the training images.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from workloads import procs, vision
from workloads.harness import cli, learning, raylaunch, runs, track
from workloads.record import UserError, run_main, timer

CLASSES = ("NORMAL", "PNEUMONIA")
SPLITS = ("train", "val", "test")
HEAD_LR_FAN_IN = 32 * 32 * 32  # the head's fan-in at 64 px, where --lr is the head's lr too


def classify(image_size: int = 224, num_classes: int = 2):
    """The seed's `classify` CNN; the FC input is 32 * (image_size / 2)^2 (401,408 at 224)."""
    from torch import nn
    return nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(12, 20, 3, padding=1), nn.ReLU(),
        nn.Conv2d(20, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * (image_size // 2) ** 2, num_classes),
    )


def make_optimizer(model, lr: float):
    """Adam at ``lr``, with the linear head's lr scaled by HEAD_LR_FAN_IN / fan-in above that fan-in.

    Adam moves every weight by about lr per step, so a layer's outputs move by about
    lr x fan-in x mean |input|. The head's fan-in is 32 * (image_size / 2)^2 (32,768 at 64 px, 401,408
    at 224): at one lr for all layers the logits jump by tens to thousands on the first step and the
    loss starts at 10-700 instead of ln 2. Scaling the head's lr by 1/fan-in keeps its per-step logit
    change the same at every image size.
    """
    import torch
    net = vision.unwrap(model)
    head = net[-1]
    head_ids = {id(p) for p in head.parameters()}
    body = [p for p in net.parameters() if id(p) not in head_ids]
    head_lr = lr * min(1.0, HEAD_LR_FAN_IN / head.in_features)
    return torch.optim.Adam([{"params": body, "lr": lr}, {"params": list(head.parameters()), "lr": head_lr}])


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------

def resolve_input(cfg: dict) -> str:
    """The --input tree, or the cached synthetic one (created on first use)."""
    if cfg["input"]:
        return cfg["input"]
    cache = Path(cfg["cache_dir"]) if cfg["cache_dir"] else None
    return str(vision.synthetic_pneumonia(cache, size=cfg["synthetic_size"]))


def load_data(uri: str, image_size: int) -> dict[str, vision.ImageSet]:
    """Decode every split once, resized to 256/224 x image_size; val/test are centre-cropped to
    image_size here (the eval transform), train is rotated and cropped in every epoch."""
    files = vision.scan_image_folder(uri, SPLITS, CLASSES)
    resized = vision.train_resize_size(image_size)
    data = {s: vision.load_images(uri, files[s], resized) for s in SPLITS}
    for s in ("val", "test"):
        data[s].images = vision.center_crop_batch(data[s].images, image_size)
    return data


def eval_view(data: vision.ImageSet, idx: np.ndarray, cfg: dict) -> np.ndarray:
    """Training images through the eval transform (CenterCrop, no rotation)."""
    return vision.center_crop_batch(data.images[idx], cfg["image_size"])


# ------------------------------------------------------------------------------------------
# training / evaluation (one function for both runtimes)
# ------------------------------------------------------------------------------------------

def train_epoch(model, opt, data: vision.ImageSet, cfg: dict, ctx: learning.WorkerContext, epoch: int
                ) -> tuple[float, int]:
    """One epoch of global-batch SGD; returns (mean train loss over all ranks, optimiser steps)."""
    import torch
    import torch.nn.functional as F
    model.train()
    rng = np.random.default_rng([cfg["seed"], epoch, ctx.rank, 7])
    loss_sum, count, steps = 0.0, 0, 0
    for idx in vision.rank_batches(len(data), cfg["global_batch"], ctx.rank, ctx.world, epoch, cfg["seed"]):
        x = vision.to_normalized_tensor(vision.augment_train(data.images[idx], cfg["image_size"], rng), ctx.device)
        y = torch.from_numpy(data.labels[idx]).to(ctx.device)
        loss = F.cross_entropy(model(x), y, reduction="sum")
        opt.zero_grad(set_to_none=True)
        # DDP averages gradients over ranks: scale so the result is the mean over the global batch.
        (loss * (ctx.world / cfg["global_batch"])).backward()
        opt.step()
        loss_sum += float(loss.detach())
        count += len(idx)
        steps += 1
    total_loss, total = ctx.all_sum([loss_sum, float(count)])
    return total_loss / max(total, 1.0), steps


def evaluate(model, data: vision.ImageSet, cfg: dict, ctx: learning.WorkerContext, shard: bool
             ) -> tuple[float, float]:
    """Batched (loss, accuracy); shard=True splits the set over ranks and sums the counts."""
    import torch
    import torch.nn.functional as F
    model.eval()
    idx_all = np.arange(len(data))
    if shard:
        idx_all = idx_all[ctx.rank::ctx.world]
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(idx_all), cfg["eval_batch"]):
            idx = idx_all[start:start + cfg["eval_batch"]]
            x = vision.to_normalized_tensor(data.images[idx], ctx.device)
            y = torch.from_numpy(data.labels[idx]).to(ctx.device)
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    if shard:
        loss_sum, correct = ctx.all_sum([loss_sum, float(correct)])
    return loss_sum / len(data), correct / len(data)


def recalibrate(model, data: vision.ImageSet, cfg: dict, ctx: learning.WorkerContext) -> None:
    """Precise BN (:func:`vision.recalibrate_batchnorm`) over this rank's share of the training set,
    seen through the eval transform."""
    idx_all = np.arange(ctx.rank, len(data), ctx.world)
    batches = (vision.to_normalized_tensor(eval_view(data, idx_all[s:s + cfg["eval_batch"]], cfg), ctx.device)
               for s in range(0, len(idx_all), cfg["eval_batch"]))
    vision.recalibrate_batchnorm(model, batches, ctx)


def better(val: tuple[float, float], best: tuple[float, float] | None) -> bool:
    """Higher val accuracy wins; ties go to the lower val loss."""
    return best is None or (val[1], -val[0]) > (best[1], -best[0])


def fit(model, opt, data: dict[str, vision.ImageSet], cfg: dict, ctx: learning.WorkerContext,
        timings: dict[str, float]) -> dict[str, Any]:
    """Train cfg['epochs'] epochs, keeping the weights of the best-val epoch; the timed span is the epochs."""
    hist: dict[str, list] = {"loss_per_epoch": [], "val_loss_per_epoch": [], "val_accuracy_per_epoch": [],
                             "epoch_time_s": [], "steps_per_epoch": []}
    best, best_state, best_epoch = None, None, 0
    ctx.barrier()
    t0 = time.perf_counter()
    for epoch in range(1, cfg["epochs"] + 1):
        te = time.perf_counter()
        loss, steps = train_epoch(model, opt, data["train"], cfg, ctx, epoch)
        recalibrate(model, data["train"], cfg, ctx)
        val = evaluate(model, data["val"], cfg, ctx, shard=False)  # identical on every rank
        hist["epoch_time_s"].append(time.perf_counter() - te)
        hist["loss_per_epoch"].append(loss)
        hist["steps_per_epoch"].append(steps)
        hist["val_loss_per_epoch"].append(val[0])
        hist["val_accuracy_per_epoch"].append(val[1])
        if better(val, best):
            best, best_epoch = val, epoch
            best_state = copy.deepcopy(vision.unwrap(model).state_dict())
        if ctx.rank == 0:
            print(f"[{ctx.runtime} rank0] epoch {epoch}/{cfg['epochs']} loss {loss:.4f} "
                  f"val_acc {val[1]:.3f} steps {steps} {hist['epoch_time_s'][-1]:.1f}s", flush=True)
        ctx.report({"epoch": epoch, "loss": loss, "val_accuracy": val[1], "steps": steps})
    ctx.barrier()
    timings["compute"] = time.perf_counter() - t0
    vision.unwrap(model).load_state_dict(best_state)
    hist["selected_epoch"] = best_epoch
    return hist


def train_worker(cfg: dict, ctx: learning.WorkerContext) -> dict[str, Any]:
    """The whole per-worker job, identical under torch.distributed and Ray Train."""
    import torch
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    timings: dict[str, float] = {"ready_at": ctx.started_at}
    # Resolved here, not by the driver: on a cluster the worker may sit on another node, as another
    # user; the synthetic set is seeded, so every node generates (once) the same files.
    uri = resolve_input(cfg)
    with timer(timings, "load"):
        data = load_data(uri, cfg["image_size"])
    with timer(timings, "build"):
        model = ctx.wrap_model(classify(cfg["image_size"]).to(ctx.device))
        opt = make_optimizer(model, cfg["lr"])
    hist = fit(model, opt, data, cfg, ctx, timings)
    with timer(timings, "test"):
        test_loss, test_acc = evaluate(model, data["test"], cfg, ctx, shard=True)
    result = {**hist, "accuracy": test_acc, "test_loss": test_loss, "timings": timings,
              "threads": torch.get_num_threads(), "device": str(ctx.device),
              "records": {s: len(d) for s, d in data.items()},
              "test_class_counts": np.bincount(data["test"].labels, minlength=2).tolist()}
    return result


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m workloads.pneumonia", description=__doc__.split("\n")[0])
    p.add_argument("--framework", choices=("torch", "ray"), required=True)
    p.add_argument("--input", help="ImageFolder root train|val|test/NORMAL|PNEUMONIA (local path or hdfs://); "
                                   "default: a cached synthetic set")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--global-batch", type=int, default=64,
                   help="samples per optimiser step over all workers (seed: 64 per worker on 1 node); "
                        "each worker takes global/N")
    p.add_argument("--lr", type=float, default=3e-4,
                   help="Adam lr (seed: 0.01, which makes the logits explode); the head's is scaled down "
                        "above 64 px, see make_optimizer")
    p.add_argument("--image-size", type=int, default=224, help="seed: 224; tests use 64")
    p.add_argument("--eval-batch", type=int, default=128)
    p.add_argument("--synthetic-size", type=int, default=128, help="pixel size of generated images")
    p.add_argument("--cache-dir", help="where the synthetic set is cached (default $SCALELAB_CACHE or ~/.cache/scalelab)")
    cli.add_learning_args(p)
    return p.parse_args(argv)


def make_config(args: argparse.Namespace) -> dict[str, Any]:
    cli.check_positive(workers=args.workers, threads=args.threads, epochs=args.epochs,
                       global_batch=args.global_batch, image_size=args.image_size,
                       eval_batch=args.eval_batch, nodes=args.nodes, synthetic_size=args.synthetic_size)
    if args.global_batch < args.workers:
        raise UserError(f"--global-batch {args.global_batch} is smaller than --workers {args.workers}; "
                        "every worker needs at least one sample per step")
    if not (math.isfinite(args.lr) and args.lr > 0):  # Adam takes any: -1 trained away, nan gave nan losses
        raise UserError(f"--lr must be a learning rate > 0, not {args.lr:g}")
    if args.image_size % 2:
        raise UserError(f"--image-size must be even (the model pools by 2), got {args.image_size}")
    cfg = {k: getattr(args, k) for k in ("epochs", "global_batch", "lr", "image_size", "eval_batch",
                                         "synthetic_size", "cache_dir", "input", "device", "seed")}
    cfg["threads"] = cli.threads_per_worker(args)
    cfg["input_resolved"] = resolve_input(cfg)
    return cfg


def dataset_info(cfg: dict) -> dict[str, Any]:
    files = vision.scan_image_folder(cfg["input_resolved"], SPLITS, CLASSES)
    if cfg["global_batch"] > len(files["train"]):  # every epoch would take no step, and the run say ok
        raise UserError(f"--global-batch {cfg['global_batch']} is larger than the {len(files['train'])} training "
                        f"images: give at most {len(files['train'])}")
    all_files = [f for s in SPLITS for f, _ in files[s]]
    name = "chest_xray" if cfg["input"] else "chest_xray-synthetic"
    return {"name": name, "uri": cfg["input_resolved"], "records": len(all_files),
            "bytes": vision.dataset_bytes(cfg["input_resolved"], all_files)}


def run(args: argparse.Namespace, rec: dict, t_start: float) -> dict[str, Any] | None:
    cfg = make_config(args)
    rec["params"].update({k: v for k, v in cfg.items() if k != "input_resolved"})
    rec["dataset"] = dataset_info(cfg)
    if args.framework == "torch":
        learning.check_device(args.device)
        result = learning.launch_torch(train_worker, cfg, args.workers, args.timeout)
    else:
        result = run_ray(args, cfg)
        rec["experiment_dir"] = learning.experiment_dir(args.storage, result.pop("experiment_dir", None))
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    return result


def run_ray(args: argparse.Namespace, cfg: dict) -> dict[str, Any]:
    raylaunch.ray_connect(args.address, train=True, num_cpus=max(procs.usable_cpus(), args.workers * cfg["threads"]))
    use_gpu = args.device == "cuda" or (args.device == "auto" and raylaunch.ray_has_gpu())
    raylaunch.check_ray_cluster(args.device, args.workers, cfg["threads"], use_gpu)
    cfg = {**cfg, "device": "auto"}  # Ray picks the worker's device from use_gpu
    with learning.ray_storage(args.storage) as storage:
        return learning.launch_ray_torch(train_worker, cfg, args.workers, cfg["threads"], use_gpu,
                                         storage, f"pneumonia-{int(time.time())}", args.timeout)


def fill_record(rec: dict, result: dict, t_start: float) -> None:
    t = result["timings"]
    rec["timings_s"] = {"startup": max(0.0, t["ready_at"] - t_start), "load": t["load"], "build": t["build"],
                        "compute": t["compute"], "test": t["test"], "total": time.time() - t_start}
    keys = ("accuracy", "test_loss", "loss_per_epoch", "val_loss_per_epoch", "val_accuracy_per_epoch",
            "epoch_time_s", "steps_per_epoch", "selected_epoch", "records", "test_class_counts")
    rec["metrics"] = {k: result[k] for k in keys}
    majority = max(result["test_class_counts"]) / sum(result["test_class_counts"])
    rec["metrics"]["majority_baseline"] = majority
    rec["params"]["threads_per_worker"] = result["threads"]
    rec["params"]["device"] = result["device"]
    rec["params"]["per_worker_batch"] = [len(b) for b in np.array_split(np.arange(rec["params"]["global_batch"]),
                                                                        rec["workers"])]
    rec["verification"] = {"reference": "test accuracy vs always-majority-class baseline",
                           "error": None, **track.verdict(result["accuracy"] > majority,
                                                          f"test accuracy {result['accuracy']:.3f} <= the majority "
                                                         f"class's share {majority:.3f}")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body(rec: dict, t_start: float) -> bool:
        result = run(args, rec, t_start)
        if result is None:
            return False
        fill_record(rec, result, t_start)
        return True

    def summary(rec: dict) -> str:
        m = rec["metrics"]
        return (f"pneumonia {args.framework} workers={args.workers}: accuracy {m['accuracy']:.4f} "
                f"(majority {m['majority_baseline']:.3f}), steps/epoch {m['steps_per_epoch'][0]}, "
                f"train {rec['timings_s']['compute']:.1f}s, total {rec['timings_s']['total']:.1f}s")

    return runs.record_run("pneumonia", args, body, summary)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
