"""Fast checks of the learning workloads' pieces: transforms, global batches, data formats, CLI errors."""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from workloads import cifar_pbt, pneumonia, procs, record, vision
from workloads import xgboost as xgb_workload
from workloads.harness import cli, learning, raylaunch

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


def run_module(module: str, *args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


# ---------------------------------------------------------------- transforms ---------------

def test_center_crop_takes_the_middle():
    arr = np.arange(10 * 10).reshape(10, 10, 1)
    out = vision.center_crop(arr, 4)
    assert out.shape == (4, 4, 1) and out[0, 0, 0] == 33


def test_rotation_keeps_size_and_fills_black():
    from PIL import Image
    img = Image.fromarray(np.full((40, 40, 3), 255, np.uint8))
    seed = next(s for s in range(100) if abs(np.random.default_rng(s).uniform(-20, 20)) > 10)
    out = np.asarray(vision.random_rotation(img, 20, np.random.default_rng(seed)))
    assert out.shape == (40, 40, 3)
    assert out[0, 0].sum() == 0 or out[0, -1].sum() == 0   # a rotated corner is filled with 0
    assert out[20, 20].tolist() == [255, 255, 255]


def test_normalize_uses_imagenet_stats():
    batch = np.full((1, 2, 2, 3), 255, np.uint8)
    t = vision.to_normalized_tensor(batch)
    assert t.shape == (1, 3, 2, 2) and t.is_contiguous()
    expected = [(1 - m) / s for m, s in zip(vision.IMAGENET_MEAN, vision.IMAGENET_STD, strict=True)]
    assert t[0, :, 0, 0].tolist() == pytest.approx(expected, rel=1e-5)


def test_train_resize_keeps_the_seeds_ratio():
    assert vision.train_resize_size(224) == 256
    assert vision.train_resize_size(64) == 73


def test_seed_model_shape_and_size():
    import torch
    model = pneumonia.classify(224)
    assert sum(p.numel() for p in model.parameters()) == 811_214   # the audit's "about 811k"
    assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 2)
    assert pneumonia.classify(64)(torch.zeros(1, 3, 64, 64)).shape == (1, 2)


def test_head_lr_scales_down_with_the_heads_fan_in():
    at64 = pneumonia.make_optimizer(pneumonia.classify(64), 3e-4)
    assert [g["lr"] for g in at64.param_groups] == [3e-4, 3e-4]             # 64 px: the reference fan-in
    at224 = pneumonia.make_optimizer(pneumonia.classify(224), 3e-4)
    body, head = at224.param_groups
    assert body["lr"] == 3e-4 and head["lr"] == pytest.approx(3e-4 * 32_768 / 401_408)
    assert sum(p.numel() for g in at224.param_groups for p in g["params"]) == 811_214   # every weight once


def test_recalibrated_batchnorm_describes_the_current_weights():
    """Stale running statistics are replaced by the batches' (cumulative, not EMA) statistics; the
    layer's momentum and the model's mode are left as they were."""
    import torch
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    bn = model[1]
    bn.running_mean.fill_(100.0)
    bn.running_var.fill_(1e-3)
    model.eval()
    batches = [torch.randn(8, 3, 5, 5) * 2 + 1 for _ in range(3)]
    ctx = learning.WorkerContext(0, 1, torch.device("cpu"), "torch", lambda m: m, lambda _m: None)
    vision.recalibrate_batchnorm(model, iter(batches), ctx)
    with torch.no_grad():
        feats = [model[0](x) for x in batches]
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.transpose(0, 1).reshape(4, -1).var(1) for f in feats]).mean(0)
    assert torch.allclose(bn.running_mean, mean, atol=1e-5) and torch.allclose(bn.running_var, var, rtol=1e-4)
    assert bn.momentum == 0.1 and not model.training


