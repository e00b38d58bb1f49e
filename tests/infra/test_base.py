"""The base layer on a provisioned cluster (issue 3): hostnames, /etc/hosts, SSH mesh, NAT, firewall.

    .venv/bin/pytest tests/infra --hosts=ansible://all --ansible-inventory=inventory/lab
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

# Skipped as a whole, with the reason, without --hosts or when the inventory has no hosts (conftest).
pytestmark = pytest.mark.lab

HOSTS_MARKER = "scalelab cluster hosts (managed by Ansible, role hosts)"
# Ports that must NOT answer on the master's public address: Ray (GCS, dashboard, client), HDFS
# NameNode UI, YARN RM UI, torch.distributed rendezvous, the seed's HDFS and torch ports, and a few
# usual suspects.
CLOSED_PORTS = [6379, 8265, 10001, 9870, 8088, 29400, 50000, 12345, 8080, 8042, 9000, 9864, 80, 443, 3389]
PROBE_TIMEOUT = 2.0


def _block(text: str) -> list[str]:
    lines = text.splitlines()
    begin = next(i for i, line in enumerate(lines) if line == f"# BEGIN {HOSTS_MARKER}")
    end = next(i for i, line in enumerate(lines) if line == f"# END {HOSTS_MARKER}")
    return [line for line in lines[begin + 1:end] if line.strip()]


# --- every host ---------------------------------------------------------------------------------------

def test_hostname(host, name):
    assert host.check_output("hostname") == name
    assert host.file("/etc/hostname").content_string.strip() == name


def test_etc_hosts_block(host, cluster):
    block = [line.split() for line in _block(host.file("/etc/hosts").content_string)]
    assert block == [[cluster.private_ip(n), n] for n in cluster.nodes]


def test_no_loopback_mapping_of_the_hostname(host, name, cluster):
    for line in host.file("/etc/hosts").content_string.splitlines():
        words = line.split("#")[0].split()
        if words and (words[0].startswith("127.") or words[0] == "::1"):
            assert name not in words[1:], line
    assert not re.search(r"^\s*127\.0\.1\.1\s", host.file("/etc/hosts").content_string, re.M)
    # What Hadoop and Ray see: the name resolves to the private address only.
    assert host.check_output(f"getent ahostsv4 {name}").split()[0] == cluster.private_ip(name)
    assert host.check_output(f"getent hosts {name}").split() == [cluster.private_ip(name), name]


def test_ssh_mesh(host, name, cluster):
    """The cluster user reaches every node, by name and by address, non-interactively, with host key
    checking on (no known_hosts of its own: the system file the ssh_mesh role writes)."""
    user = cluster.cluster_user
    failures = []
    with host.sudo(user):
        for target in cluster.nodes:
            for addr in (target, cluster.private_ip(target)):
                r = host.run(f"ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=5 "
                             f"{addr} hostname")
                if r.rc != 0 or r.stdout.strip() != target:
                    failures.append(f"{name} -> {addr}: rc={r.rc} {r.stdout.strip()} {r.stderr.strip()}")
    assert failures == []


def test_the_cluster_user_cannot_become_root(host, cluster):
    """Ray runs whatever a token holder submits as the cluster user: it is not root and cannot sudo
    (the login user, who can, is another user)."""
    user = cluster.cluster_user
    with host.sudo(user):
        uid = host.check_output("id -u")
        r = host.run("sudo -n true")
    assert uid != "0" and r.rc != 0, f"{user} (uid {uid}) can sudo: {r.stdout} {r.stderr}"


def test_workers_route_via_the_master(host, name, cluster):
    if name not in cluster.workers:
        pytest.skip("workers only")
    routes = host.check_output("ip -4 route show default").splitlines()
    iface = cluster.hostvars[name]["scalelab_private_interface"]
    assert len(routes) == 1 and routes[0].startswith(
        f"default via {cluster.private_ip(cluster.master)} dev {iface}"), routes


def test_workers_reach_the_package_archive(host, name, cluster):
    if name not in cluster.workers:
        pytest.skip("workers only")
    with host.sudo():
        r = host.run("apt-get update")
    assert r.rc == 0, r.stdout + r.stderr
    assert not re.search(r"^(Err:|W: Failed)", r.stdout + r.stderr, re.M), r.stdout + r.stderr


def test_master_nat_and_firewall_rules(host, name, cluster):
    if name != cluster.master:
        pytest.skip("master only")
    with host.sudo():
        assert host.check_output("sysctl -n net.ipv4.ip_forward") == "1"
        nat = host.check_output("iptables -w -t nat -S")
        filt = host.check_output("iptables -w -S")
        svc = host.service("scalelab-firewall")
        assert svc.is_enabled and svc.is_running
    for fwd in cluster.forwards:
        ip = cluster.private_ip(fwd["host"])
        assert re.search(rf"-A SCALELAB-PREROUTING .*--dport {fwd['port']} -j DNAT --to-destination {ip}:{fwd['dest_port']}$",
                         nat, re.M), nat
    assert "-A SCALELAB-POSTROUTING -s " + cluster.hostvars[name]["scalelab_private_cidr"] in nat
    # Each hook exactly once.
    for chain, table in (("PREROUTING", nat), ("POSTROUTING", nat)):
        assert table.count(f"-A {chain} -j SCALELAB-{chain}") == 1, table
    pub = cluster.hostvars[name]["scalelab_public_interface"]
    assert filt.count(f"-A INPUT -i {pub} -j SCALELAB-PUBLIC-IN") == 1, filt
    assert filt.count(f"-A FORWARD -i {pub} -j SCALELAB-PUBLIC-FWD") == 1, filt
    assert filt.count("-A FORWARD -j SCALELAB-FORWARD") == 1, filt


# --- from the controller ------------------------------------------------------------------------------

def _probe(addr: str, port: int, timeout: float = PROBE_TIMEOUT) -> str:
    """'open', 'refused' or 'timeout' for a TCP connect from the controller."""
    try:
        with socket.create_connection((addr, port), timeout=timeout):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "timeout"


LISTENER = r"""
import socket, sys, threading, time
addrs, ports = sys.argv[1].split(","), [int(p) for p in sys.argv[2].split(",")]
socks = []
for a in addrs:
    for p in ports:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((a, p)); s.listen(16); socks.append(s)
        except OSError:
            pass  # in use already: something (Ray, HDFS) listens there, which is as good
