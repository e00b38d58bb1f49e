"""The wheelhouse: every wheel of requirements.lock, built once on the controller and shipped to the nodes.

Workers sit behind the master's NAT; letting each of them download torch, Ray and pyarrow from the
internet costs gigabytes per node.  The controller builds the wheels once (``pip wheel`` with its own
pip configuration, which is where the CPU torch wheel comes from) into ``wheelhouse/<key>/`` and packs
them into one uncompressed tar, ``wheelhouse/<key>.tar``, that the python_env role unpacks on each node
and installs with ``uv pip install --no-index --find-links``.

The key is a hash of the lock's requirement lines (comments and blank lines ignored) and of the
controller's Python tag and platform: an unchanged lock gives the same key, so nothing is rebuilt and
the nodes, which record the key they installed, do nothing either.

    python -m scalelab.wheelhouse build [--lock requirements.lock] [--out wheelhouse]   # JSON on stdout
    python -m scalelab.wheelhouse key   [--lock requirements.lock]
    python -m scalelab.wheelhouse pack  --src workloads --out wheelhouse/workloads.tar   # the workloads package
    python -m scalelab.wheelhouse pip-args   # where pip finds the CPU torch wheel
    python -m scalelab.wheelhouse uv-args    # the same and pip's own index settings, for uv
    python -m scalelab.wheelhouse install [--lock requirements.lock]   # uv installs the lock here (`make setup`)
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
from pathlib import Path

from scalelab.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LOCK = REPO_ROOT / "requirements.lock"
DEFAULT_OUT = REPO_ROOT / "wheelhouse"
MANIFEST = "manifest.json"
# The lock pins torch's CPU build (a +cpu local version), which PyPI does not serve: pip finds it in a
# local wheel directory when the machine has one, otherwise on PyTorch's CPU index.  A loose `torch`
# from PyPI would be the multi-GB CUDA build.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
LOCAL_WHEEL_DIRS = (REPO_ROOT.parent / "shared" / "wheels",)


def requirement_lines(lock_text: str) -> list[str]:
    """The lock's requirements, normalised: no comments, no blank lines, whitespace stripped."""
    out = []
    for raw in lock_text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def local_wheel_dir(env=os.environ) -> Path | None:
    """The first directory holding a torch wheel: $SCALELAB_WHEELS, else ../shared/wheels beside the repo."""
    candidates = [Path(env["SCALELAB_WHEELS"])] if env.get("SCALELAB_WHEELS") else list(LOCAL_WHEEL_DIRS)
    for d in candidates:
        if d.is_dir() and any(d.glob("torch-*.whl")):
            return d.resolve()
    return None


def torch_pip_args(env=os.environ) -> list[str]:
    """pip options that make the lock's CPU torch installable: a local wheel directory or the CPU index."""
    local = local_wheel_dir(env)
    return ["--find-links", str(local)] if local else ["--extra-index-url", TORCH_CPU_INDEX]


# pip settings that say where packages come from, and uv's option for each (uv reads no pip.conf).
PIP_TO_UV = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
             "trusted-host": "--allow-insecure-host"}
# pip settings uv takes from the environment instead.
PIP_TO_UV_ENV = {"cert": ("SSL_CERT_FILE",), "proxy": ("HTTPS_PROXY", "HTTP_PROXY")}


def pip_source_settings(config_list: str, names=tuple(PIP_TO_UV)) -> list[tuple[str, str]]:
    """(setting, value) pairs of `pip config list` output (pip.conf files and PIP_* variables) for the
    settings `names`, in pip's order; multi-valued settings split on whitespace."""
    out = []
    for line in config_list.splitlines():
        key, sep, raw = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if not sep or name not in names:
            continue
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            value = raw.strip()
        out += [(name, v) for v in str(value).split()]
    return out