def test_val_and_test_are_centre_cropped_like_the_training_images(tmp_path):
    counts = {"train": (2, 2), "val": (1, 1), "test": (1, 1)}
    root = vision.synthetic_pneumonia(tmp_path, size=32, counts=counts)
    data = pneumonia.load_data(str(root), 32)
    assert data["train"].images.shape[1:3] == (37, 37)                     # rotated + cropped per epoch
    assert data["val"].images.shape[1:3] == data["test"].images.shape[1:3] == (32, 32)
    full = vision.load_images(str(root), vision.scan_image_folder(str(root), pneumonia.SPLITS,
                                                                  pneumonia.CLASSES)["test"], 37)
    assert np.array_equal(data["test"].images, vision.center_crop_batch(full.images, 32))


# ---------------------------------------------------------------- global batches -----------

@pytest.mark.parametrize("world", [1, 2, 3])
def test_global_batches_are_identical_at_every_world_size(world):
    n, g = 1043, 64
    one = list(vision.rank_batches(n, g, 0, 1, epoch=3, seed=0))
    parts = [list(vision.rank_batches(n, g, r, world, epoch=3, seed=0)) for r in range(world)]
    assert all(len(p) == n // g == 16 for p in parts)                       # same optimiser steps
    for step, full in enumerate(one):
        merged = np.concatenate([parts[r][step] for r in range(world)])
        assert merged.tolist() == full.tolist()                            # same samples per step
    sizes = {len(parts[r][0]) for r in range(world)}
    assert max(sizes) - min(sizes) <= 1 and sum(len(parts[r][0]) for r in range(world)) == g


def test_epochs_reshuffle():
    a = next(vision.rank_batches(100, 10, 0, 1, epoch=1, seed=0))
    b = next(vision.rank_batches(100, 10, 0, 1, epoch=2, seed=0))
    assert a.tolist() != b.tolist()


# ---------------------------------------------------------------- data formats -------------

def test_synthetic_pneumonia_tree_and_balance(tmp_path):
    counts = {"train": (5, 7), "val": (2, 2), "test": (234, 390)}
    root = vision.synthetic_pneumonia(tmp_path, size=32, counts=counts)
    files = vision.scan_image_folder(str(root), pneumonia.SPLITS, pneumonia.CLASSES)
    labels = np.array([lab for _, lab in files["test"]])
    assert (labels == 0).sum() == 234 and (labels == 1).sum() == 390
    assert (labels == 1).mean() == pytest.approx(0.625)
    assert len(files["train"]) == 12 and len(files["val"]) == 4
    assert vision.synthetic_pneumonia(tmp_path, size=32, counts=counts) == root     # cached
    data = vision.load_images(str(root), files["val"], 16)
    assert data.images.shape == (4, 16, 16, 3) and data.images.dtype == np.uint8


def test_build_once_is_atomic_shared_and_readable_by_all(tmp_path):
    """Concurrent builders end with one complete tree, world-readable (a Ray driver and its workers may
    be different users); a failed build leaves nothing half-made and raises."""
    from concurrent.futures import ThreadPoolExecutor
    calls = []

    def make(d: Path) -> None:
        calls.append(d)
        (d / "sub").mkdir()
        (d / "sub" / "x").write_text("1")

    root = tmp_path / "set"
    with ThreadPoolExecutor(4) as pool:
        roots = list(pool.map(lambda _: vision.build_once(root, make), range(4)))
    assert set(roots) == {root} and (root / ".complete").exists() and (root / "sub" / "x").read_text() == "1"
    assert root.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]           # no temp dirs left
    n = len(calls)
    assert vision.build_once(root, make) == root and len(calls) == n         # cached: not rebuilt

    def broken(d: Path) -> None:
        (d / "half").write_text("")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        vision.build_once(tmp_path / "bad", broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_wrong_tree_layout_is_a_user_error(tmp_path):
    (tmp_path / "train" / "NORMAL").mkdir(parents=True)
    with pytest.raises(vision.UserError, match="PNEUMONIA"):
        vision.scan_image_folder(str(tmp_path), pneumonia.SPLITS, pneumonia.CLASSES)


def test_cifar_batches_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 7)
    cifar_pbt.write_batch(tmp_path / "b", images, labels, "b")
    back, lab = cifar_pbt.read_batch(tmp_path / "b")
    assert np.array_equal(back, images) and lab.tolist() == labels.tolist()


