"""The local lab: systemd-nspawn hosts on overlays of one cached debootstrap'd Debian base.

Topology (the seed's): a *public* bridge holding the controller and the master's public interface, and
a *private* bridge holding the master's private interface and the workers, on which the controller has
no address.  Workers have no default route at creation; the NAT roles make the master their gateway.

Each host runs under a small bash supervisor in its own cgroup (cgroup2 ``unified`` and the v1
``systemd`` hierarchy): the supervisor starts ``systemd-nspawn --boot``, attaches the veth ends to the
bridges and relaunches on exit code 133 (a reboot from inside).  ``kill`` writes 1 to the host's
``cgroup.kill``: a power cut, the disk (overlay upper dir) stays.

Lab egress goes only to the package registries (by address, ports 80/443); nothing addressed to the
lab's subnets can leave the machine (the private subnet has an ``unreachable`` route).

Needs root and: debootstrap, systemd-container, iptables, dnsmasq-base (``make lab-deps``).
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from scalelab import labspec
from scalelab.errors import Failure, UserError
from scalelab.labspec import BASE_PACKAGES, Host, LabSpec

CGROUP_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/systemd"))
NSPAWN_RUNDIR = Path("/run/systemd/nspawn")
# What every lab on this machine shares (two checkouts may run labs side by side): IPv4 forwarding and
# the tmpfs on NSPAWN_RUNDIR.  The first lab up records how it found them here; the last one down
# puts them back, never one while another lab is up (it would cut that lab's egress).
SHARED_STATE = Path("/run/scalelab")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
REQUIRED_TOOLS = {"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container",
                  "iptables": "iptables", "dnsmasq": "dnsmasq-base", "ip": "iproute2",
                  "ssh-keygen": "openssh-client", "ssh": "openssh-client"}
DEFAULT_MIRROR = "http://deb.debian.org/debian"
REGISTRY_PORTS = (80, 443)

Progress = Callable[[str], None]


def _say(msg: str) -> None:
    print(msg, flush=True)


def sh(*args: str, check: bool = True, capture: bool = True, input: str | None = None,
       timeout: float | None = 120) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise with the command and its stderr in one message."""
    proc = subprocess.run(list(args), text=True, capture_output=capture, input=input, timeout=timeout)
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout or "").strip().splitlines()
        tail = err[-1] if err else f"exit {proc.returncode}"
        raise RuntimeError(f"`{shlex.join(args)}` failed: {tail}")
    return proc


# --- preconditions -----------------------------------------------------------------------------

def check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise UserError("the lab needs root (systemd-nspawn, bridges, iptables): run it as root")
    missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise UserError(f"missing Debian packages {', '.join(missing)}: run `make lab-deps`")
    for root in CGROUP_ROOTS:
        if not root.is_dir():
            raise UserError(f"{root} is not mounted: the lab needs the cgroup2 'unified' and the v1 "
                            "'systemd' hierarchies (a hybrid cgroup host)")


def _apt_mirror() -> str:
    """The Debian mirror this machine's apt uses (so the lab uses the same reachable archive)."""
    candidates = list(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        for m in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s*)?)(\S+)", text, re.M):
            uri = m.group(1)
            if "security" not in uri and uri.startswith(("http://", "https://")):
                return uri
    return DEFAULT_MIRROR


def _apt_hosts() -> set[str]:
    hosts = set()
    for path in list(Path("/etc/apt/sources.list.d").glob("*")) + [Path("/etc/apt/sources.list")]:
        try:
            text = path.read_text()
        except OSError:
            continue
        for uri in re.findall(r"(https?://[^\s\]]+)", text):
            if (h := urlparse(uri).hostname):
                hosts.add(h)
    return hosts


def registry_hosts(mirror: str) -> set[str]:
    """Package registries the lab may reach: the apt archive(s) and PyPI (pip's default index)."""
    hosts = _apt_hosts() | {urlparse(mirror).hostname or ""}
    hosts |= {"pypi.org", "files.pythonhosted.org"}
    extra = os.environ.get("SCALELAB_LAB_EGRESS_HOSTS", "")
    hosts |= {h for h in extra.split(",") if h}
    return {h for h in hosts if h}