def uv_args(config_list: str, env=os.environ) -> list[str]:
    """`uv pip install` options equivalent to this machine's pip: pip's index settings, then where the
    CPU torch wheel is (a local directory, or PyTorch's index searched beside the others as pip does)."""
    settings = pip_source_settings(config_list)
    # pip lists its files, then its variables: the last index-url is the one pip uses
    index = [v for n, v in settings if n == "index-url"][-1:]
    pairs = [("index-url", v) for v in index] + [(n, v) for n, v in settings if n != "index-url"]
    args: list[str] = []
    for name, value in dict.fromkeys(pairs):
        if name == "find-links" and "://" not in value and not Path(value).is_dir():
            continue  # pip skips a missing directory; uv would stop
        args += [PIP_TO_UV[name], value]
    args += torch_pip_args(env)
    if "--extra-index-url" in args:
        args += ["--index-strategy", "unsafe-best-match"]
    return args


def uv_env(config_list: str, env=os.environ) -> dict[str, str]:
    """The environment for uv: pip's certificate bundle and proxy where the environment sets none."""
    out = dict(env)
    for name, value in pip_source_settings(config_list, tuple(PIP_TO_UV_ENV)):
        for var in PIP_TO_UV_ENV[name]:
            if not env.get(var):
                out[var] = value  # the last one listed wins, as in pip
    return out


def pip_config_list(python: str = sys.executable) -> str:
    """What `pip config list` prints for `python`'s pip (its files and PIP_* variables)."""
    return subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout


def uv_install(lock: Path, python: str = sys.executable) -> int:
    """Install `lock` into `python`'s environment: pip installs the lock's uv, then uv the lock, given this
    machine's pip settings.  uv compiles the bytecode as pip does by default (uv does not): without it
    every process compiles what it imports from source where no cache can be written (2.2 CPU s of
    the 3.5 s `import torch, numpy, scipy.sparse, pyarrow.csv, ray` takes here)."""
    pin = [line for line in requirement_lines(read_lock(lock)) if line.startswith("uv==")]
    if not pin:
        raise UserError(f"{lock} pins no uv: restore it from git or run `make lock`")
    pip = subprocess.run([python, "-m", "pip", "install", "-q", pin[0]])
    if pip.returncode != 0:
        return pip.returncode
    pip_config = pip_config_list(python)
    cmd = [str(Path(python).parent / "uv"), "pip", "install", "-q", "--compile-bytecode", "--python", python,
           *uv_args(pip_config), "-r", str(lock)]
    return subprocess.run(cmd, env=uv_env(pip_config)).returncode


def target_tag() -> str:
    """What the wheels are built for: the controller's interpreter and platform (e.g. cp311-linux_x86_64)."""
    return f"cp{sys.version_info.major}{sys.version_info.minor}-{sysconfig.get_platform().replace('-', '_')}"


def lock_key(lock_text: str, tag: str | None = None) -> str:
    """16 hex digits naming a wheelhouse: same requirements and target -> same key."""
    h = hashlib.sha256()
    h.update((tag or target_tag()).encode())
    h.update(b"\0")
    h.update("\n".join(requirement_lines(lock_text)).encode())
    return h.hexdigest()[:16]


def read_lock(lock: Path) -> str:
    try:
        return lock.read_text()
    except FileNotFoundError:
        raise UserError(f"lock file {lock} is missing: restore requirements.lock from git or run `make lock`") from None


def _machine() -> str:
    return platform.machine()


def tar_members(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix == ".whl")


