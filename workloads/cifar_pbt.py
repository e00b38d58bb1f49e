"""CIFAR-10 CNN tuned with Ray Tune Population Based Training, plus a single-run baseline.

    python -m workloads.cifar_pbt --framework ray --workers N --trials T [--input DIR] [--output OUT.json]

The second seed (omiii2013/Ray-Framework) ran Ray's Keras PBT example on 128 images with only dropout
mutated, and a `reset_config` bug kept even that from taking effect: it stayed at chance (0.109). Here:
a PyTorch CNN trained on the whole training split; lr, dropout and batch size are mutated, and every
exploit restarts the trial from the donor's checkpoint with the model rebuilt from the new config.
Checkpoints are kept (num_to_keep=None) because PBT clones donors from them. Trials are selected on a
validation split carved from the training batches; the chosen model is scored on `test_batch`.
`--workers N` = trials that run at once (each one process of `--threads` CPUs).
"""
from __future__ import annotations

import argparse
import pickle
import random
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from workloads import vision
from workloads.harness import cli, learning, raylaunch, runs, track
from workloads.record import UserError, run_main, timer

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
BATCH_SIZES = (32, 64, 128, 256)
BASELINE = {"lr": 1e-3, "dropout": 0.25, "batch_size": 64}


# ------------------------------------------------------------------------------------------
# data: the CIFAR-10 python batches format
# ------------------------------------------------------------------------------------------

def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 NHWC images, int64 labels) from one pickled CIFAR-10 python batch."""
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
        data = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(d["labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"--input: {path} is not a CIFAR-10 python batch ({type(exc).__name__}: {exc}); "
                        "give the cifar-10-batches-py directory") from None
    if len(labels) != len(data):
        raise UserError(f"--input: {path} holds {len(data)} images and {len(labels)} labels; "
                        "not a CIFAR-10 batch")
    return np.ascontiguousarray(data), labels


def write_batch(path: Path, images: np.ndarray, labels: np.ndarray, name: str) -> None:
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": name.encode(), b"labels": [int(x) for x in labels], b"data": rows,
                     b"filenames": [f"synthetic_{name}_{i}.png".encode() for i in range(len(labels))]}, f, protocol=2)


def load_cifar(root: str, val_fraction: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train'|'val'|'test': (images, labels)}; val = the last val_fraction of the training batches."""
    d = Path(root)
    if not d.is_dir():
        raise UserError(f"--input {root} is not a directory; give the cifar-10-batches-py directory")
    missing = [n for n in (*TRAIN_FILES, "test_batch") if not (d / n).is_file()]
    if missing:
        raise UserError(f"--input {root} lacks {', '.join(missing)}; expected the CIFAR-10 python batches "
                        "(data_batch_1..5, test_batch, batches.meta)")
    parts = [read_batch(d / n) for n in TRAIN_FILES]
    X, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    n_val = int(round(len(y) * val_fraction))
    if not 0 < n_val < len(y):  # X[:-0] is empty: a run that trained on nothing said ok
        raise UserError(f"--val-fraction {val_fraction:g} of {len(y)} training images leaves {n_val} to validate "
                        f"and {len(y) - n_val} to train on: give a fraction that leaves both")
    return {"train": (X[:-n_val], y[:-n_val]), "val": (X[-n_val:], y[-n_val:]), "test": read_batch(d / "test_batch")}


