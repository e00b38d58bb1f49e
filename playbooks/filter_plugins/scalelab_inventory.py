"""Inventory checks for playbooks/preflight.yml, as Jinja filters.

    {{ groups | scalelab_inventory_errors(hostvars) }}    -> list of one-line errors ([] when fine)
    {{ groups | scalelab_inventory_warnings(hostvars) }}  -> list of one-line warnings

Pure functions of the inventory (group -> hosts, host -> variables): no host is contacted.
They are importable without Ansible so tests/unit can call them directly.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

# RFC 5737 documentation networks: an inventory still holding one of these has a placeholder left.
_DOC_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
_FORWARD_KEYS = ("port", "host", "dest_port")


def _get(hostvars: Mapping, host: str, name: str, default=None):
    """One variable of one host; hostvars may be Ansible's lazy HostVars or a plain dict."""
    try:
        hv = hostvars[host]
    except KeyError:
        return default
    try:
        value = hv[name]
    except KeyError:
        return default
    return default if value is None else value


def _port(value) -> int | None:
    """An int in 1..65535, or None.  Accepts ints and digit strings, not bools or floats."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        port = int(value)
        return port if 0 < port < 65536 else None
    return None


def _nodes(groups: Mapping) -> tuple[list[str], list[str]]:
    return list(groups.get("masters") or []), list(groups.get("workers") or [])


def inventory_errors(groups: Mapping, hostvars: Mapping) -> list[str]:
    """Every problem that would make the cluster roles misbehave, one line each, in a stable order."""
    errors: list[str] = []
    masters, workers = _nodes(groups)

    if not masters:
        errors.append("no master: group 'masters' is missing or empty; put exactly one host in it")
    elif len(masters) > 1:
        errors.append(f"{len(masters)} masters ({', '.join(masters)}): group 'masters' must hold exactly one host")
    for host in sorted(set(masters) & set(workers)):
        errors.append(f"host '{host}' is in both 'masters' and 'workers'; the master must not be a worker here")

    nodes = list(dict.fromkeys(masters + workers))
    cluster = set(groups.get("cluster") or [])
    for host in nodes:
        if host not in cluster:
            errors.append(f"host '{host}' is not in group 'cluster'; make 'masters' and 'workers' children of 'cluster'")

    # Shared network variables (group_vars/all/network.yml); read from the master, as the roles do.
    ref = masters[0] if masters else (nodes[0] if nodes else None)
    cidr_text = _get(hostvars, ref, "scalelab_private_cidr") if ref else None
    cidr = None
    if ref is not None:
        if not cidr_text:
            errors.append("scalelab_private_cidr is not set (group_vars/all/network.yml)")
        else:
            try:
                cidr = ipaddress.ip_network(str(cidr_text), strict=False)
            except ValueError:
                errors.append(f"scalelab_private_cidr '{cidr_text}' is not a network (e.g. 192.168.0.0/24)")
        for name in ("scalelab_private_interface", "scalelab_public_interface"):
            if not _get(hostvars, ref, name):
                errors.append(f"{name} is not set (group_vars/all/network.yml)")
        private_if = _get(hostvars, ref, "scalelab_private_interface")
        if private_if and private_if == _get(hostvars, ref, "scalelab_public_interface"):
            errors.append(f"scalelab_private_interface and scalelab_public_interface are both '{private_if}': "
                          "the master needs two interfaces (the NAT forwards from one to the other); "
                          "name each in group_vars/all/network.yml")

    # Private addresses: present, valid, unique, inside the private network.
    owners: dict[str, list[str]] = {}
    for host in nodes:
        raw = _get(hostvars, host, "scalelab_private_ip")
        if not raw:
            errors.append(f"host '{host}' has no scalelab_private_ip (its address on the private network)")
            continue
        try:
            addr = ipaddress.ip_address(str(raw))
        except ValueError:
            errors.append(f"host '{host}': scalelab_private_ip '{raw}' is not an IP address")
            continue
        owners.setdefault(str(addr), []).append(host)
        if addr.is_global:
            errors.append(f"host '{host}': scalelab_private_ip {addr} is a public address; the private "
                          "network must use private addresses (10/8, 172.16/12, 192.168/16)")
        if cidr is not None and addr not in cidr:
            errors.append(f"host '{host}': scalelab_private_ip {addr} is outside scalelab_private_cidr {cidr}")
    for addr, hosts in owners.items():
        if len(hosts) > 1:
            errors.append(f"duplicate scalelab_private_ip {addr}: used by {' and '.join(hosts)}")

    for host in masters[:1]:
        public = _get(hostvars, host, "scalelab_public_ip")
        if not public:
            errors.append(f"master '{host}' has no scalelab_public_ip (its address on the public interface)")
        else:
            try:
                addr = ipaddress.ip_address(str(public))
            except ValueError:
                errors.append(f"master '{host}': scalelab_public_ip '{public}' is not an IP address")
            else:
                for other in owners.get(str(addr), []):
                    errors.append(f"master '{host}': scalelab_public_ip {addr} is also the private address of "
                                  f"'{other}'; the public and the private networks must not overlap")
    # Workers sit behind the master's NAT: a public address on one means the inventory is mixed up.
    for host in workers:
        if host not in masters and _get(hostvars, host, "scalelab_public_ip"):
            errors.append(f"worker '{host}' has a scalelab_public_ip; workers have only a private address "
                          "(they reach out through the master's NAT): remove it")

    # Port forwards on the master's public address.
    forwards = _get(hostvars, ref, "scalelab_port_forwards", []) if ref else []
    if not isinstance(forwards, list):
        errors.append("scalelab_port_forwards must be a list of {port, host, dest_port}")
        forwards = []
    seen_ports: dict[int, int] = {}
    master_ssh = _port(_get(hostvars, masters[0], "ansible_port", 22)) if masters else None
    for i, fwd in enumerate(forwards, start=1):
        if not isinstance(fwd, Mapping) or any(k not in fwd for k in _FORWARD_KEYS):
            errors.append(f"port forward #{i} ({fwd}) needs port, host and dest_port")
            continue
        port, dest_port, host = _port(fwd["port"]), _port(fwd["dest_port"]), str(fwd["host"])
        label = f"port forward {fwd['port']} -> {host}:{fwd['dest_port']}"
        if port is None or dest_port is None:
            errors.append(f"{label}: ports must be integers in 1-65535")
            continue
        if host not in nodes:
            errors.append(f"{label} names a host that is not in the inventory (known: {', '.join(nodes) or 'none'})")
        elif host in masters:
            errors.append(f"{label} points at the master itself; forwards must point at a worker")
        if port == 22:
            errors.append(f"{label}: port 22 is the master's own sshd; pick another public port")
        elif port == master_ssh:
            errors.append(f"{label}: port {port} is the master's own ssh port (its ansible_port): forwarding it "
                          "would lock you out; pick another public port")
        if port in seen_ports:
            errors.append(f"{label}: public port {port} is already forwarded by forward #{seen_ports[port]}")
        seen_ports.setdefault(port, i)
    errors += placeholder_errors(groups, hostvars)
    return errors


def placeholder_errors(groups: Mapping, hostvars: Mapping) -> list[str]:
    """A documentation address left in: provisioning would try to reach it, so stop here instead."""
    errors: list[str] = []
    masters, workers = _nodes(groups)
    for host in masters + workers:
        seen = set()
        for name in ("scalelab_public_ip", "ansible_host"):
            try:
                addr = ipaddress.ip_address(str(_get(hostvars, host, name)))
            except ValueError:
                continue
            if addr not in seen and any(addr in net for net in _DOC_NETS):
                errors.append(
                    f"host '{host}': {name} {addr} is a documentation placeholder; "
                    "put your real address in the inventory before provisioning"
                )
            seen.add(addr)
    return errors


def inventory_warnings(groups: Mapping, hostvars: Mapping) -> list[str]:
    """Things that are allowed but probably a mistake."""
    _masters, workers = _nodes(groups)
    if not workers:
        return ["group 'workers' is empty: a one-node cluster (no NAT clients, no port forwards)"]
    return []


class FilterModule:
    """Ansible entry point."""

    def filters(self):
        return {
            "scalelab_inventory_errors": inventory_errors,
            "scalelab_inventory_warnings": inventory_warnings,
        }
