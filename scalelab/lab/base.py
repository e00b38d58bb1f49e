"""The base image: one debootstrap'd Debian, made into a cloud image's likeness (a sudo login user, no
root login, no host keys of its own), cached by what went into it; every host is an overlay on it."""
from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

from scalelab.lab.egress import apt_mirror
from scalelab.lab.system import Progress, echo, sh
from scalelab.labspec import BASE_PACKAGES, LabSpec


def base_key(spec: LabSpec, mirror: str) -> str:
    h = hashlib.sha256()
    h.update(f"{spec.suite}|{mirror}|{','.join(BASE_PACKAGES)}|{spec.login_user}|v4".encode())
    for ca in sorted(Path("/usr/local/share/ca-certificates").glob("*.crt")):
        h.update(ca.read_bytes())
    return h.hexdigest()[:12]


def base_path(spec: LabSpec) -> Path:
    return spec.base_cache / f"base-{spec.suite}-{base_key(spec, apt_mirror())}"


def build_base(spec: LabSpec, say: Progress = echo) -> Path:
    """debootstrap the Debian base once and cache it; later calls return the cached one."""
    mirror = apt_mirror()
    dest = base_path(spec)
    if (dest / ".scalelab-base-complete").exists():
        return dest
    spec.base_cache.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    say(f"building the Debian {spec.suite} base (debootstrap from {mirror}, ~2 min, cached in {dest})")
    t0 = time.monotonic()
    sh("debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", spec.suite, str(tmp),
       mirror, timeout=1800)
    _customise_base(tmp, spec.login_user)
    (tmp / ".scalelab-base-complete").write_text(f"{time.time():.0f} {time.monotonic() - t0:.1f}s\n")
    tmp.rename(dest)
    say(f"base ready in {time.monotonic() - t0:.0f} s")
    return dest


def _customise_base(root: Path, login_user: str) -> None:
    # Remove what debootstrap copied from this machine or generated once: each host makes its own.
    for rel in ("etc/hostname", "etc/resolv.conf", "etc/machine-id", "var/lib/dbus/machine-id"):
        p = root / rel
        if p.exists() or p.is_symlink():
            p.unlink()
    (root / "etc/machine-id").write_text("")
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    # Registries here re-sign HTTPS with a local CA: trust it inside the lab too.
    cas = list(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    if cas:
        dst = root / "usr/local/share/ca-certificates"
        dst.mkdir(parents=True, exist_ok=True)
        for ca in cas:
            shutil.copy2(ca, dst / ca.name)
        sh("chroot", str(root), "update-ca-certificates", timeout=300)
        (root / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
    # As a cloud image: a login user with passwordless sudo (the ~okeanos images' "user"), and no
    # root login over SSH.  Its authorized key is each host's, written before the first boot.
    sh("chroot", str(root), "useradd", "--create-home", "--shell", "/bin/bash", "--groups", "sudo", login_user)
    sudoers = root / "etc/sudoers.d/90-scalelab-login-user"
    sudoers.write_text(f"{login_user} ALL=(ALL) NOPASSWD:ALL\n")
    sudoers.chmod(0o440)
    (root / "etc/ssh/sshd_config.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/ssh/sshd_config.d/50-scalelab-lab.conf").write_text(
        "PermitRootLogin no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n")
    # apt-daily timers would grab the dpkg lock in the middle of provisioning.
    sh("chroot", str(root), "systemctl", "mask", "apt-daily.timer", "apt-daily-upgrade.timer")
    sh("chroot", str(root), "systemctl", "enable", "systemd-networkd", "ssh")
    sh("chroot", str(root), "apt-get", "clean")
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
    (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
