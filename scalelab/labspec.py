"""The lab's shape: hosts, addresses, bridges and generated files, as pure data.

Everything here is computed from ``inventory/lab/group_vars/all/{lab,network}.yml`` (the one source of
truth for the lab's addresses) and is free of side effects, so it is unit-tested without root.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scalelab.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
LAB_INVENTORY = REPO_ROOT / "inventory" / "lab"

# What a fresh cloud VM has, and what Ansible needs on a target (python3-apt for the apt module,
# python3-packaging for pip).  Kept minimal: the roles install everything else.
BASE_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-apt", "python3-packaging",
    "iproute2", "iptables", "sudo", "ca-certificates", "iputils-ping", "procps", "netbase", "less",
)
MAX_WORKERS = 8


def worker_name(i: int) -> str:
    """The lab's i-th worker host (1-based)."""
    return f"worker{i}"


@dataclass(frozen=True)
class Interface:
    guest: str          # name inside the host (eth1, eth2)
    host_side: str      # veth name on the controller (<= 15 chars)
    bridge: str
    address: str        # a.b.c.d
    prefixlen: int
    gateway: str | None = None


@dataclass(frozen=True)
class Host:
    name: str
    group: str                  # "master" | "workers"
    index: int
    private_ip: str
    public_ip: str | None
    interfaces: tuple[Interface, ...]

    @property
    def ssh_address(self) -> str:
        """The address the controller uses: public for the master, private (via the master) otherwise."""
        return self.public_ip or self.private_ip


@dataclass(frozen=True)
class LabSpec:
    name: str
    suite: str
    workers: int
    public_cidr: str
    private_cidr: str
    controller_ip: str
    master_public_ip: str
    private_interface: str
    public_interface: str
    state_dir: Path
    base_cache: Path
    inventory_dir: Path = LAB_INVENTORY
    port_forwards: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    login_user: str = "user"    # who the controller logs in as (connection.yml), with sudo; never root

    # --- derived names -------------------------------------------------------------------------
    @property
    def public_bridge(self) -> str:
        return f"{self.name[:10]}-pub"

    @property
    def private_bridge(self) -> str:
        return f"{self.name[:10]}-prv"

    @property
    def key_file(self) -> Path:
        return self.state_dir / "id_ed25519"

    # The ssh client files live with the lab's state, not in the inventory directory: Ansible parses
    # every file there as inventory and warns about each one it cannot read.
    @property
    def ssh_config(self) -> Path:
        return self.state_dir / "ssh_config"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def hosts_file(self) -> Path:
        return self.inventory_dir / "hosts.yml"

    @property
    def chain(self) -> str:
        return f"{self.name.upper()[:18]}-LAB"

    def host_dir(self, host: str) -> Path:
        return self.state_dir / "hosts" / host

    @property
    def hosts(self) -> tuple[Host, ...]:
        priv = ipaddress.ip_network(self.private_cidr)
        pub = ipaddress.ip_network(self.public_cidr)
        addrs = list(priv.hosts())
        out = []
        names = ["master"] + [worker_name(i) for i in range(1, self.workers + 1)]
        for i, name in enumerate(names):
            private_ip = str(addrs[i])
            ifaces = [Interface(self.private_interface, f"{self.name[:9]}{i}v", self.private_bridge,
                                private_ip, priv.prefixlen)]
            public_ip = None
            if i == 0:
                public_ip = self.master_public_ip
                ifaces.append(Interface(self.public_interface, f"{self.name[:9]}{i}p", self.public_bridge,
                                        public_ip, pub.prefixlen, gateway=self.controller_ip))
            out.append(Host(name, "master" if i == 0 else "workers", i, private_ip, public_ip, tuple(ifaces)))
        return tuple(out)

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        known = ", ".join(h.name for h in self.hosts)
        raise UserError(f"no lab host named {name!r} (the lab has: {known})")


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"{path} is missing: restore it from git (`git checkout -- {path}`)") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of variables")
    return data


