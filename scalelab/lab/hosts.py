"""The hosts: each an overlay on the base, made unique before its first boot, booted by a bash
supervisor (``systemd-nspawn --boot``, its veths attached to the bridges, relaunched on a reboot),
reached over ssh, and power-cut through its cgroup."""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from scalelab import labspec
from scalelab.errors import Failure, UserError
from scalelab.lab.cgroups import host_cgroups, host_pids, host_running, rmdir_tree
from scalelab.lab.system import Progress, echo, is_mounted, link_exists, sh, wait_for
from scalelab.labspec import Host, LabSpec


def host_root(spec: LabSpec, host: str) -> Path:
    """Where the host's overlay (its root file system) is mounted on this machine."""
    return spec.host_dir(host) / "root"


def mount_host(spec: LabSpec, host: Host, base: Path) -> Path:
    d = spec.host_dir(host.name)
    root = d / "root"
    for sub in ("upper", "work", "root"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    if not is_mounted(root):
        sh("mount", "-t", "overlay", "overlay", "-o",
           f"lowerdir={base},upperdir={d / 'upper'},workdir={d / 'work'}", str(root))
    return root


def ensure_key(spec: LabSpec) -> str:
    """The controller's ssh key for the lab (made once), as its public line."""
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
    root = host_root(spec, host)
    return [p.read_text().strip() for p in sorted((root / "etc/ssh").glob("ssh_host_*_key.pub"))]


def _supervisor_script(spec: LabSpec, host: Host) -> str:
    """bash: join the host's cgroups, boot nspawn, wire its veths to the bridges, relaunch on reboot."""
    root = host_root(spec, host.name)
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
    procs = " ".join(str(cg / "cgroup.procs") for cg in host_cgroups(spec, host.name))
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
    for cg in host_cgroups(spec, host.name):
        rmdir_tree(cg)  # leftovers of the last boot's guest systemd
        cg.mkdir(parents=True, exist_ok=True)
    for i in host.interfaces:  # a veth left by a crashed nspawn would block the new one
        if link_exists(i.host_side):
            sh("ip", "link", "del", i.host_side, check=False)
    log = open(spec.host_dir(host.name) / "console.log", "ab")
    proc = subprocess.Popen(["bash", "-c", _supervisor_script(spec, host)], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    wait_for(lambda: host_running(spec, host.name) or proc.poll() is not None, 10, f"{host.name} to start")
    return proc.pid


def kill_host(spec: LabSpec, host: str, timeout: float = 15) -> None:
    """Power cut: every process of the host (supervisor, nspawn, the guest) dies at once."""
    kill = host_cgroups(spec, host)[0] / "cgroup.kill"  # the unified hierarchy's
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

    wait_for(gone, timeout, f"{host}'s processes to die")
    # The veths go with the host's network namespace, which the kernel frees asynchronously (seconds
    # under load); one still there after that is deleted here, so the next boot can make it again.
    for i in spec.host(host).interfaces:
        try:
            wait_for(lambda i=i: not link_exists(i.host_side), 10, f"{i.host_side} to disappear")
        except RuntimeError:
            sh("ip", "link", "del", i.host_side, check=False)
            wait_for(lambda i=i: not link_exists(i.host_side), 10, f"{i.host_side} to be deleted")


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


def boot(spec: LabSpec, hosts: Sequence[Host], say: Progress = echo, timeout: float = 120) -> None:
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