def resolve_ipv4(hosts: Iterable[str]) -> list[str]:
    ips: set[str] = set()
    for h in sorted(hosts):
        try:
            for info in socket.getaddrinfo(h, 443, socket.AF_INET, socket.SOCK_STREAM):
                ips.add(str(info[4][0]))
        except socket.gaierror:
            continue  # an unresolvable registry is simply not reachable from the lab
    return sorted(ips)


# --- the base image ----------------------------------------------------------------------------

def base_key(spec: LabSpec, mirror: str) -> str:
    h = hashlib.sha256()
    h.update(f"{spec.suite}|{mirror}|{','.join(BASE_PACKAGES)}|{spec.login_user}|v4".encode())
    for ca in sorted(Path("/usr/local/share/ca-certificates").glob("*.crt")):
        h.update(ca.read_bytes())
    return h.hexdigest()[:12]


def base_path(spec: LabSpec) -> Path:
    return spec.base_cache / f"base-{spec.suite}-{base_key(spec, _apt_mirror())}"


def build_base(spec: LabSpec, say: Progress = _say) -> Path:
    """debootstrap the Debian base once and cache it; later calls return the cached one."""
    mirror = _apt_mirror()
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


# --- state -------------------------------------------------------------------------------------

def _state_file(spec: LabSpec) -> Path:
    return spec.state_dir / "lab.json"


def load_state(spec: LabSpec) -> dict | None:
    try:
        return json.loads(_state_file(spec).read_text())
    except FileNotFoundError:
        return None