def synthetic_image(label: int, rng: np.random.Generator) -> np.ndarray:
    """32x32 RGB: class = one of 5 hues x stripe direction (horizontal/vertical), under heavy noise."""
    palette = np.array([[0.9, 0.2, 0.2], [0.2, 0.8, 0.2], [0.2, 0.3, 0.9], [0.9, 0.8, 0.2], [0.7, 0.2, 0.8]])
    color = palette[label % 5] * rng.uniform(0.6, 1.0)
    coords = np.arange(32, dtype=np.float32)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * coords / rng.uniform(5, 9) + rng.uniform(0, 2 * np.pi))
    pattern = np.tile(wave[:, None], (1, 32)) if label < 5 else np.tile(wave[None, :], (32, 1))
    img = 0.25 + 0.5 * pattern[..., None] * color[None, None, :] + 0.35 * rng.standard_normal((32, 32, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def synthetic_cifar(cache_dir: Path | None = None, per_batch: int = 400, test: int = 1000, seed: int = 0) -> Path:
    """Create (once) a synthetic set in the CIFAR-10 python format; returns its directory."""
    root = (cache_dir or vision.default_cache_dir()) / f"cifar10-synthetic-v1-{per_batch}x5-{test}-s{seed}"

    def make(tmp: Path) -> None:
        rng = np.random.default_rng(seed)
        for name, n in [*((f, per_batch) for f in TRAIN_FILES), ("test_batch", test)]:
            labels = rng.integers(0, 10, n)
            write_batch(tmp / name, np.stack([synthetic_image(int(c), rng) for c in labels]), labels, name)
        with open(tmp / "batches.meta", "wb") as f:
            pickle.dump({b"label_names": [n.encode() for n in LABEL_NAMES], b"num_cases_per_batch": per_batch,
                         b"num_vis": 3072}, f, protocol=2)
    return vision.build_once(root, make)


# ------------------------------------------------------------------------------------------
# model and training (shared by the PBT trials and the baseline)
# ------------------------------------------------------------------------------------------

def cifar_net(dropout: float):
    from torch import nn

    def block(cin: int, cout: int) -> list:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*block(3, 16), *block(16, 16), nn.MaxPool2d(2), *block(16, 32), *block(32, 32),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(dropout), nn.Linear(32 * 8 * 8, 128), nn.ReLU(),
                         nn.Dropout(dropout), nn.Linear(128, 10))


def to_tensor(images: np.ndarray):
    import torch
    t = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (t - mean) / std


def augment(x, rng: np.random.Generator):
    """Random crop (pad 4) + horizontal flip, on a normalised NCHW batch."""
    import torch
    import torch.nn.functional as F
    n = x.shape[0]
    padded = F.pad(x, (4, 4, 4, 4))
    dy, dx = rng.integers(0, 9, 2)
    x = padded[:, :, dy:dy + 32, dx:dx + 32]
    flip = torch.from_numpy(rng.random(n) < 0.5)
    return torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)


def train_epoch(model, opt, data: tuple, batch_size: int, rng: np.random.Generator) -> float:
    import torch
    import torch.nn.functional as F
    model.train()
    X, y = data
    perm = rng.permutation(len(y))
    total = 0.0
    for s in range(0, len(perm) - batch_size + 1, batch_size):
        idx = perm[s:s + batch_size]
        xb, yb = augment(to_tensor(X[idx]), rng), torch.from_numpy(y[idx])
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
    return total / max(1, (len(perm) // batch_size) * batch_size)


def recalibrate(model, data: tuple, batch: int = 500) -> None:
    """Precise BN over the training images, un-augmented (:func:`vision.recalibrate_batchnorm`)."""
    X = data[0]
    vision.recalibrate_batchnorm(model, (to_tensor(X[s:s + batch]) for s in range(0, len(X), batch)))


def evaluate(model, data: tuple, batch: int = 500) -> tuple[float, float]:
    """Batched (loss, accuracy)."""
    import torch
    import torch.nn.functional as F
    model.eval()
    X, y = data
    loss, correct = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(y), batch):
            logits = model(to_tensor(X[s:s + batch]))
            yb = torch.from_numpy(y[s:s + batch])
            loss += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
    return loss / len(y), correct / len(y)


def build(config: dict, state: dict | None = None):
    """Model + Adam for a config; with a (donor) state, load it and then apply the config's lr."""
    import torch
    model = cifar_net(config["dropout"])
    opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        for g in opt.param_groups:
            g["lr"] = config["lr"]
    return model, opt


def pbt_trial(config: dict, data: dict, cfg: dict) -> None:
    """One PBT member (Ray Tune function trainable): resumes from its (or its donor's) checkpoint.

    The checkpoint carries the model's history, one entry per epoch that trained it (a donor's epochs
    come with its weights), so the best model's curve is read from its checkpoint, not from Ray's
    per-trial result files: on the lab, a trial that PBT paused and resumed once had its
    ``result.json`` copied back from a stale upload, empty, and the record lost its curve."""
    import torch
    from ray import tune
    torch.set_num_threads(cfg["threads"])
    state, epoch = None, 0
    history: dict[str, list[float]] = {"train_loss": [], "val_accuracy": []}
    ckpt = tune.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", weights_only=False)
        epoch, history = state["epoch"], state["history"]
    torch.manual_seed(cfg["seed"] + epoch)
    model, opt = build(config, state)
    rng = np.random.default_rng([cfg["seed"], epoch, int(config["batch_size"])])
    while epoch < cfg["epochs"]:
        train_loss = train_epoch(model, opt, data["train"], int(config["batch_size"]), rng)
        recalibrate(model, data["train"])
        val_loss, val_acc = evaluate(model, data["val"])
        epoch += 1
        history["train_loss"].append(train_loss)  # (torch.save below writes it out as it stands)
        history["val_accuracy"].append(val_acc)
        with tempfile.TemporaryDirectory() as d:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch, "history": history},
                       Path(d) / "state.pt")
            tune.report({"val_accuracy": val_acc, "val_loss": val_loss, "train_loss": train_loss, "epoch": epoch,
                         "lr": config["lr"], "dropout": config["dropout"], "batch_size": config["batch_size"]},
                        checkpoint=tune.Checkpoint.from_directory(d))


