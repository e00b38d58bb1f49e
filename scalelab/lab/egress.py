"""Where the lab may go: the package registries (this machine's apt archives and PyPI) and their
addresses; nothing else leaves it (:mod:`scalelab.lab.network`)."""
from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_MIRROR = "http://deb.debian.org/debian"
REGISTRY_PORTS = (80, 443)


def _apt_sources(pattern: str) -> Iterator[str]:
    """The text of each of apt's source files: those in sources.list.d matching ``pattern``, then
    sources.list (one that cannot be read is skipped)."""
    for path in [*Path("/etc/apt/sources.list.d").glob(pattern), Path("/etc/apt/sources.list")]:
        try:
            yield path.read_text()
        except OSError:
            continue


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses (so the lab uses the same reachable archive)."""
    for text in _apt_sources("*.sources"):
        for m in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s*)?)(\S+)", text, re.M):
            uri = m.group(1)
            if "security" not in uri and uri.startswith(("http://", "https://")):
                return uri
    return DEFAULT_MIRROR


def _apt_hosts() -> set[str]:
    hosts = set()
    for text in _apt_sources("*"):
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
