"""The learning workloads' launch: one training function ``fn(cfg, ctx)`` runs unchanged as a torch rank
(spawned here or by torchrun) or as a Ray Train worker; the :class:`WorkerContext` hides which set up
torch.distributed."""
from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workloads.harness import LaunchTimeout, torchrun_env
from workloads.harness.raylaunch import user_error_of
from workloads.harness.torchlaunch import init_torch, spawn_torch
from workloads.record import UserError, write_json


@dataclass
class WorkerContext:
    """What a training function sees of its runtime: its rank and world, its device, how to wrap its
    model for data parallelism, and how to report a result."""

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


def check_device(requested: str) -> None:
    """``--device cuda`` needs a GPU on this machine, checked before any rank starts: otherwise the
    spawned ranks fail with tracebacks.  A Ray run's GPU is :func:`raylaunch.check_ray_cluster`'s."""
    if requested != "cuda":
        return
    import torch
    if not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA GPU is visible; use --device cpu or auto")


def pick_device(requested: str, local_rank: int = 0):
    """The rank's torch device: GPU ``local_rank`` where cuda is asked for (:func:`check_device`) or
    ``auto`` finds one, else the CPU."""
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


def torch_context(device_req: str) -> WorkerContext:
    """Context of a torch rank (RANK / WORLD_SIZE / MASTER_* in the environment, :func:`torchlaunch.init_torch`)."""
    import torch.distributed as dist
    device = pick_device(device_req, int(os.environ.get("LOCAL_RANK", "0")))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        init_torch("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return WorkerContext(rank, world, device, "torch", _ddp_wrap(device), lambda _m: None)


def ray_context() -> WorkerContext:
    """Context inside a Ray TorchTrainer worker (Ray already set up the process group)."""
    import ray.train
    import ray.train.torch
    tctx = ray.train.get_context()
    return WorkerContext(tctx.get_world_rank(), tctx.get_world_size(), ray.train.torch.get_device(),
                         "ray", ray.train.torch.prepare_model, lambda m: ray.train.report(m))


def run_torch_worker(fn: Callable, cfg: dict) -> dict:
    """Run ``fn(cfg, ctx)`` in this process as one torch rank (torchrun or :func:`torchlaunch.spawn_torch`)."""
    import torch.distributed as dist
    ctx = torch_context(cfg["device"])
    try:
        result = fn(cfg, ctx)
        if dist.is_initialized():  # no rank tears its group down while another still talks to it
            dist.barrier()
        return result
    finally:
        gc.collect()  # what the run left in reference cycles (a DDP model holds the group) goes before the group
        if dist.is_initialized():
            dist.destroy_process_group()


def _learning_rank(fn: Callable, cfg: dict, outdir: str) -> int:
    """A spawned rank: rank 0 leaves its result, and any rank its error, as JSON in ``outdir``."""
    rank = os.environ["RANK"]
    try:
        result = run_torch_worker(fn, cfg)
    except KeyboardInterrupt:
        raise  # Ctrl-C: not the rank's error (the launch says it once)
    except BaseException as exc:
        write_json({"error": f"rank {rank}: {type(exc).__name__}: {exc}", "user": isinstance(exc, UserError)},
                   Path(outdir) / f"error-{rank}.json", "the rank's error")
        if not isinstance(exc, UserError):  # a user's error is the launch's one line; a bug keeps its trace
            traceback.print_exc()
        return 1
    if rank == "0":
        write_json(result, Path(outdir) / "result.json", "the rank's result")
    return 0


def launch_torch(fn: Callable, cfg: dict, workers: int, timeout_s: float | None = None) -> dict:
    """torch.distributed: under torchrun run this rank; else spawn ``workers`` local ranks
    (:func:`torchlaunch.spawn_torch`, stopped after ``timeout_s``) and return rank 0's result."""
    if torchrun_env():
        world = int(os.environ["WORLD_SIZE"])
        if world != workers:
            raise UserError(f"--workers {workers} but torchrun started WORLD_SIZE={world}; "
                            "pass --workers equal to nnodes x nproc-per-node")
        return run_torch_worker(fn, cfg)
    with tempfile.TemporaryDirectory(prefix="scalelab-ranks-") as outdir:
        codes = spawn_torch(workers, _learning_rank, (fn, cfg, outdir), timeout_s=timeout_s,
                            env={"OMP_NUM_THREADS": str(cfg.get("threads", 1))})
        errors = [json.loads(p.read_text()) for p in sorted(Path(outdir).glob("error-*.json"))]
        if errors:
            first = next((e for e in errors if e["user"]), errors[0])
            raise (UserError if first["user"] else RuntimeError)(first["error"].split(": ", 2)[-1]
                                                                 if first["user"] else first["error"])
        result = Path(outdir) / "result.json"
        if any(codes) or not result.exists():
            raise RuntimeError(f"a torch worker exited with codes {codes}")
        return json.loads(result.read_text())


@contextmanager
def ray_storage(storage: str | None) -> Iterator[str]:
    """Ray's storage_path: the given one, or a private temp dir removed afterwards."""
    if storage:
        if "://" in storage:
            yield storage
            return
        path = Path(storage).expanduser().resolve()
        try:  # (Tune found a file in its place, or further up, only after Ray had started: a trace)
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if path.is_file():
                raise UserError(f"--storage {storage} is a file; give a directory (shared by every node on a "
                                "cluster)") from None
            raise UserError(f"--storage {storage} cannot be made a directory ({exc.strerror or exc}); give a "
                            "directory you can write (shared by every node on a cluster)") from None
        yield str(path)
        return
    tmp = tempfile.mkdtemp(prefix="scalelab-ray-")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def experiment_dir(storage: str | None, path: str | None) -> str | None:
    """The directory Ray Tune/Train wrote (its storage_path/name), for the record's ``experiment_dir``:
    None when ``--storage`` was not given, since the private temp storage is gone after the run (on a
    cluster the runner passes ``--storage`` on the shared directory, so every node's files are there)."""
    return str(path) if storage and path else None


def fit_within(fit: Callable[[], Any], timeout_s: float | None, what: str) -> Any:
    """``fit()`` (a Ray Train or Tune run) with a deadline: past ``timeout_s`` it raises
    :class:`LaunchTimeout`.  The run's actors belong to this driver's job, so Ray stops them when the
    driver ends, which the failed record and exit that follow bring about."""
    done: dict[str, Any] = {}

    def run() -> None:
        try:
            done["result"] = fit()
        except BaseException as exc:  # noqa: BLE001 (handed to the caller's thread)
            done["error"] = exc

    thread = threading.Thread(target=run, name="ray-fit", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise LaunchTimeout(f"{what} did not finish within {timeout_s:g} s; the run was stopped "
                            "(raise --timeout or check the input size)")
    if "error" in done:
        raise done["error"]
    return done["result"]


def launch_ray_torch(fn: Callable, cfg: dict, workers: int, threads: int, use_gpu: bool,
                     storage: str, name: str, timeout_s: float | None = None) -> dict:
    """Ray Train TorchTrainer with `workers` workers of `threads` CPUs; returns rank 0's result.

    Train V2 keeps only metrics that come with a checkpoint, so rank 0 reports its final result as a
    one-file checkpoint (result.json) in the run's storage; ``experiment_dir`` is the run's directory.
    After ``timeout_s`` the run fails (:func:`fit_within`).
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    trainer = TorchTrainer(
        _ray_entry, train_loop_config={"fn": fn, "cfg": cfg},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": threads}),
        run_config=RunConfig(storage_path=storage, name=name))
    try:
        result = fit_within(trainer.fit, timeout_s, f"the {workers} Ray Train workers")
    except Exception as exc:
        raise user_error_of(exc) or exc from None
    if result.error:
        raise user_error_of(result.error) or result.error
    if result.checkpoint is None:
        raise RuntimeError("the Ray workers finished without reporting a result")
    with result.checkpoint.as_directory() as d:
        return {**json.loads((Path(d) / "result.json").read_text()), "experiment_dir": result.path}


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
