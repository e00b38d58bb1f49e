"""What the lab needs of this machine before any verb runs: root, the Debian packages, cgroups."""
from __future__ import annotations

import os
import shutil

from scalelab.errors import UserError
from scalelab.lab.cgroups import CGROUP_ROOTS

REQUIRED_TOOLS = {"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container",
                  "iptables": "iptables", "dnsmasq": "dnsmasq-base", "ip": "iproute2",
                  "ssh-keygen": "openssh-client", "ssh": "openssh-client"}


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
