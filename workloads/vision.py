"""Shared helpers of the learning workloads (pneumonia, cifar_pbt).

* image transforms of the seed (torchvision is not installable beside this torch build, so Resize,
  RandomRotation, CenterCrop, ToTensor and Normalize are re-implemented with Pillow + torch);
* an ImageFolder-style reader over local disk or HDFS (pyarrow.fs);
* the synthetic chest X-ray generator used when no real data is given;
* the data-parallel plumbing shared by both runtimes: a global-batch sampler, a worker context that
  hides whether torch.distributed was set up by us/torchrun or by Ray Train, and the launchers
  (local spawn, torchrun, Ray TorchTrainer).

One training function runs unchanged under both runtimes; only the launcher differs.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workloads import _dist
from workloads.record import UserError, fail_record, finish_record, launch_time, new_record, write_record

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)


# --------------------------------------------------------------------------------------------
# transforms (torchvision semantics, PIL + numpy + torch)
# --------------------------------------------------------------------------------------------

def resize(img, size: int):
    """torchvision ``Resize((size, size))`` on a PIL image: bilinear, antialiased."""
    from PIL import Image
    return img.resize((size, size), Image.BILINEAR)


def random_rotation(img, degrees: float, rng: np.random.Generator):
    """torchvision ``RandomRotation(degrees)``: angle ~ U(-d, d), nearest, no expand, fill 0."""
    from PIL import Image
    angle = float(rng.uniform(-degrees, degrees))
    return img.rotate(angle, resample=Image.NEAREST, expand=False, fillcolor=0)


def center_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """torchvision ``CenterCrop(size)`` on an HWC array (size <= H, W)."""
    h, w = arr.shape[:2]
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return arr[top:top + size, left:left + size]


def to_normalized_tensor(batch_hwc: np.ndarray, device=None):
    """``ToTensor`` + ``Normalize(ImageNet)`` on a uint8 NHWC batch -> float NCHW tensor."""
    import torch
    t = torch.from_numpy(np.ascontiguousarray(batch_hwc))
    if device is not None:
        t = t.to(device, non_blocking=True)
    t = t.permute(0, 3, 1, 2).contiguous().float().div_(255.0)  # NCHW-contiguous: channels-last convs are ~3x slower on CPU
    mean = torch.tensor(IMAGENET_MEAN, device=t.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=t.device).view(1, 3, 1, 1)
    return t.sub_(mean).div_(std)


def train_resize_size(image_size: int) -> int:
    """The seed resized to 256 then centre-cropped 224; keep that ratio for other sizes."""
    return int(round(image_size * 256 / 224))


def center_crop_batch(images: np.ndarray, size: int) -> np.ndarray:
    """``CenterCrop(size)`` on a uint8 NHWC batch (a contiguous copy)."""
    return np.ascontiguousarray(np.stack([center_crop(arr, size) for arr in images]))


def augment_train(images: np.ndarray, image_size: int, rng: np.random.Generator,
                  degrees: float = 20.0) -> np.ndarray:
    """RandomRotation(+-degrees) then CenterCrop(image_size) on pre-resized uint8 NHWC images."""
    from PIL import Image
    out = np.empty((len(images), image_size, image_size, 3), dtype=np.uint8)
    for i, arr in enumerate(images):
        rotated = np.asarray(random_rotation(Image.fromarray(arr), degrees, rng))
        out[i] = center_crop(rotated, image_size)
    return out


# --------------------------------------------------------------------------------------------
# ImageFolder reader (local or HDFS via pyarrow.fs)
# --------------------------------------------------------------------------------------------

@dataclass
class ImageSet:
    images: np.ndarray          # uint8 NHWC
    labels: np.ndarray          # int64
    files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def open_filesystem(uri: str):
    """(pyarrow filesystem, path) for a local path, file:// or hdfs:// URI."""
    from pyarrow import fs as pafs
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # libhdfs/JVM missing, bad host, ...
        raise UserError(f"cannot open {uri}: {exc}; check the URI, and for hdfs:// that "
                        "HADOOP_HOME/CLASSPATH/JAVA_HOME are set on this node") from exc