@contextmanager
def exclusive(spec: LabSpec, verb: str) -> Iterator[None]:
    """Hold the lab's lock for one verb that changes it.  A second one on the same lab (another
    terminal, a script's cleanup) stops at once in one line, instead of tearing down or booting hosts
    under the first: seen when a `fab lab-down` and a `fab lab-up` met, which left a host whose disk had
    been deleted through its mounted overlay."""
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    path = spec.state_dir / "lab.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise UserError(f"lab {spec.name} is busy: {holder} is changing it; "
                            "run this again when it has finished") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"`fab lab-{verb}` (pid {os.getpid()})".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _one_at_a_time(verb: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The verb runs under :func:`exclusive`, after the prerequisites' check (the lock's directory
    needs root)."""
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def locked(spec: LabSpec, *args: Any, **kwargs: Any) -> Any:
            check_prerequisites()
            with exclusive(spec, verb):
                return fn(spec, *args, **kwargs)
        return locked
    return wrap


def _save_state(spec: LabSpec, state: dict) -> None:
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    tmp = _state_file(spec).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, _state_file(spec))


def spec_from_state(default: LabSpec) -> LabSpec:
    """The running lab's spec (its worker count may differ from the default's)."""
    st = load_state(default)
    if st and "workers" in st:
        return labspec.load_spec(default.inventory_dir, workers=int(st["workers"]))
    return default


# --- cgroups -----------------------------------------------------------------------------------

def _cgroups(spec: LabSpec, host: str) -> list[Path]:
    return [root / spec.name / host for root in CGROUP_ROOTS]


def _dirs(top: Path, bottom_up: bool = False) -> Iterator[Path]:
    """``top`` and every directory under it. A cgroup can vanish while we walk (a guest's unit stops):
    ``os.walk`` skips a directory it cannot list, where pathlib's ``rglob`` raises (seen in CI)."""
    for dirpath, _dirs, _files in os.walk(top, topdown=not bottom_up):
        yield Path(dirpath)


def host_pids(spec: LabSpec, host: str) -> set[int]:
    """Every process of the host, in every hierarchy its supervisor joined: nspawn and the guest's
    systemd may leave some of them in sub-cgroups of only one hierarchy (seen: only in v1 ``systemd``)."""
    pids: set[int] = set()
    for cg in _cgroups(spec, host):
        for d in _dirs(cg):
            try:
                pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
            except OSError:  # a sub-cgroup removed while we read it
                pass
    return pids


def host_running(spec: LabSpec, host: str) -> bool:
    return bool(host_pids(spec, host))


def _rmdir_tree(path: Path) -> None:
    """Remove an empty cgroup tree, deepest first; a cgroup still in use stays."""
    for d in _dirs(path, bottom_up=True):
        try:
            d.rmdir()
        except OSError:
            pass


def _wait(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --- network -----------------------------------------------------------------------------------

def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _iptables_rules(spec: LabSpec, registry_ips: list[str]) -> list[tuple[str, list[str]]]:
    """(table, rule) pairs for the lab's own chains; the built-in chains only get one jump each."""
    pub, prv, c = spec.public_bridge, spec.private_bridge, spec.chain
    filt = [
        ["-A", c, "-i", pub, "-o", pub, "-j", "ACCEPT"],          # bridged host-to-host (br_netfilter)
        ["-A", c, "-i", prv, "-o", prv, "-j", "ACCEPT"],
        ["-A", c, "-o", pub, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
    ]
    for ip in registry_ips:
        filt.append(["-A", c, "-i", pub, "-s", spec.public_cidr, "-d", ip, "-p", "tcp", "-m", "multiport",
                     "--dports", ",".join(map(str, REGISTRY_PORTS)), "-j", "ACCEPT"])
    filt += [
        ["-A", c, "-i", pub, "-j", "REJECT", "--reject-with", "icmp-admin-prohibited"],
        ["-A", c, "-i", prv, "-j", "REJECT", "--reject-with", "icmp-admin-prohibited"],
        ["-A", c, "-o", pub, "-j", "REJECT", "--reject-with", "icmp-admin-prohibited"],
        ["-A", c, "-o", prv, "-j", "REJECT", "--reject-with", "icmp-admin-prohibited"],
    ]
    inp = [  # what the lab may reach on the controller itself: DNS only
        ["-A", f"{c}-IN", "-i", pub, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
        ["-A", f"{c}-IN", "-i", pub, "-d", spec.controller_ip, "-p", "udp", "--dport", "53", "-j", "ACCEPT"],
        ["-A", f"{c}-IN", "-i", pub, "-d", spec.controller_ip, "-p", "tcp", "--dport", "53", "-j", "ACCEPT"],
        ["-A", f"{c}-IN", "-i", pub, "-p", "icmp", "-j", "ACCEPT"],
        ["-A", f"{c}-IN", "-i", pub, "-j", "REJECT", "--reject-with", "icmp-admin-prohibited"],
        ["-A", f"{c}-IN", "-i", prv, "-j", "DROP"],
    ]
    # Masquerade only what leaves the machine: never traffic bridged between lab hosts (br_netfilter
    # runs it through POSTROUTING too, e.g. the controller's own connection DNAT-ed by the master).
    nat = [["-A", c, "-o", pub, "-j", "RETURN"], ["-A", c, "-o", prv, "-j", "RETURN"],
           ["-A", c, "-s", spec.public_cidr, "-j", "MASQUERADE"]]
    return [("filter", r) for r in filt] + [("filter", r) for r in inp] + [("nat", r) for r in nat]


def _jumps(spec: LabSpec) -> list[tuple[str, str, str]]:
    c = spec.chain
    return [("filter", "FORWARD", c), ("filter", "INPUT", f"{c}-IN"), ("nat", "POSTROUTING", c)]


def network_up(spec: LabSpec, say: Progress = _say) -> dict:
    """Bridges, the controller's address, the unreachable route, iptables chains, dnsmasq."""
    info: dict = {}
    for br, addr in ((spec.public_bridge, f"{spec.controller_ip}/{spec.public_cidr.split('/')[1]}"),
                     (spec.private_bridge, None)):
        if not _link_exists(br):
            sh("ip", "link", "add", br, "type", "bridge")
        if addr and addr not in sh("ip", "-o", "addr", "show", "dev", br).stdout:
            sh("ip", "addr", "add", addr, "dev", br)
        sh("ip", "link", "set", br, "up")
    # Nothing addressed to the private subnet may leave the machine by the default route.
    sh("ip", "route", "replace", "unreachable", spec.private_cidr)
    _claim_ip_forward()
    mirror = _apt_mirror()
    ips = resolve_ipv4(registry_hosts(mirror))
    info["registry_ips"] = ips
    _iptables_down(spec)
    for table, chain in {(t, ch) for t, _b, ch in _jumps(spec)}:
        sh("iptables", "-w", "-t", table, "-N", chain)
    for table, rule in _iptables_rules(spec, ips):
        sh("iptables", "-w", "-t", table, *rule)
    for table, builtin, chain in _jumps(spec):
        sh("iptables", "-w", "-t", table, "-I", builtin, "1", "-j", chain)
    info["dnsmasq_pid"] = _start_dnsmasq(spec)
    return info


def labs_up() -> list[str]:
    """The labs whose network is up on this machine, as their chains (FORWARD jumps to each)."""
    out = sh("iptables", "-w", "-S", "FORWARD", check=False).stdout
    return re.findall(r"^-A FORWARD -j (\S+-LAB)$", out, re.M)


def _claim_ip_forward() -> None:
    """IPv4 forwarding on, for the lab's egress; the first lab up records how it found it."""
    record = SHARED_STATE / "ip_forward_before"
    if not record.exists() or not labs_up():   # (a record with no lab up is a crashed lab's: stale)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(IP_FORWARD.read_text())
    IP_FORWARD.write_text("1\n")


def _release_shared(state: dict | None) -> None:
    """Put back what the labs share (:data:`SHARED_STATE`) once no lab is up."""
    if labs_up():
        return
    record = SHARED_STATE / "ip_forward_before"
    before = record.read_text().strip() if record.exists() else (state or {}).get("ip_forward_before")  # older labs
    if before in ("0", "1"):
        IP_FORWARD.write_text(before + "\n")
    record.unlink(missing_ok=True)
    mounted = SHARED_STATE / "nspawn_rundir_mounted"
    if (mounted.exists() or (state or {}).get("mounted_nspawn_rundir")) and _is_mounted(NSPAWN_RUNDIR):
        sh("umount", str(NSPAWN_RUNDIR), check=False)
    mounted.unlink(missing_ok=True)


def _iptables_down(spec: LabSpec) -> None:
    for table, builtin, chain in _jumps(spec):
        while sh("iptables", "-w", "-t", table, "-D", builtin, "-j", chain, check=False).returncode == 0:
            pass
    for table, _b, chain in _jumps(spec):
        if sh("iptables", "-w", "-t", table, "-F", chain, check=False).returncode == 0:
            sh("iptables", "-w", "-t", table, "-X", chain, check=False)


def _resolver() -> str:
    try:
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver" and not parts[1].startswith("127."):
                return parts[1]
    except OSError:
        pass
    raise UserError("no usable nameserver in /etc/resolv.conf: the lab forwards its DNS to it")


def _start_dnsmasq(spec: LabSpec) -> int:
    pidfile = spec.state_dir / "dnsmasq.pid"
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    old = _read_pid(pidfile)
    if old and _pid_alive(old):
        return old
    sh("dnsmasq", "--conf-file=/dev/null", f"--pid-file={pidfile}", f"--interface={spec.public_bridge}",
       "--bind-interfaces", f"--listen-address={spec.controller_ip}", "--except-interface=lo",
       "--no-hosts", "--no-resolv", f"--server={_resolver()}", f"--no-dhcp-interface={spec.public_bridge}",
       "--cache-size=1000")
    _wait(lambda: _read_pid(pidfile) is not None, 5, "dnsmasq to start")
    return int(_read_pid(pidfile) or 0)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _comm(pid: int) -> str:
    """The process's command name; "" once it has gone (also between a check and this read)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def network_down(spec: LabSpec) -> None:
    pid = _read_pid(spec.state_dir / "dnsmasq.pid")
    if pid and _comm(pid) == "dnsmasq":
        os.kill(pid, 15)
        _wait(lambda: not _pid_alive(pid), 5, "dnsmasq to stop")
    (spec.state_dir / "dnsmasq.pid").unlink(missing_ok=True)
    _iptables_down(spec)
    sh("ip", "route", "del", "unreachable", spec.private_cidr, check=False)
    for br in (spec.public_bridge, spec.private_bridge):
        if _link_exists(br):
            sh("ip", "link", "del", br)


# --- hosts -------------------------------------------------------------------------------------

def _root(spec: LabSpec, host: str) -> Path:
    return spec.host_dir(host) / "root"


def _is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def mount_host(spec: LabSpec, host: Host, base: Path) -> Path:
    d = spec.host_dir(host.name)
    root = d / "root"
    for sub in ("upper", "work", "root"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    if not _is_mounted(root):
        sh("mount", "-t", "overlay", "overlay", "-o",
           f"lowerdir={base},upperdir={d / 'upper'},workdir={d / 'work'}", str(root))
    return root


def _ensure_key(spec: LabSpec) -> str:
    if not spec.key_file.exists():
        spec.state_dir.mkdir(parents=True, exist_ok=True)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{spec.name}-lab-controller",
           "-f", str(spec.key_file))
    return spec.key_file.with_suffix(".pub").read_text().strip()


def first_boot_setup(spec: LabSpec, host: Host, root: Path, pubkey: str) -> None:
    """Make a host unique before its first boot: hostname, machine-id, ssh host keys, network, access."""
    marker = root / "etc/scalelab-lab-host"
    if marker.exists():
        return
    (root / "etc/hostname").write_text(host.name + "\n")
    (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    (root / "etc/hosts").write_text(labspec.render_etc_hosts(host))
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text(f"nameserver {spec.controller_ip}\n")
    netdir = root / "etc/systemd/network"
    netdir.mkdir(parents=True, exist_ok=True)
    for name, body in labspec.render_networkd(host, spec.controller_ip).items():
        (netdir / name).write_text(body)
    sshdir = root / "etc/ssh"
    for key in sshdir.glob("ssh_host_*"):
        key.unlink()
    sh("ssh-keygen", "-A", "-f", str(root))
    _authorize(root, spec.login_user, pubkey)
    marker.write_text(f"{host.name} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")


def _authorize(root: Path, user: str, pubkey: str) -> None:
    """The controller's key in the login user's authorized_keys (owned by that user, as sshd insists)."""
    entry = next((line.split(":") for line in (root / "etc/passwd").read_text().splitlines()
                  if line.split(":")[0] == user), None)
    if entry is None:
        raise UserError(f"the lab base has no user {user!r}: rebuild it (`fab lab-up --rebuild-base` "
                        "after `fab lab-down`)")
    uid, gid, home = int(entry[2]), int(entry[3]), root / entry[5].lstrip("/")
    sshdir = home / ".ssh"
    sshdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (sshdir / "authorized_keys").write_text(pubkey + "\n")
    os.chmod(sshdir / "authorized_keys", 0o600)
    for p in (sshdir, sshdir / "authorized_keys"):
        os.chown(p, uid, gid)


def host_keys(spec: LabSpec, host: str) -> list[str]:
    root = _root(spec, host)
    return [p.read_text().strip() for p in sorted((root / "etc/ssh").glob("ssh_host_*_key.pub"))]


def _supervisor_script(spec: LabSpec, host: Host) -> str:
    """bash: join the host's cgroups, boot nspawn, wire its veths to the bridges, relaunch on reboot."""
    root = _root(spec, host.name)
    nspawn = [
        "systemd-nspawn", "--boot", "--keep-unit", "--register=no", f"--machine={spec.name}-{host.name}",
        f"--hostname={host.name}", f"--directory={root}", "--resolv-conf=off", "--timezone=off",
        "--link-journal=no", "--console=read-only", "--capability=CAP_NET_ADMIN",
    ]
    if Path("/dev/fuse").exists():  # FUSE mounts (the shared storage role's sshfs) need the device
        nspawn.append("--bind=/dev/fuse")
    nspawn += [f"--network-veth-extra={i.host_side}:{i.guest}" for i in host.interfaces]
    attach = "; ".join(
        f"ip link set {i.host_side} master {i.bridge} && ip link set {i.host_side} up" for i in host.interfaces)
    wait_links = " && ".join(f"[ -e /sys/class/net/{i.host_side} ]" for i in host.interfaces)
    procs = " ".join(str(cg / "cgroup.procs") for cg in _cgroups(spec, host.name))
    return f"""set -u
for f in {procs}; do echo $$ > "$f"; done
export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1
while :; do
  {shlex.join(nspawn)} &
  child=$!
  for _ in $(seq 300); do {{ {wait_links}; }} && break; kill -0 $child 2>/dev/null || break; sleep 0.1; done
  {attach} || echo "supervisor: could not attach veths" >&2
  wait $child; rc=$?
  echo "supervisor: nspawn exited with $rc at $(date -Is)"
  [ $rc -eq 133 ] || exit $rc
done
"""


def start_host(spec: LabSpec, host: Host) -> int:
    """Boot a host (its disk is kept); returns the supervisor's PID."""
    if host_running(spec, host.name):
        return -1
    for cg in _cgroups(spec, host.name):
        _rmdir_tree(cg)  # leftovers of the last boot's guest systemd
        cg.mkdir(parents=True, exist_ok=True)
    for i in host.interfaces:  # a veth left by a crashed nspawn would block the new one
        if _link_exists(i.host_side):
            sh("ip", "link", "del", i.host_side, check=False)
    log = open(spec.host_dir(host.name) / "console.log", "ab")
    proc = subprocess.Popen(["bash", "-c", _supervisor_script(spec, host)], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    _wait(lambda: host_running(spec, host.name) or proc.poll() is not None, 10, f"{host.name} to start")
    return proc.pid


def kill_host(spec: LabSpec, host: str, timeout: float = 15) -> None:
    """Power cut: every process of the host (supervisor, nspawn, the guest) dies at once."""
    kill = CGROUP_ROOTS[0] / spec.name / host / "cgroup.kill"
    if kill.exists():
        kill.write_text("1")

    def gone() -> bool:  # what cgroup.kill did not reach (processes only in the v1 hierarchy) gets SIGKILL
        for pid in host_pids(spec, host):
            if pid > 1:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return not host_running(spec, host)

    _wait(gone, timeout, f"{host}'s processes to die")
    # The veths go with the host's network namespace, which the kernel frees asynchronously (seconds
    # under load); one still there after that is deleted here, so the next boot can make it again.
    for i in spec.host(host).interfaces:
        try:
            _wait(lambda i=i: not _link_exists(i.host_side), 10, f"{i.host_side} to disappear")
        except RuntimeError:
            sh("ip", "link", "del", i.host_side, check=False)
            _wait(lambda i=i: not _link_exists(i.host_side), 10, f"{i.host_side} to be deleted")


def ssh_cmd(spec: LabSpec, host: str, *cmd: str, batch: bool = True) -> list[str]:
    args = ["ssh", "-F", str(spec.ssh_config)]
    if batch:
        args += ["-o", "BatchMode=yes"]
    return args + [host, *cmd]


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def console_tail(spec: LabSpec, host: str, lines: int = 12) -> str:
    """The last lines of a host's console (boot messages, the supervisor's own lines), colours removed."""
    try:
        text = (spec.host_dir(host) / "console.log").read_bytes()[-16384:].decode(errors="replace")
    except OSError:
        return "(no console log)"
    return "\n".join(ANSI.sub("", line).rstrip() for line in text.splitlines()[-lines:])


class HostUnreachable(Failure):
    def __init__(self, host: str, why: str, ssh_said: str, console: str) -> None:
        super().__init__(f"{host} {why}; ssh said: {ssh_said}\n--- console of {host} (last lines) ---\n{console}")
        self.host = host


def wait_ssh(spec: LabSpec, hosts: Iterable[str], timeout: float = 120) -> None:
    """Until every host answers on ssh.  A host whose processes all ended fails at once; one that is
    still silent after `timeout` fails then; either way with ssh's last words and the console's tail."""
    pending = list(hosts)
    said: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while pending:
        for h in list(pending):
            try:
                r = subprocess.run(ssh_cmd(spec, h, "true"), capture_output=True, text=True, timeout=30)
            except subprocess.TimeoutExpired:
                said[h] = "no answer within 30 s"
                continue
            if r.returncode == 0:
                pending.remove(h)
            else:
                said[h] = (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1]
        if not pending:
            return
        dead = [h for h in pending if not host_running(spec, h)]
        if dead or time.monotonic() > deadline:
            h = (dead or pending)[0]
            why = "stopped while booting" if dead else f"did not answer on ssh within {timeout:.0f} s"
            raise HostUnreachable(h, why, said.get(h, "-"), console_tail(spec, h))
        time.sleep(0.5)


def boot(spec: LabSpec, hosts: Sequence[Host], say: Progress = _say, timeout: float = 120) -> None:
    """Start the hosts and wait for ssh on each.  A host that does not come up gets one more boot
    (a power cut, then a fresh start) before the lab gives up on it: its console says why."""
    for h in hosts:
        if not host_running(spec, h.name):
            say(f"booting {h.name}")
            start_host(spec, h)
    try:
        wait_ssh(spec, [h.name for h in hosts], timeout)
    except HostUnreachable as exc:
        say(f"{exc}\n{exc.host}: restarting it once")
        kill_host(spec, exc.host)
        start_host(spec, spec.host(exc.host))
        wait_ssh(spec, [h.name for h in hosts], timeout)


def write_access_files(spec: LabSpec) -> None:
    spec.inventory_dir.mkdir(parents=True, exist_ok=True)
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    keys = {h.name: host_keys(spec, h.name) for h in spec.hosts}
    spec.known_hosts.write_text(labspec.render_known_hosts(spec, keys))
    spec.ssh_config.write_text(labspec.render_ssh_config(spec))
    spec.hosts_file.write_text(labspec.render_inventory(spec))


# --- the verbs ---------------------------------------------------------------------------------

@_one_at_a_time("up")
def up(spec: LabSpec, say: Progress = _say, rebuild_base: bool = False) -> dict:
    """Bring the lab up (idempotent): base, network, hosts, access files; wait for ssh everywhere.

    On a running lab with fewer workers it grows: the new hosts boot, the others keep running, and
    the inventory names them all (then `fab provision` takes the new ones into the cluster).
    rebuild_base: debootstrap the base afresh first (the lab must be down: its hosts run on it).
    """
    state = load_state(spec)
    if rebuild_base:
        if state:
            raise UserError("the lab is up and its hosts run on the base: `fab lab-down` first, "
                            "then `fab lab-up --rebuild-base`")
        shutil.rmtree(base_path(spec), ignore_errors=True)
    if state and int(state.get("workers", spec.workers)) > spec.workers:
        raise UserError(f"the lab has {state['workers']} workers and cannot shrink to {spec.workers}: "
                        "`fab lab-down` first")
    t0 = time.monotonic()
    base = build_base(spec, say)
    t_base = time.monotonic() - t0
    state = state or {"name": spec.name, "created": time.time()}
    state["workers"] = spec.workers
    if not _is_mounted(NSPAWN_RUNDIR):  # /run is on disk here; nspawn wants a tmpfs there
        NSPAWN_RUNDIR.mkdir(parents=True, exist_ok=True)
        sh("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(NSPAWN_RUNDIR))
        SHARED_STATE.mkdir(parents=True, exist_ok=True)
        (SHARED_STATE / "nspawn_rundir_mounted").touch()
    state["base"] = str(base)
    _save_state(spec, state)
    net = network_up(spec, say)
    state["registry_ips"] = net["registry_ips"]
    state["dnsmasq_pid"] = net["dnsmasq_pid"]
    _save_state(spec, state)
    pubkey = _ensure_key(spec)
    for h in spec.hosts:
        root = mount_host(spec, h, base)
        first_boot_setup(spec, h, root, pubkey)
    write_access_files(spec)
    boot(spec, spec.hosts, say)
    state["up_seconds"] = round(time.monotonic() - t0 - t_base, 1)
    state["base_seconds"] = round(t_base, 1)
    _save_state(spec, state)
    return state


@_one_at_a_time("down")
def down(spec: LabSpec, say: Progress = _say, keep_disks: bool = False) -> None:
    """Stop every host, remove the network, the mounts and (unless keep_disks) the hosts' disks."""
    state = load_state(spec)
    spec = spec_from_state(spec)
    for h in spec.hosts:
        if host_running(spec, h.name):
            say(f"stopping {h.name}")
            kill_host(spec, h.name)
        for cg in _cgroups(spec, h.name):
            _rmdir_tree(cg)
        root = _root(spec, h.name)
        if _is_mounted(root):
            sh("umount", str(root))
    for root in CGROUP_ROOTS:
        _rmdir_tree(root / spec.name)
    network_down(spec)
    _release_shared(state)
    for f in (spec.hosts_file, spec.ssh_config, spec.known_hosts):
        f.unlink(missing_ok=True)
    if not keep_disks:
        _remove_disks(spec.state_dir / "hosts", say)
        _state_file(spec).unlink(missing_ok=True)


def _remove_disks(hosts_dir: Path, say: Progress) -> None:
    """The hosts' disks (each an overlay's upper layer: a venv, a JDK, Hadoop; GBs of small files), one
    thread per host: unlinking waits on the disk, and side by side it takes about half as long (three
    2.5 GB trees on a 2-core VM: 45 s one after another, 23 s at once)."""
    disks = [d for d in hosts_dir.iterdir() if d.is_dir() and not d.is_symlink()] if hosts_dir.is_dir() else []
    if disks:
        say(f"removing the disks of {', '.join(d.name for d in disks)}")
        with ThreadPoolExecutor(max_workers=len(disks)) as pool:
            list(pool.map(functools.partial(shutil.rmtree, ignore_errors=True), disks))
    shutil.rmtree(hosts_dir, ignore_errors=True)


@_one_at_a_time("kill")
def kill(spec: LabSpec, host: str) -> None:
    spec = spec_from_state(spec)
    spec.host(host)
    if not host_running(spec, host):
        raise UserError(f"{host} is not running (start it with `fab lab-start {host}`)")
    kill_host(spec, host)


@_one_at_a_time("start")
def start(spec: LabSpec, host: str, say: Progress = _say) -> None:
    spec = spec_from_state(spec)
    h = spec.host(host)
    state = load_state(spec)
    if not state:
        raise UserError("the lab is not up: run `fab lab-up`")
    if host_running(spec, host):
        say(f"{host} is already running")
        return
    mount_host(spec, h, Path(state["base"]))
    boot(spec, [h], say)


def status(spec: LabSpec) -> list[dict]:
    """One row per host: running, addresses, ssh answering."""
    spec = spec_from_state(spec)
    rows = []
    up_state = load_state(spec) is not None
    for h in spec.hosts:
        running = host_running(spec, h.name)
        ssh_ok = False
        if running and spec.ssh_config.exists():
            try:
                ssh_ok = subprocess.run(ssh_cmd(spec, h.name, "true"), capture_output=True,
                                        timeout=15).returncode == 0
            except subprocess.TimeoutExpired:
                ssh_ok = False
        rows.append({"host": h.name, "group": h.group, "state": "running" if running else
                     ("stopped" if up_state else "absent"), "private_ip": h.private_ip,
                     "public_ip": h.public_ip or "-", "ssh": "ok" if ssh_ok else "-"})
    return rows