def test_synthetic_cifar_is_in_the_real_format(tmp_path):
    import pickle
    root = cifar_pbt.synthetic_cifar(tmp_path, per_batch=20, test=30)
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == sorted(
        [*cifar_pbt.TRAIN_FILES, "test_batch", "batches.meta"])
    with open(root / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert raw[b"data"].shape == (20, 3072) and raw[b"data"].dtype == np.uint8 and len(raw[b"labels"]) == 20
    data = cifar_pbt.load_cifar(str(root), 0.1)
    assert [len(data[k][1]) for k in ("train", "val", "test")] == [90, 10, 30]


def test_breast_cancer_split_has_no_id_column():
    split = xgb_workload.load_split(13)
    assert split["train"][0].shape[1] == 30
    assert sum(len(v[1]) for v in split.values()) == 569
    assert [len(split[k][1]) for k in ("train", "valid", "test")] == [341, 114, 114]
    assert split["test"][1].mean() == pytest.approx(212 / 569, abs=0.01)   # 212 malignant = label 1


def test_xgboost_seed_is_the_boosters():
    """--seed reaches xgboost (it was fixed at 0 whatever --seed said)."""
    cfg = xgb_workload.make_config(xgb_workload.parse_args(["--framework", "reference", "--seed", "7"]))
    params = xgb_workload.booster_params(3, cfg)
    assert params["seed"] == 7 and params["max_depth"] == 3 and params["eta"] == cfg["eta"]


# ---------------------------------------------------------------- CLI errors ---------------

@pytest.mark.parametrize("module,args,needle", [
    ("workloads.pneumonia", ["--framework", "torch", "--input", "/nonexistent/xray"], "not a directory"),
    ("workloads.pneumonia", ["--framework", "ray", "--workers", "0"], "--workers must be >= 1"),
    ("workloads.xgboost", ["--framework", "ray", "--workers", "0"], "--workers must be >= 1"),
    ("workloads.xgboost", ["--framework", "reference", "--depths", "a,b"], "--depths"),
    ("workloads.xgboost", ["--framework", "reference", "--depths", "5,5,1"],
     "--depths lists a depth more than once"),
    ("workloads.cifar_pbt", ["--framework", "ray", "--input", "/nonexistent/cifar"], "not a directory"),
    ("workloads.cifar_pbt", ["--framework", "ray", "--trials", "0"], "--trials must be >= 1"),
    # (these used to start the workers and fail them, crash after Ray started, or end in a trace)
    ("workloads.pneumonia", ["--framework", "torch", "--timeout", "0"], "--timeout must be a number of seconds > 0"),
    ("workloads.xgboost", ["--framework", "ray", "--timeout", "nan"], "--timeout must be a number of seconds > 0"),
    ("workloads.pneumonia", ["--framework", "torch", "--seed", "-1"], "--seed must be in 0..4294967295"),
    ("workloads.pneumonia", ["--framework", "torch", "--global-batch", "100000"], "--global-batch 100000 is larger than"),
    ("workloads.pneumonia", ["--framework", "torch", "--synthetic-size", "0"], "--synthetic-size must be >= 1"),
    ("workloads.xgboost", ["--framework", "reference", "--eta", "nan"], "--eta must be a learning rate > 0, not nan"),
    ("workloads.xgboost", ["--framework", "reference", "--split-seed", "-1"], "--split-seed must be in 0..4294967295"),
    # (an empty training split trained on nothing and said ok)
    ("workloads.cifar_pbt", ["--framework", "ray", "--val-fraction", "0.0001"], "leaves 0 to validate"),
    # (any count was taken: thousands of threads per rank, or a local Ray with CPUs it does not have)
    ("workloads.pneumonia", ["--framework", "torch", "--threads", "4096"],
     f"--threads 4096 is more than the {procs.usable_cpus()} CPU(s) this machine lets the run use; "
     f"use --threads {procs.usable_cpus()} or fewer"),
    ("workloads.cifar_pbt", ["--framework", "ray", "--threads", "4096"], "--threads 4096 is more than the"),
    ("workloads.xgboost", ["--framework", "reference", "--threads", "4096"], "--threads 4096 is more than"),
    # (Adam takes any lr: -1 trained away from the optimum and said ok, nan said ok with nan losses)
    ("workloads.pneumonia", ["--framework", "torch", "--lr", "-1"],
     "--lr must be a learning rate > 0, not -1"),
    ("workloads.pneumonia", ["--framework", "torch", "--lr", "nan"],
     "--lr must be a learning rate > 0, not nan"),
    # (a random search recorded as PBT)
    ("workloads.cifar_pbt", ["--framework", "ray", "--epochs", "2", "--perturbation-interval", "2"],
     "--perturbation-interval 2 is not below --epochs 2: no trial would ever exploit or explore"),
    # (an ok record that said nodes 2, workers 1)
    ("workloads.xgboost", ["--framework", "reference", "--nodes", "2"], "--nodes 2 is more than --workers 1"),
])
def test_user_errors_are_one_line_exit_2_and_a_failed_record(tmp_path, module, args, needle):
    out = tmp_path / "rec.json"
    proc = run_module(module, *args, "--output", str(out), env={"SCALELAB_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    rec = json.loads(out.read_text())
    assert rec["status"] == "failed" and needle in rec["error"]


@pytest.mark.parametrize("workers, threads, cpus, gpus, message", [
    (2, 2, [4], None, None),
    (2, 2, [4, 4], [1, 1], None),
    (2, 1, [8, 8], [1, 0], "--workers 2 needs 2 worker(s) of 1 CPU(s) and a GPU each but the Ray cluster's 2 node(s) "
                           "have 8+8 CPUs and 1+0 GPUs, room for 1; use --workers 1 or --device cpu or add nodes"),
    (1, 1, [8], [0], "--workers 1 needs 1 worker(s) of 1 CPU(s) and a GPU each but the Ray cluster's 1 node(s) "
                     "have 8 CPUs and 0 GPUs, room for 0; use --device cpu or add nodes"),
    (3, 2, [3, 3], None, "--workers 3 with --threads 2 needs 3 worker(s) of 2 CPU(s) each but the Ray cluster's 2 node(s) "
                   "have 3+3 CPUs, room for 2; use --threads 1 or add nodes"),
    (2, 4, [4, 2], None, "--workers 2 with --threads 4 needs 2 worker(s) of 4 CPU(s) each but the Ray cluster's 2 node(s) "
                   "have 4+2 CPUs, room for 1; use --threads 2 or add nodes"),
    (4, 1, [3], None, "--workers 4 needs 4 worker(s) of 1 CPU(s) each but the Ray cluster's 1 node(s) have 3 CPUs, "
                "room for 3; use --workers 3 or add nodes"),
    (1, 8, [], None, "--workers 1 with --threads 8 needs 1 worker(s) of 8 CPU(s) each but the Ray cluster's 0 node(s) "
               "have no CPUs, room for 0; add nodes"),
    (4, 4, [3], None, "--workers 4 with --threads 4 needs 4 worker(s) of 4 CPU(s) each but the Ray cluster's 1 node(s) "
                      "have 3 CPUs, room for 0; use --workers 3 --threads 1 or add nodes"),
])
def test_ray_workers_must_fit_on_the_nodes(workers, threads, cpus, gpus, message):
    """A worker's CPUs are on one node: 3+3 CPUs hold two workers of 2, not three (Ray Train and Tune
    waited forever for the third); a GPU run's worker needs a GPU on the same node."""
    assert raylaunch.ray_fit_error(workers, threads, cpus, gpus) == message


def test_a_tune_trial_too_large_for_every_node_is_named_as_a_trial():
    """cifar-pbt: --workers is trials at once, and more than fit wait their turn; one must fit."""
    assert raylaunch.ray_fit_error(1, 2, [4, 4], None, unit="trial") is None
    assert raylaunch.ray_fit_error(1, 8, [4, 4], [1, 1], unit="trial") == (
        "--threads 8 needs 1 trial(s) of 8 CPU(s) and a GPU each but the Ray cluster's 2 node(s) have 4+4 CPUs and "
        "1+1 GPUs, room for 0; use --threads 4 or --device cpu or add nodes")


def test_threads_above_the_cores_are_refused_only_where_the_workers_run_here():
    """On a joined Ray cluster the nodes' CPUs decide (check_ray_cluster), not this machine's cores."""
    many = procs.usable_cpus() + 1

    def args(**kw: object) -> argparse.Namespace:
        return argparse.Namespace(**{"workers": 1, "threads": many, "address": None, **kw})

    assert cli.threads_per_worker(args(framework="ray", address="10.0.0.1:6379")) == many
    for framework in ("torch", "ray", "reference"):
        with pytest.raises(record.UserError, match=f"--threads {many} is more than the {many - 1} CPU"):
            cli.threads_per_worker(args(framework=framework))
    assert cli.threads_per_worker(args(framework="torch", threads=None, workers=1)) == procs.usable_cpus()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one usable CPU: no smaller set to run on")
def test_the_cpus_counted_are_those_the_run_may_use(tmp_path):
    """Under a CPU set smaller than the machine (a container's cpuset, taskset, a batch scheduler),
    os.cpu_count() still counts every CPU: default threads, the --threads bound and the record's
    cpus_per_node follow the affinity mask, as `nproc` (the orchestrator's count) does."""
    def on_one_cpu() -> None:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    probe = ("from workloads import procs, record; from workloads.harness import cli; "
             "print(procs.usable_cpus(), cli.default_threads(1), record.environment()['cpus_per_node'])")
    proc = subprocess.run([PY, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
                          preexec_fn=on_one_cpu)
    assert proc.stdout.split() == ["1", "1", "1"], proc.stdout
    out = tmp_path / "rec.json"
    proc = subprocess.run([PY, "-m", "workloads.xgboost", "--framework", "reference", "--threads", "2", "--output",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=120, preexec_fn=on_one_cpu)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: --threads 2 is more than the 1 CPU(s) this machine lets the run use; use --threads 1 or fewer"), proc.stderr
    assert json.loads(out.read_text())["status"] == "failed"


def test_an_output_in_the_input_is_refused_before_anything_is_written(tmp_path):
    """The record would have replaced a data file (the next run then failed on it), and an unwritable
    --output was found only after the training."""
    root = cifar_pbt.synthetic_cifar(tmp_path / "in", per_batch=20, test=30)
    before = (root / "test_batch").read_bytes()
    proc = run_module("workloads.cifar_pbt", "--framework", "ray", "--input", str(root), "--output", str(root / "test_batch"))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: --output {root / 'test_batch'} is inside the input directory: the record would replace data; "
        "give another path"], proc.stderr
    assert (root / "test_batch").read_bytes() == before
    (tmp_path / "afile").write_text("x")
    t0 = time.monotonic()
    proc = run_module("workloads.pneumonia", "--framework", "torch", "--output", str(tmp_path / "afile" / "r.json"),
                      env={"SCALELAB_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2 and "cannot write the record" in proc.stderr and time.monotonic() - t0 < 60, proc.stderr


def test_pneumonia_wrong_layout_cli(tmp_path):
    (tmp_path / "x" / "train" / "NORMAL").mkdir(parents=True)
    proc = run_module("workloads.pneumonia", "--framework", "torch", "--input", str(tmp_path / "x"))
    assert proc.returncode == 2 and "has no train/PNEUMONIA/, val/NORMAL/" in proc.stderr, proc.stderr


def test_xgboost_module_imports_the_real_package():
    proc = run_module("workloads.xgboost", "--help")
    assert proc.returncode == 0
    assert xgb_workload.xgb.__name__ == "xgboost" and hasattr(xgb_workload.xgb, "train")
    assert "site-packages" in xgb_workload.xgb.__file__


def test_a_ray_storage_that_is_a_file_is_one_line(tmp_path):
    """Ray Tune found it only once Ray was up, and ended in NotADirectoryError's trace."""
    from workloads.record import UserError

    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match=r"--storage .*f is a file; give a directory"), learning.ray_storage(str(tmp_path / "f")):
        pass
    with pytest.raises(UserError, match=r"--storage .*f/sub cannot be made a directory \(Not a directory\)"):
        with learning.ray_storage(str(tmp_path / "f" / "sub")):
            pass
    with learning.ray_storage(str(tmp_path / "d")) as got:
        assert got == str((tmp_path / "d").resolve())


def tiny_xray_tree(root: Path, bad: str | None = None) -> Path:
    """train|val|test/NORMAL|PNEUMONIA with two 20-px PNGs each; ``bad``: that file's bytes are text."""
    from PIL import Image
    for split in pneumonia.SPLITS:
        for cls in pneumonia.CLASSES:
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                pixels = np.full((20, 20, 3), 40 * i + 60, np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    if bad:
        (root / bad).write_text("not an image")
    return root


def test_a_file_that_is_no_image_is_named_in_one_line(tmp_path):
    """PIL's UnidentifiedImageError named a BytesIO; the torch rank printed its trace beside the line."""
    tree = tiny_xray_tree(tmp_path / "x", bad="train/NORMAL/1.png")
    out = tmp_path / "rec.json"
    proc = run_module("workloads.pneumonia", "--framework", "torch", "--input", str(tree),
                      "--image-size", "16", "--global-batch", "2", "--epochs", "1", "--threads", "1",
                      "--output", str(out))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0] == (f"error: --input {tree}: {tree}/train/NORMAL/1.png cannot be decoded as an image "
                        "(cannot identify image file); replace or remove it")
    assert json.loads(out.read_text())["status"] == "failed"


@pytest.mark.parametrize("content, needle", [
    (b"\x80\x04\x95", "UnpicklingError"),
    (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), "cannot reshape"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "holds 2 images and 1 labels"),
    (pickle.dumps([1, 2]), "AttributeError"),
])
def test_a_file_that_is_no_cifar_batch_is_one_line(tmp_path, content, needle):
    (tmp_path / "data_batch_1").write_bytes(content)
    with pytest.raises(record.UserError, match=f"data_batch_1 .*{needle}"):
        cifar_pbt.read_batch(tmp_path / "data_batch_1")


def test_a_users_error_in_a_ray_train_worker_is_the_drivers_one_line():
    from ray.exceptions import RayTaskError
    from ray.train.v2.api.exceptions import WorkerGroupError

    bad = record.UserError("--input x: x/1.png cannot be decoded as an image")
    wrapped = RayTaskError("_ray_entry", "trace", bad)
    for exc in (WorkerGroupError("failed", {1: bad}),
                WorkerGroupError("failed", {0: RuntimeError("x"), 1: wrapped})):
        got = raylaunch.user_error_of(exc)
        assert isinstance(got, record.UserError) and str(got) == str(bad)
    assert raylaunch.user_error_of(WorkerGroupError("failed", {0: RuntimeError("bug")})) is None
    assert raylaunch.user_error_of(RuntimeError("bug")) is None


def test_a_failed_verification_is_said_on_the_summary_line(tmp_path):
    """A learning run below its accuracy bar is a result (exit 0, an ok record with passed false), and
    its line says so, as a graph run stopped by --max-iter says NOT CONVERGED."""
    out = tmp_path / "rec.json"
    proc = run_module("workloads.xgboost", "--framework", "reference", "--threads", "1", "--rounds", "1",
                      "--eta", "0.0001", "--depths", "1", "--output", str(out))
    rec = json.loads(out.read_text())
    assert proc.returncode == 0 and rec["status"] == "ok", proc.stderr
    assert rec["verification"]["passed"] is False
    assert proc.stdout.strip().endswith(f"NOT VERIFIED: {rec['verification']['reason']}"), proc.stdout
    assert "< 0.93" in rec["verification"]["reason"]