def scan_image_folder(uri: str, splits: tuple[str, ...], classes: tuple[str, ...]
                      ) -> dict[str, list[tuple[str, int]]]:
    """Files per split of an ImageFolder tree ``<uri>/<split>/<class>/*.jpeg``, labels by class order."""
    from pyarrow import fs as pafs
    fs, root = open_filesystem(uri)
    info = fs.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        raise UserError(f"--input {uri} is not a directory; give the root of a tree "
                        f"{'|'.join(splits)}/{'|'.join(classes)}/*.jpeg")
    layout = f"{'|'.join(splits)}/{'|'.join(classes)}/*.jpeg"
    dirs = {(split, cls): f"{root.rstrip('/')}/{split}/{cls}" for split in splits for cls in classes}
    missing = [f"{s}/{c}/" for (s, c), d in dirs.items() if fs.get_file_info(d).type != pafs.FileType.Directory]
    if missing:
        raise UserError(f"--input {uri} has no {', '.join(missing)} director{'y' if len(missing) == 1 else 'ies'}; "
                        f"expected the tree {layout} (the Kaggle chest_xray layout)")
    out: dict[str, list[tuple[str, int]]] = {split: [] for split in splits}
    for (split, cls), cdir in dirs.items():
        entries = fs.get_file_info(pafs.FileSelector(cdir, recursive=False))
        files = sorted(e.path for e in entries
                       if e.type == pafs.FileType.File and e.path.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise UserError(f"--input {uri}: {split}/{cls}/ holds no .jpeg/.jpg/.png images")
        out[split].extend((f, classes.index(cls)) for f in files)
    return out


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Decode a JPEG/PNG to RGB and resize to size x size (uint8 HWC).

    ``draft`` lets libjpeg decode at a reduced scale that is still >= 2x the target, which saves most
    of the decode time on the multi-megapixel X-rays and changes the bilinear result negligibly.
    """
    from PIL import Image
    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG":
        img.draft("RGB", (2 * size, 2 * size))
    return np.asarray(resize(img.convert("RGB"), size))


def load_images(uri: str, files: list[tuple[str, int]], size: int) -> ImageSet:
    fs, _ = open_filesystem(uri)
    images = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, (path, _label) in enumerate(files):
        with fs.open_input_stream(path) as f:
            images[i] = decode_image(f.read(), size)
    labels = np.array([label for _, label in files], dtype=np.int64)
    return ImageSet(images, labels, [p for p, _ in files])


def dataset_bytes(uri: str, files: list[str]) -> int:
    fs, _ = open_filesystem(uri)
    return int(sum(i.size or 0 for i in fs.get_file_info(files)))


# --------------------------------------------------------------------------------------------
# synthetic chest X-rays
# --------------------------------------------------------------------------------------------

# Kaggle chest_xray (Kermany et al., v2): train 1341/3875, val 8/8, test 234/390 (NORMAL/PNEUMONIA).
KAGGLE_COUNTS = {"train": (1341, 3875), "val": (8, 8), "test": (234, 390)}
SYNTHETIC_COUNTS = {"train": (268, 775), "val": (8, 8), "test": (234, 390)}  # train = Kaggle / 5
SYNTHETIC_VERSION = 1


def default_cache_dir() -> Path:
    env = os.environ.get("SCALELAB_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "scalelab"


def synthetic_xray(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One grayscale image: a bright torso with two dark lungs; PNEUMONIA adds a hazy opacity."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = 0.55 + 0.1 * rng.standard_normal() * np.ones_like(xx)
    for cx in (0.32, 0.68):
        cx += rng.uniform(-0.03, 0.03)
        lung = ((xx - cx) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1.0
        img = np.where(lung, img - 0.3, img)
    if label == 1:
        cx = rng.choice([0.32, 0.68]) + rng.uniform(-0.06, 0.06)
        cy = rng.uniform(0.35, 0.65)
        r = rng.uniform(0.08, 0.14)
        img = img + 0.35 * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))
    img = img + 0.08 * rng.standard_normal(img.shape)
    return (np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)


def build_once(root: Path, make: Callable[[Path], None]) -> Path:
    """``root``, made once by ``make(tmpdir)``: built in a temp dir beside it and renamed into place, so
    concurrent workers never see half a tree; readable by every user (a Ray driver and its workers may
    run as different users on one node)."""
    if (root / ".complete").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        tmp.chmod(0o755)
        make(tmp)
        (tmp / ".complete").write_text("ok\n")
        os.rename(tmp, root)
    except OSError:
        if not (root / ".complete").exists():  # not "someone else finished first": a real error
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def synthetic_pneumonia(cache_dir: Path | None = None, size: int = 128, seed: int = 0,
                        counts: dict[str, tuple[int, int]] | None = None) -> Path:
    """Create (once) and return a synthetic ``train|val|test/NORMAL|PNEUMONIA`` JPEG tree."""
    from PIL import Image
    counts = counts or SYNTHETIC_COUNTS
    tag = "-".join(f"{s}{n}x{p}" for s, (n, p) in sorted(counts.items()))
    root = (cache_dir or default_cache_dir()) / f"pneumonia-synthetic-v{SYNTHETIC_VERSION}-{size}px-s{seed}-{tag}"

    def make(tmp: Path) -> None:
        rng = np.random.default_rng(seed)
        for split, (n_normal, n_pneu) in counts.items():
            for cls, label, n in (("NORMAL", 0, n_normal), ("PNEUMONIA", 1, n_pneu)):
                d = tmp / split / cls
                d.mkdir(parents=True)
                for i in range(n):
                    Image.fromarray(synthetic_xray(label, size, rng), mode="L").save(
                        d / f"{cls.lower()}-{i:05d}.jpeg", quality=90)
    return build_once(root, make)


# --------------------------------------------------------------------------------------------
# global batches: the same optimiser steps at every worker count
# --------------------------------------------------------------------------------------------

def steps_per_epoch(n: int, global_batch: int) -> int:
    return n // global_batch  # drop_last: every step sees exactly global_batch samples


def rank_batches(n: int, global_batch: int, rank: int, world: int, epoch: int, seed: int
                 ) -> Iterator[np.ndarray]:
    """This rank's slice of every global batch of one epoch.

    All ranks draw the same seeded permutation, cut it into global batches and take slice ``rank`` of
    ``world`` of each, so the set of samples in step s is identical for 1, 2 or 3 workers (only who
    computes which part changes), and every rank does ``n // global_batch`` steps.
    """
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    for s in range(steps_per_epoch(n, global_batch)):
        yield np.array_split(perm[s * global_batch:(s + 1) * global_batch], world)[rank]


# --------------------------------------------------------------------------------------------
# worker context: one training function, two runtimes
# --------------------------------------------------------------------------------------------

@dataclass
class WorkerContext:
    rank: int
    world: int
    device: Any
    runtime: str                                   # "torch" | "ray"
    wrap_model: Callable[[Any], Any]
    report: Callable[[dict[str, Any]], None]
    started_at: float = field(default_factory=time.time)

    def barrier(self) -> None:
        import torch.distributed as dist
        if self.world > 1:
            dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """Sum floats over ranks (float64 on the model's device; gloo/nccl both handle it)."""
        import torch
        import torch.distributed as dist
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t)
        return t.cpu().tolist()


def pick_device(requested: str, local_rank: int = 0):
    import torch
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        check_device(requested)
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _ddp_wrap(device):
    def wrap(model):
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = model.to(device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        return model
    return wrap


def unwrap(model):
    return getattr(model, "module", model)


def recalibrate_batchnorm(model, batches: Iterator[Any], ctx: WorkerContext | None = None) -> None:
    """Precise BatchNorm: recompute every BN layer's running mean/var for the current weights.

    The running statistics are an exponential average (momentum 0.1) over the last ~10 training
    steps, taken while the weights were still moving; after a short run they describe older weights
    than the ones evaluated, and eval-mode predictions collapse to one class although the same model
    classifies well with batch statistics. Here the averages are rebuilt from scratch by forward passes
    in train mode over ``batches`` (this rank's share of the data), then averaged over the ranks, so
    every rank evaluates with the same statistics (``ctx`` None: one process).
    """
    import torch
    import torch.distributed as dist
    net = unwrap(model)  # not through DDP: its forward would broadcast rank 0's buffers
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches, not an EMA
    was_training = net.training
    net.train()
    with torch.no_grad():
        for x in batches:
            net(x)
    net.train(was_training)
    for bn, momentum in zip(bns, momenta, strict=True):
        bn.momentum = momentum
        if ctx is not None and ctx.world > 1:
            for buf in (bn.running_mean, bn.running_var):
                dist.all_reduce(buf)
                buf.div_(ctx.world)


def torch_context(device_req: str) -> WorkerContext:
    """Context for a process in a torch.distributed group set up from RANK/WORLD_SIZE/MASTER_*."""
    import torch.distributed as dist
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_req, local_rank)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return WorkerContext(rank, world, device, "torch", _ddp_wrap(device), lambda _m: None)


def ray_context() -> WorkerContext:
    """Context inside a Ray TorchTrainer worker (Ray already set up the process group)."""
    import ray.train
    import ray.train.torch
    tctx = ray.train.get_context()
    return WorkerContext(tctx.get_world_rank(), tctx.get_world_size(), ray.train.torch.get_device(),
                         "ray", ray.train.torch.prepare_model, lambda m: ray.train.report(m))


# --------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------

def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _spawned_worker(rank: int, world: int, port: int, fn: Callable, cfg: dict, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        result = run_torch_worker(fn, cfg)
        if rank == 0:
            queue.put(("ok", result))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then re-raised
        queue.put(("error", f"rank {rank}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        raise


def run_torch_worker(fn: Callable, cfg: dict) -> dict:
    """Run fn in this process as one torch.distributed rank (torchrun or our spawn)."""
    import torch.distributed as dist
    ctx = torch_context(cfg["device"])
    try:
        return fn(cfg, ctx)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch_torch(fn: Callable, cfg: dict, workers: int) -> dict:
    """torch.distributed: under torchrun run this rank; else spawn `workers` local gloo processes."""
    if under_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        if world != workers:
            raise UserError(f"--workers {workers} but torchrun started WORLD_SIZE={world}; "
                            "pass --workers equal to nnodes x nproc-per-node")
        return run_torch_worker(fn, cfg)
    import torch.multiprocessing as mp
    mpctx = mp.get_context("spawn")
    queue = mpctx.SimpleQueue()
    port = _dist.free_port()
    procs = [mpctx.Process(target=_spawned_worker, args=(r, workers, port, fn, cfg, queue), daemon=False)
             for r in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    messages = []
    while not queue.empty():
        messages.append(queue.get())
    errors = [m for kind, m in messages if kind == "error"]
    if errors or any(p.exitcode != 0 for p in procs):
        raise RuntimeError(errors[0] if errors else f"a torch worker exited with codes "
                           f"{[p.exitcode for p in procs]}")
    return next(m for kind, m in messages if kind == "ok")


def ray_address(cli_address: str | None) -> str | None:
    return cli_address or os.environ.get("RAY_ADDRESS") or None


def ray_init(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to an existing cluster (address) or start a private local one.

    ``address="local"`` is explicit so that a cluster another user started on this machine is never
    joined by accident. A Ray we start ourselves gets token auth with a fresh token and workers at
    nice 0 (:func:`workloads._dist.local_ray_env`); for an existing cluster the caller's environment
    (RAY_AUTH_MODE and token) is used as is.
    """
    import ray
    if ray.is_initialized():
        return
    if address:
        runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
            p for p in (PACKAGE_PARENT, os.environ.get("PYTHONPATH")) if p)}}
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return
    _dist.local_ray_env()
    # Pin the GCS port and export it as RAY_ADDRESS to every process of this instance: Train V2's
    # state-API clients otherwise scan the machine and fail when another user's Ray is also running.
    port = _dist.free_port()
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    # The dashboard hosts the state API that Train V2's placement-group cleaner polls; bind it (and
    # the node) to loopback only, on a free port so another user's local Ray is never disturbed.
    ray.init(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1", include_dashboard=True,
             dashboard_host="127.0.0.1", dashboard_port=_dist.free_port(),
             log_to_driver=True, configure_logging=True, logging_level="WARNING")


@contextlib.contextmanager
def ray_storage(storage: str | None) -> Iterator[str]:
    """Ray's storage_path: the given one, or a private temp dir removed afterwards."""
    if storage:
        yield str(Path(storage).resolve()) if "://" not in storage else storage
        return
    tmp = tempfile.mkdtemp(prefix="scalelab-ray-")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def launch_ray_torch(fn: Callable, cfg: dict, workers: int, threads: int, use_gpu: bool,
                     storage: str, name: str) -> dict:
    """Ray Train TorchTrainer with `workers` workers of `threads` CPUs; returns rank 0's result.

    Train V2 keeps only metrics that come with a checkpoint, so rank 0 reports its final result as a
    one-file checkpoint (result.json) in the run's storage.
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    trainer = TorchTrainer(
        _ray_entry, train_loop_config={"fn": fn, "cfg": cfg},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": threads}),
        run_config=RunConfig(storage_path=storage, name=name))
    result = trainer.fit()
    if result.error:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError("the Ray workers finished without reporting a result")
    with result.checkpoint.as_directory() as d:
        return json.loads((Path(d) / "result.json").read_text())


def _ray_entry(config: dict) -> None:
    import ray.train
    ctx = ray_context()
    result = config["fn"](config["cfg"], ctx)
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if ctx.rank == 0:
            (Path(d) / "result.json").write_text(json.dumps(result))
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report({"final": 1}, checkpoint=checkpoint)


def ray_has_gpu() -> bool:
    import ray
    return ray.cluster_resources().get("GPU", 0) > 0


def check_device(requested: str, ray: bool = False) -> None:
    """``--device cuda`` needs a GPU where the work runs (this machine, or the Ray cluster), checked
    before anything starts: otherwise spawned ranks fail with tracebacks and Ray waits for a GPU forever."""
    if requested != "cuda":
        return
    if ray and not ray_has_gpu():
        raise UserError("--device cuda but the Ray cluster has no GPU; use --device cpu or auto")
    if not ray:
        import torch
        if not torch.cuda.is_available():
            raise UserError("--device cuda but no CUDA GPU is visible; use --device cpu or auto")


# --------------------------------------------------------------------------------------------
# CLI helpers
# --------------------------------------------------------------------------------------------

def default_threads(workers: int) -> int:
    """Threads per worker when not given: this machine's cores split over the workers on it.

    Under torchrun the workers on this node are LOCAL_WORLD_SIZE; locally all `workers` share it.
    On a cluster the orchestrator should pass --threads explicitly (cores per node / workers per node).
    """
    local = int(os.environ.get("LOCAL_WORLD_SIZE", workers if not under_torchrun() else 1))
    return max(1, (os.cpu_count() or 1) // max(1, local))


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=1, help="data-parallel workers (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per worker, the same in both frameworks (default: cores // workers)")
    p.add_argument("--output", help="write the result record (JSON) here")
    p.add_argument("--nodes", type=int, default=1, help="nodes the run spans (recorded; set by the orchestrator)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a private local Ray)")
    p.add_argument("--storage", help="Ray storage_path (default: a temp dir; must be shared on a multi-node cluster)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-id", help=argparse.SUPPRESS)  # set by `fab run-experiment`


def check_positive(**values: int | None) -> None:
    for name, v in values.items():
        if v is not None and v < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {v}")


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def record_run(workload: str, args: argparse.Namespace, body: Callable[[dict, float], bool | None],
               summary: Callable[[dict], str]) -> int:
    """The common main of the learning workloads: a record for the run, filled by ``body(rec, t_start)``,
    written ok (or failed by :func:`failed_record_on_error`), then a one-line summary.  ``body`` returns
    False on a rank that is not rank 0 (rank 0 writes the record).  ``t_start`` is the launch
    (:func:`workloads.record.launch_time`), so ``startup`` includes the interpreter and imports."""
    t_start = launch_time()
    rec = new_record(workload, args.framework, workers=args.workers, nodes=args.nodes, run_id=args.run_id)
    with failed_record_on_error(rec, args.output):
        if body(rec, t_start) is False:
            return 0
        finish_record(rec)
    if args.output:
        write_record(rec, args.output)
    print(summary(rec))
    return 0


@contextlib.contextmanager
def failed_record_on_error(rec: dict, output: str | None) -> Iterator[None]:
    """Write a failed record (rank 0 only) for any error escaping the block, then re-raise."""
    try:
        yield
    except BaseException as exc:
        if output and is_rank_zero():
            write_record(fail_record(rec, exc if not isinstance(exc, UserError) else str(exc)), output)
        raise
