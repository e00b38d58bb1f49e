"""The lab's network on this machine: the public and private bridges, the controller's address on the
public one, an ``unreachable`` route for the private subnet, iptables chains of its own (egress only
to the registries, DNS only from the controller) and dnsmasq forwarding the lab's DNS."""
from __future__ import annotations

import os
from pathlib import Path

from scalelab.errors import UserError
from scalelab.lab.egress import REGISTRY_PORTS, apt_mirror, registry_hosts, resolve_ipv4
from scalelab.lab.shared import claim_ip_forward
from scalelab.lab.system import Progress, echo, link_exists, sh, wait_for
from scalelab.labspec import LabSpec


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


def network_up(spec: LabSpec, say: Progress = echo) -> dict:
    """Bridges, the controller's address, the unreachable route, iptables chains, dnsmasq."""
    info: dict = {}
    for br, addr in ((spec.public_bridge, f"{spec.controller_ip}/{spec.public_cidr.split('/')[1]}"),
                     (spec.private_bridge, None)):
        if not link_exists(br):
            sh("ip", "link", "add", br, "type", "bridge")
        if addr and addr not in sh("ip", "-o", "addr", "show", "dev", br).stdout:
            sh("ip", "addr", "add", addr, "dev", br)
        sh("ip", "link", "set", br, "up")
    # Nothing addressed to the private subnet may leave the machine by the default route.
    sh("ip", "route", "replace", "unreachable", spec.private_cidr)
    claim_ip_forward()
    mirror = apt_mirror()
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
    wait_for(lambda: _read_pid(pidfile) is not None, 5, "dnsmasq to start")
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
        wait_for(lambda: not _pid_alive(pid), 5, "dnsmasq to stop")
    (spec.state_dir / "dnsmasq.pid").unlink(missing_ok=True)
    _iptables_down(spec)
    sh("ip", "route", "del", "unreachable", spec.private_cidr, check=False)
    for br in (spec.public_bridge, spec.private_bridge):
        if link_exists(br):
            sh("ip", "link", "del", br)