def serve(s):
    while True:
        c, _ = s.accept(); c.close()
for s in socks:
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print("listening", len(socks), flush=True)
time.sleep(float(sys.argv[3]))
"""


@pytest.fixture(scope="module")
def master_listener(cluster):
    """Listeners on the master's public and private addresses on every CLOSED_PORTS port, so that the
    probes below test the firewall and not merely the absence of a service.  They end by themselves
    after 120 s; the fixture stops them earlier by PID."""
    addrs = f"{cluster.public_ip},{cluster.private_ip(cluster.master)}"
    ports = ",".join(map(str, CLOSED_PORTS))
    cmd = (f"nohup python3 -c {_sq(LISTENER)} {addrs} {ports} 120 </dev/null "
           f">/tmp/scalelab-probe-listener.log 2>&1 & echo $!")
    r = cluster.ssh(cluster.master, cmd)
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout.strip().splitlines()[-1])
    time.sleep(1.0)
    yield
    cluster.ssh(cluster.master, f"kill {pid} 2>/dev/null || true")


def _sq(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


def test_public_address_answers_on_ssh_and_forwards_only(cluster, master_listener):
    open_ports = [22] + [f["port"] for f in cluster.forwards]
    ports = open_ports + CLOSED_PORTS
    with ThreadPoolExecutor(max_workers=len(ports)) as pool:
        seen = dict(zip(ports, pool.map(lambda p: _probe(cluster.public_ip, p), ports), strict=True))
    assert {p: seen[p] for p in open_ports} == {p: "open" for p in open_ports}
    # Dropped, not refused: the firewall, not a missing service, keeps them shut.
    assert {p: seen[p] for p in CLOSED_PORTS} == {p: "timeout" for p in CLOSED_PORTS}


def test_private_side_is_unaffected(cluster, master_listener):
    """The same ports on the master's private address answer to a worker."""
    if not cluster.workers:
        pytest.skip("no workers")
    worker, ip = cluster.workers[0], cluster.private_ip(cluster.master)
    probe = ("import socket, sys\n"
             "bad = []\n"
             "for p in map(int, sys.argv[2].split(',')):\n"
             "    try:\n"
             "        socket.create_connection((sys.argv[1], p), 3).close()\n"
             "    except OSError:\n"
             "        bad.append(p)\n"
             "print('not answering:', bad)\n"
             "sys.exit(1 if bad else 0)\n")
    r = cluster.ssh(worker, f"python3 -c {_sq(probe)} {ip} {','.join(map(str, CLOSED_PORTS))}")
    assert r.returncode == 0, r.stdout + r.stderr


def _ssh_banner(addr: str, port: int) -> str:
    with socket.create_connection((addr, port), timeout=5) as s:
        s.settimeout(5)
        return s.recv(256).decode(errors="replace").splitlines()[0]


def _scan_key(addr: str, port: int) -> str:
    """The ed25519 host key the sshd at addr:port presents ('type base64').  Compared, never trusted."""
    out = subprocess.run(["ssh-keyscan", "-T", "5", "-t", "ed25519", "-p", str(port), addr],
                         capture_output=True, text=True, timeout=30).stdout
    line = next(line for line in out.splitlines() if line and not line.startswith("#"))
    return " ".join(line.split()[1:3])


def test_dnat_forward_reaches_the_worker_sshd(cluster):
    assert cluster.forwards, "no scalelab_port_forwards in the inventory"
    for fwd in cluster.forwards:
        assert _ssh_banner(cluster.public_ip, fwd["port"]).startswith("SSH-2.0-")
        # The sshd behind the forward is the target worker's: same host key.
        r = cluster.ssh(fwd["host"], "cat /etc/ssh/ssh_host_ed25519_key.pub")
        assert r.returncode == 0, r.stderr
        assert _scan_key(cluster.public_ip, fwd["port"]) == " ".join(r.stdout.split()[:2])