def load_spec(inventory_dir: Path = LAB_INVENTORY, workers: int | None = None) -> LabSpec:
    """Read the lab's variables and check them; errors are one line saying what to fix."""
    gv = inventory_dir / "group_vars" / "all"
    lab = _load_yaml(gv / "lab.yml")
    net = _load_yaml(gv / "network.yml")
    conn = _load_yaml(gv / "connection.yml")
    v = {**net, **lab}

    def req(key: str) -> Any:
        if key not in v or v[key] in (None, ""):
            raise UserError(f"{key} is not set in {gv}/: set it (see the comments in lab.yml/network.yml)")
        return v[key]

    n = int(workers if workers is not None else req("scalelab_lab_workers"))
    if not 0 <= n <= MAX_WORKERS:
        raise UserError(f"--workers must be between 0 and {MAX_WORKERS}, not {n}")
    name = str(req("scalelab_lab_name"))
    if not name.isalnum() or not name.islower():
        raise UserError(f"scalelab_lab_name must be lower-case letters and digits, not {name!r}")
    try:
        pub = ipaddress.ip_network(req("scalelab_lab_public_cidr"))
        priv = ipaddress.ip_network(req("scalelab_private_cidr"))
        ctl = ipaddress.ip_address(req("scalelab_lab_controller_ip"))
        mpub = ipaddress.ip_address(req("scalelab_lab_master_public_ip"))
    except ValueError as exc:
        raise UserError(f"bad lab address in {gv}/: {exc}") from None
    if pub.overlaps(priv):
        raise UserError(f"scalelab_lab_public_cidr {pub} overlaps scalelab_private_cidr {priv}: pick disjoint subnets")
    for label, ip in (("scalelab_lab_controller_ip", ctl), ("scalelab_lab_master_public_ip", mpub)):
        if ip not in pub:
            raise UserError(f"{label} {ip} is not in scalelab_lab_public_cidr {pub}")
    if ctl == mpub:
        raise UserError("scalelab_lab_controller_ip and scalelab_lab_master_public_ip must differ")
    login = str(conn.get("ansible_user") or "")
    if not login or login == "root" or "{{" in login:
        raise UserError(f"ansible_user in {gv}/connection.yml must name the lab hosts' login user (not root), "
                        f"not {login!r}")
    if priv.num_addresses - 2 < n + 1:
        raise UserError(f"scalelab_private_cidr {priv} is too small for {n + 1} hosts")
    return LabSpec(
        name=name, suite=str(req("scalelab_lab_suite")), workers=n,
        public_cidr=str(pub), private_cidr=str(priv), controller_ip=str(ctl), master_public_ip=str(mpub),
        private_interface=str(req("scalelab_private_interface")),
        public_interface=str(req("scalelab_public_interface")),
        state_dir=Path(req("scalelab_lab_state_dir")),
        base_cache=Path(os.environ.get("SCALELAB_LAB_BASE_CACHE") or req("scalelab_lab_base_cache")),
        inventory_dir=inventory_dir,
        port_forwards=tuple(v.get("scalelab_port_forwards") or ()),
        login_user=login,
    )


def derive_inventory(dst: Path, name: str, second_octet: int, workers: int = 2, suite: str | None = None,
                     src: Path = LAB_INVENTORY) -> Path:
    """A copy of the lab inventory for a lab of its own (name, subnets 10.<second_octet>.0/1.x, state
    directory), so a test's or a benchmark's lab never meets the default one.  Returns ``dst``."""
    import shutil

    shutil.copytree(src / "group_vars", dst / "group_vars")
    gv = dst / "group_vars/all"
    labv = _load_yaml(gv / "lab.yml")
    labv.update(scalelab_lab_name=name, scalelab_lab_workers=workers,
                scalelab_lab_public_cidr=f"10.{second_octet}.0.0/24",
                scalelab_lab_controller_ip=f"10.{second_octet}.0.1",
                scalelab_lab_master_public_ip=f"10.{second_octet}.0.10",
                scalelab_lab_state_dir=f"/var/lib/scalelab/{name}")
    if suite:
        labv.update(scalelab_lab_suite=suite)
    (gv / "lab.yml").write_text(yaml.safe_dump(labv))
    net = _load_yaml(gv / "network.yml")
    net.update(scalelab_private_cidr=f"10.{second_octet}.1.0/24", scalelab_public_gateway=f"10.{second_octet}.0.1")
    (gv / "network.yml").write_text(yaml.safe_dump(net))
    return dst


# --- generated files ---------------------------------------------------------------------------

def lab_port_forwards(spec: LabSpec) -> list[dict[str, Any]]:
    """network.yml's SSH port forwards less those to lab workers that this lab, sized by ``--workers``,
    does not have (the seed's forward to worker2 on a one-worker lab): site.yml's preflight rightly
    refuses a forward to an unknown host.  Any other name stays, for the preflight to judge."""
    absent = {worker_name(i) for i in range(spec.workers + 1, MAX_WORKERS + 1)}
    return [f for f in spec.port_forwards if not (isinstance(f, dict) and f.get("host") in absent)]