def write_tar(directory: Path, dest: Path) -> None:
    """A deterministic, uncompressed tar of the wheels (wheels are compressed already)."""
    tmp = dest.with_suffix(".tar.tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for p in tar_members(directory) + [directory / MANIFEST]:
            info = tar.gettarinfo(str(p), arcname=p.name)
            info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "root", "root", 0o644
            with p.open("rb") as fh:
                tar.addfile(info, fh)
    tmp.replace(dest)


def status(lock: Path = DEFAULT_LOCK, out: Path = DEFAULT_OUT) -> dict:
    text = read_lock(lock)
    key = lock_key(text)
    tar = out / f"{key}.tar"
    return {"key": key, "tag": target_tag(), "machine": _machine(), "dir": str(out / key), "tar": str(tar),
            "lock": str(lock), "ready": tar.exists() and (out / key / MANIFEST).exists()}


def build(lock: Path = DEFAULT_LOCK, out: Path = DEFAULT_OUT, pip: list[str] | None = None,
          say=lambda msg: print(msg, file=sys.stderr)) -> dict:
    """Build the wheelhouse for `lock` unless it exists; returns status() plus built/seconds."""
    info = status(lock, out)
    if info["ready"]:
        return {**info, "built": False, "seconds": 0.0}
    key_dir, tar = Path(info["dir"]), Path(info["tar"])
    work = out / f"{info['key']}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.monotonic()
    say(f"wheelhouse: building {info['key']} from {lock} (one-off; takes a few minutes)")
    cmd = [*(pip or [sys.executable, "-m", "pip"]), "wheel", "--disable-pip-version-check", "-q",
           "--wheel-dir", str(work), *torch_pip_args(), "-r", str(lock)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PIP_NO_INPUT": "1"})
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"wheelhouse: pip wheel failed ({last}): check that the controller can install "
                        f"{lock} (make setup) and try again")
    wheels = [p.name for p in tar_members(work)]
    (work / MANIFEST).write_text(json.dumps({"key": info["key"], "tag": info["tag"], "machine": _machine(),
                                             "lock_sha256": hashlib.sha256(read_lock(lock).encode()).hexdigest(),
                                             "wheels": wheels}, indent=1))
    shutil.rmtree(key_dir, ignore_errors=True)
    work.rename(key_dir)
    write_tar(key_dir, tar)
    seconds = round(time.monotonic() - t0, 1)
    say(f"wheelhouse: {len(wheels)} wheels, {tar.stat().st_size / 2**20:.0f} MiB in {seconds} s")
    return {**status(lock, out), "built": True, "seconds": seconds}


def pack_tree(src: Path, dest: Path) -> bool:
    """A deterministic tar of a source tree (no caches, no dot files); rewritten only when it changes."""
    files = sorted(p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                   and p.suffix != ".pyc" and not any(part.startswith(".") for part in p.relative_to(src).parts))
    if not files:
        raise UserError(f"{src} has no files to ship")
    tmp = dest.with_suffix(".tmp")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for p in files:
            info = tar.gettarinfo(str(p), arcname=f"{src.name}/{p.relative_to(src)}")
            info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "root", "root", 0o644
            with p.open("rb") as fh:
                tar.addfile(info, fh)
    if dest.exists() and dest.read_bytes() == tmp.read_bytes():
        tmp.unlink()
        return False
    tmp.replace(dest)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scalelab.wheelhouse", description=__doc__.split("\n")[0])
    ap.add_argument("action", choices=["build", "key", "status", "pack", "pip-args", "uv-args", "install"])
    ap.add_argument("--lock", type=Path, default=DEFAULT_LOCK)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--src", type=Path, help="pack: the directory to pack into --out (a .tar file)")
    args = ap.parse_args(argv)
    try:
        if args.action == "pack":
            if not args.src:
                ap.error("pack needs --src DIR")
            print(json.dumps({"tar": str(args.out), "changed": pack_tree(args.src, args.out)}))
            return 0
        if args.action == "pip-args":
            print(" ".join(torch_pip_args()))
            return 0
        if args.action == "uv-args":
            print(" ".join(shlex.quote(a) for a in uv_args(pip_config_list())))
            return 0
        if args.action == "install":
            return uv_install(args.lock)
        if args.action == "key":
            print(lock_key(read_lock(args.lock)))
            return 0
        result = build(args.lock, args.out) if args.action == "build" else status(args.lock, args.out)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