def run_baseline(data: dict, cfg: dict) -> dict[str, Any]:
    """The single run: the baseline config for the same epochs, one process, no Ray."""
    import torch
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    model, opt = build(BASELINE)
    rng = np.random.default_rng([cfg["seed"], 0, BASELINE["batch_size"]])
    losses, val_accs = [], []
    for _ in range(cfg["epochs"]):
        losses.append(train_epoch(model, opt, data["train"], BASELINE["batch_size"], rng))
        recalibrate(model, data["train"])
        val_accs.append(evaluate(model, data["val"])[1])
    test_loss, test_acc = evaluate(model, data["test"])
    return {"accuracy": test_acc, "test_loss": test_loss, "loss_per_epoch": losses,
            "val_accuracy_per_epoch": val_accs, "config": BASELINE}


# ------------------------------------------------------------------------------------------
# Ray Tune PBT
# ------------------------------------------------------------------------------------------

def search_space() -> dict[str, Any]:
    from ray import tune
    return {"lr": tune.loguniform(1e-4, 1e-2), "dropout": tune.uniform(0.0, 0.5),
            "batch_size": tune.choice(list(BATCH_SIZES))}


def run_pbt(data: dict, cfg: dict, storage: str, timeout_s: float | None = None) -> dict[str, Any]:
    import torch
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining
    random.seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    pbt = PopulationBasedTraining(
        time_attr="training_iteration", perturbation_interval=cfg["perturbation_interval"],
        hyperparam_mutations={"lr": tune.loguniform(1e-4, 1e-2), "dropout": tune.uniform(0.0, 0.5),
                              "batch_size": list(BATCH_SIZES)},
        quantile_fraction=0.25, synch=False)
    resources = {"cpu": cfg["threads"], "gpu": 1 if cfg["use_gpu"] else 0}
    trainable = tune.with_resources(tune.with_parameters(pbt_trial, data=data, cfg=cfg), resources)
    tuner = tune.Tuner(
        trainable, param_space=search_space(),
        tune_config=tune.TuneConfig(metric="val_accuracy", mode="max", scheduler=pbt, num_samples=cfg["trials"],
                                    # (the generator's own limit: Tune ignores max_concurrent_trials beside one)
                                    search_alg=tune.search.BasicVariantGenerator(random_state=cfg["seed"],
                                                                                 max_concurrent=cfg["workers"])),
        run_config=tune.RunConfig(storage_path=storage, name=f"cifar-pbt-{uuid.uuid4().hex[:6]}", verbose=1,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=None)))
    grid = learning.fit_within(tuner.fit, timeout_s, f"the {cfg['trials']} PBT trials")
    if grid.errors:
        raise RuntimeError(f"{len(grid.errors)} of {cfg['trials']} PBT trials failed: {grid.errors[0]}")
    best = grid.get_best_result(metric="val_accuracy", mode="max", scope="last")
    with best.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / "state.pt", weights_only=False)
    model, _ = build(best.config, state)
    test_loss, test_acc = evaluate(model, data["test"])
    return {"experiment_dir": grid.experiment_path,
            "accuracy": test_acc, "test_loss": test_loss, "best_config": dict(best.config),
            "best_val_accuracy": best.metrics["val_accuracy"], "loss_per_epoch": state["history"]["train_loss"],
            "val_accuracy_per_epoch": state["history"]["val_accuracy"],
            "trials": [{"config": dict(r.config), "val_accuracy": r.metrics.get("val_accuracy"),
                        "epochs": r.metrics.get("epoch"), "node_ip": r.metrics.get("node_ip")} for r in grid]}


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m workloads.cifar_pbt", description=__doc__.split("\n")[0])
    p.add_argument("--framework", choices=("ray",), required=True)
    p.add_argument("--input", help="cifar-10-batches-py directory (default: a cached synthetic set in that format)")
    p.add_argument("--trials", type=int, default=16, help="PBT population (seed: 16)")
    p.add_argument("--epochs", type=int, default=10, help="training iterations (epochs) per trial and for the baseline")
    p.add_argument("--perturbation-interval", type=int, default=2, help="epochs between PBT exploit/explore steps")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--no-baseline", action="store_true", help="skip the single-run baseline")
    p.add_argument("--cache-dir", help="where the synthetic set is cached (default $SCALELAB_CACHE or ~/.cache/scalelab)")
    cli.add_learning_args(p, workers="trials that train at once", each="trial")
    return p.parse_args(argv)