def render_inventory(spec: LabSpec) -> str:
    """inventory/lab/hosts.yml in the shape of inventory/okeanos/hosts.yml: the same groups, the same
    variables and the same templated ``ansible_host``; only the names and addresses are the lab's.
    How to log in is in group_vars (connection.yml), as for a real cluster."""
    def hostvars(h: Host) -> dict[str, Any]:
        if h.public_ip:
            return {"scalelab_public_ip": h.public_ip, "scalelab_private_ip": h.private_ip,
                    "ansible_host": "{{ scalelab_public_ip }}"}
        return {"scalelab_private_ip": h.private_ip, "ansible_host": "{{ scalelab_private_ip }}"}

    master = [h for h in spec.hosts if h.group == "master"]
    workers = [h for h in spec.hosts if h.group == "workers"]
    mvars = hostvars(master[0])
    forwards = lab_port_forwards(spec)
    if forwards != list(spec.port_forwards):  # a host variable outranks group_vars/all/network.yml
        mvars["scalelab_port_forwards"] = forwards
    inv = {
        "all": {
            "children": {
                "cluster": {
                    "children": {
                        "masters": {"hosts": {master[0].name: mvars}},
                        "workers": {"hosts": {h.name: hostvars(h) for h in workers}} if workers else {},
                    }
                }
            },
        }
    }
    head = "# Generated by `fab lab-up` from group_vars/all/{lab,network}.yml: do not edit, it is rewritten.\n"
    return head + yaml.safe_dump(inv, sort_keys=False, default_flow_style=False)


def render_ssh_config(spec: LabSpec) -> str:
    """OpenSSH client config: the login user, the lab's key, host key checking on against the lab's
    known_hosts; workers through the master (ProxyJump), as the inventory reaches them."""
    m = next(h for h in spec.hosts if h.group == "master")
    lines = ["# Generated by `fab lab-up`: do not edit, it is rewritten.", ""]
    for h in spec.hosts:
        lines.append(f"Host {h.name} {h.ssh_address}")
        lines.append(f"  HostName {h.ssh_address}")
        if h.group != "master":
            lines.append(f"  ProxyJump {spec.login_user}@{m.ssh_address}")
        lines.append("")
    lines += [
        "Host *",
        f"  User {spec.login_user}",
        f"  IdentityFile {spec.key_file}",
        "  IdentitiesOnly yes",
        f"  UserKnownHostsFile {spec.known_hosts}",
        "  StrictHostKeyChecking yes",
        "  GlobalKnownHostsFile /dev/null",
        "  ConnectTimeout 10",
        "  ServerAliveInterval 15",
        "",
    ]
    return "\n".join(lines)


def render_known_hosts(spec: LabSpec, host_keys: dict[str, list[str]]) -> str:
    """known_hosts lines for every host's name and the address the controller uses."""
    out = []
    for h in spec.hosts:
        names = ",".join(dict.fromkeys([h.name, h.ssh_address]))
        for key in host_keys.get(h.name, []):
            ktype, blob = key.split()[:2]
            out.append(f"{names} {ktype} {blob}")
    return "\n".join(out) + ("\n" if out else "")


def render_networkd(host: Host, dns: str) -> dict[str, str]:
    """systemd-networkd files for a host: static addresses; a gateway only where the spec gives one
    (the master's public side).  Workers get no default route: the NAT roles add it."""
    files = {}
    for prio, iface in enumerate(host.interfaces, start=10):
        body = [f"[Match]\nName={iface.guest}\n", "[Network]", f"Address={iface.address}/{iface.prefixlen}"]
        if iface.gateway:
            body.append(f"Gateway={iface.gateway}")
        body.append(f"DNS={dns}")
        body += ["LinkLocalAddressing=no", "IPv6AcceptRA=no", ""]
        files[f"{prio}-{iface.guest}.network"] = "\n".join(body)
    return files


def render_etc_hosts(host: Host) -> str:
    """/etc/hosts as a fresh cloud image has it, 127.0.1.1 line included (the hosts role fixes it)."""
    return (
        "127.0.0.1\tlocalhost\n"
        f"127.0.1.1\t{host.name}\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
    )
