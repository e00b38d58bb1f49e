"""Shared helpers of the learning workloads (pneumonia, cifar_pbt).

* image transforms of the seed (torchvision is not installable beside this torch build, so Resize,
  RandomRotation, CenterCrop, ToTensor and Normalize are re-implemented with Pillow + torch);
* an ImageFolder-style reader over local disk or HDFS (pyarrow.fs);
* the synthetic chest X-ray generator used when no real data is given;
* the global-batch sampler (the same optimiser steps at every worker count) and precise BatchNorm.

Launching, the worker context and the record are the harness's (:mod:`workloads.harness`).
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workloads.record import UserError

if TYPE_CHECKING:
    from workloads.harness.learning import WorkerContext

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


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
    """(pyarrow filesystem, path) for a local path, file://, hdfs:// (read over WebHDFS: no libhdfs or
    JVM needed on the node) or webhdfs:// URI: the graph workloads' reader."""
    from workloads.graphio import open_fs
    return open_fs(uri)


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
            data = f.read()
        try:
            images[i] = decode_image(data, size)
        except OSError as exc:  # PIL: not an image it knows (UnidentifiedImageError), or a truncated one
            why = str(exc).split(" <_io.", 1)[0]  # (PIL names the BytesIO object, not the file)
            raise UserError(f"--input {uri}: {path} cannot be decoded as an image ({why}); "
                            "replace or remove it") from None
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
# models
# --------------------------------------------------------------------------------------------

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