def make_config(args: argparse.Namespace) -> dict[str, Any]:
    cli.check_positive(workers=args.workers, threads=args.threads, trials=args.trials, epochs=args.epochs,
                       perturbation_interval=args.perturbation_interval, nodes=args.nodes)
    if args.perturbation_interval >= args.epochs:  # Tune would run it: a random search recorded as PBT
        raise UserError(f"--perturbation-interval {args.perturbation_interval} is not below --epochs "
                        f"{args.epochs}: no trial would ever exploit or explore; give one below --epochs")
    if not 0 < args.val_fraction < 1:
        raise UserError(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    src = args.input or str(synthetic_cifar(Path(args.cache_dir) if args.cache_dir else None))
    use_gpu = args.device == "cuda" or (args.device == "auto" and learning.pick_device("auto").type == "cuda")
    return {"input": src, "trials": args.trials, "epochs": args.epochs, "workers": args.workers,
            "threads": cli.threads_per_worker(args), "seed": args.seed,
            "perturbation_interval": args.perturbation_interval, "val_fraction": args.val_fraction,
            "use_gpu": use_gpu}


def run(args: argparse.Namespace, rec: dict, t_start: float) -> None:
    cfg = make_config(args)
    rec["params"].update(cfg)
    timings = rec["timings_s"]
    with timer(timings, "load"):
        data = load_cifar(cfg["input"], cfg["val_fraction"])
    rec["dataset"] = {"name": "cifar10" if args.input else "cifar10-synthetic", "uri": cfg["input"],
                      "records": int(sum(len(v[1]) for v in data.values())),
                      "bytes": int(sum(f.stat().st_size for f in Path(cfg["input"]).iterdir() if f.is_file()))}
    with timer(timings, "startup"):
        raylaunch.ray_connect(args.address, train=True, num_cpus=cfg["workers"] * cfg["threads"])
    raylaunch.check_ray_cluster(args.device, 1, cfg["threads"], cfg["use_gpu"], unit="trial")  # the rest queue
    with learning.ray_storage(args.storage) as storage, timer(timings, "compute"):
        tuned = run_pbt(data, cfg, storage, args.timeout)
    rec["experiment_dir"] = learning.experiment_dir(args.storage, tuned.pop("experiment_dir"))
    baseline = None
    if not args.no_baseline:
        with timer(timings, "baseline"):
            baseline = run_baseline(data, cfg)
    rec["metrics"] = {**tuned, "baseline": baseline, "chance": 0.1,
                      "split_sizes": {k: int(len(v[1])) for k, v in data.items()}}
    rec["verification"] = {"reference": "test accuracy above 0.2 (chance: 0.1)",
                           "error": None, **track.verdict(tuned["accuracy"] > 0.2,
                                                          f"test accuracy {tuned['accuracy']:.3f} <= 0.2 (chance 0.1)")}
    timings["total"] = time.time() - t_start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def summary(rec: dict) -> str:
        m = rec["metrics"]
        base = f", baseline {m['baseline']['accuracy']:.4f}" if m["baseline"] else ""
        return (f"cifar_pbt ray trials={args.trials}: test accuracy {m['accuracy']:.4f}{base} (chance 0.1), "
                f"best config {m['best_config']}, total {rec['timings_s']['total']:.1f}s")

    return runs.record_run("cifar-pbt", args, lambda rec, t0: run(args, rec, t0), summary)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
