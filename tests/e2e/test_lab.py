"""The lab itself: three booted hosts with the seed's topology, power cuts, and a clean teardown.

This module runs its own lab (name `sltest`, subnets 10.78.x) so it can end by tearing it down and
checking that nothing is left behind.
"""
from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from scalelab import lab, labspec
from tests.e2e.labutil import BIN, REPO, fab, make_inventory, require_lab_machine, running_lab, ssh

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def tlab(tmp_path_factory):
    require_lab_machine()
    inv = make_inventory(tmp_path_factory.mktemp("inv") / "lab", "sltest", 78)
    with running_lab(inv) as spec:
        yield spec


def test_three_hosts_with_distinct_identities(tlab) -> None:
    seen = {}
    for h in tlab.hosts:
        out = ssh(tlab, h.name, "hostname; cat /etc/machine-id; cat /etc/ssh/ssh_host_ed25519_key.pub;"
                                " systemctl is-system-running --wait").stdout.split("\n")
        seen[h.name] = out
        assert out[0] == h.name
        assert out[3] in ("running", "degraded"), out
    assert len({v[1] for v in seen.values()}) == 3, "machine-ids must differ"
    assert len({v[2].split()[1] for v in seen.values()}) == 3, "ssh host keys must differ"


def test_ansible_reaches_every_host_workers_through_the_master(tlab) -> None:
    inv = tlab.inventory_dir
    out = subprocess.run([str(BIN / "ansible"), "all", "-i", str(inv), "-m", "ping"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == 3
    hosts = yaml.safe_load(tlab.hosts_file.read_text())
    workers = hosts["all"]["children"]["cluster"]["children"]["workers"]["hosts"]
    assert all(v["scalelab_private_ip"].startswith("10.78.1.") for v in workers.values())
    assert all(v["ansible_host"] == "{{ scalelab_private_ip }}" for v in workers.values())
    assert f"ProxyJump user@{tlab.master_public_ip}" in tlab.ssh_config.read_text()
    assert "StrictHostKeyChecking yes" in tlab.ssh_config.read_text()
    # the ssh client's files are not in the inventory directory, where Ansible would parse them
    assert sorted(p.name for p in inv.iterdir() if p.is_file()) == ["hosts.yml"]
    assert "Failed to parse" not in out.stdout + out.stderr and "[WARNING]" not in out.stdout + out.stderr


def test_hosts_log_in_as_a_sudo_user_and_refuse_root(tlab) -> None:
    """As the seed's cloud VMs: the controller's key opens `user`, whose sudo needs no password; root
    cannot log in over SSH, not even with the same key."""
    for h in tlab.hosts:
        me = subprocess.run(lab.hosts.ssh_cmd(tlab, h.name, "id -un; sudo -n id -u"), capture_output=True, text=True,
                            timeout=60)
        assert me.returncode == 0 and me.stdout.split() == ["user", "0"], me.stdout + me.stderr
        as_root = subprocess.run(["ssh", "-F", str(tlab.ssh_config), "-o", "BatchMode=yes", "-o", "User=root",
                                  h.name, "true"], capture_output=True, text=True, timeout=60)
        assert as_root.returncode == 255 and "Permission denied" in as_root.stderr, as_root.stderr


def test_controller_has_no_address_on_the_private_network(tlab) -> None:
    addrs = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    assert "10.78.1." not in addrs
    assert "10.78.0.1/24" in addrs
    route = subprocess.run(["ip", "route", "get", "10.78.1.2"], capture_output=True, text=True)
    assert route.returncode != 0 or "unreachable" in route.stdout
    # and so a worker cannot be reached directly, only through the master
    s = socket.socket()
    s.settimeout(2)
    assert s.connect_ex(("10.78.1.2", 22)) != 0
    s.close()


def test_workers_have_no_default_route_master_has_one(tlab) -> None:
    assert "default via 10.78.0.1" in ssh(tlab, "master", "ip route").stdout
    for w in ("worker1", "worker2"):
        assert "default" not in ssh(tlab, w, "ip route").stdout
    # the master sits on both networks, a worker only on the private one
    assert "10.78.0.10/24" in ssh(tlab, "master", "ip -o -4 addr").stdout
    assert "10.78.0." not in ssh(tlab, "worker1", "ip -o -4 addr").stdout


def test_lab_egress_reaches_the_package_archive_only(tlab) -> None:
    out = ssh(tlab, "master", "timeout 120 apt-get update -qq && echo APT-OK", timeout=180)
    assert "APT-OK" in out.stdout
    # the controller itself offers the lab nothing but DNS: its sshd is refused
    probe = ("python3 -c 'import socket;s=socket.socket();s.settimeout(3);"
             "print(s.connect_ex((\"10.78.0.1\",22)))'")
    assert ssh(tlab, "master", probe).stdout.strip() != "0"
    rules = subprocess.run(["iptables", "-S", tlab.chain], capture_output=True, text=True).stdout
    assert "--dports 80,443 -j ACCEPT" in rules
    assert rules.rstrip().splitlines()[-1].endswith("REJECT --reject-with icmp-admin-prohibited")


@pytest.mark.parametrize("host", ["worker1", "master"])
def test_kill_is_a_power_cut_and_start_keeps_the_disk(tlab, host: str) -> None:
    inv = str(tlab.inventory_dir)
    ssh(tlab, host, "echo precious > /root/keep.txt && sync")
    fab("lab-kill", host, "--inventory", inv)
    assert not lab.cgroups.host_running(tlab, host)
    try:   # refused, unreachable, or no answer at all (the master's connect() to a neighbour it still
        # thinks alive keeps retrying): anything but a shell
        answered = ssh(tlab, host, "true", timeout=30, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        answered = False
    assert not answered
    status = fab("lab-status", "--inventory", inv).stdout
    assert any(host in line and "stopped" in line for line in status.splitlines()), status
    fab("lab-start", host, "--inventory", inv)
    assert ssh(tlab, host, "cat /root/keep.txt").stdout.strip() == "precious"
    assert ssh(tlab, host, "hostname").stdout.strip() == host
    # every host still answers after the power cut of one of them
    for h in tlab.hosts:
        ssh(tlab, h.name, "true")


def test_a_host_whose_sshd_never_starts_gets_one_restart_then_ssh_words_and_its_console(tlab) -> None:
    """The lab gives a silent host one more boot, then names it with what ssh said and the tail of its
    console (what a failed `fab lab-up` in CI shows: the boot messages say why)."""
    ssh(tlab, "worker2", "systemctl mask ssh.service ssh.socket")
    lab.hosts.kill_host(tlab, "worker2")
    said: list[str] = []
    try:
        with pytest.raises(lab.hosts.HostUnreachable) as failed:
            lab.hosts.boot(tlab, [tlab.host("worker2")], say=said.append, timeout=8)
    finally:  # unmasked on its disk; then it boots as before
        for unit in ("ssh.service", "ssh.socket"):
            (lab.hosts.host_root(tlab, "worker2") / "etc/systemd/system" / unit).unlink(missing_ok=True)
        lab.hosts.kill_host(tlab, "worker2")
        lab.hosts.boot(tlab, [tlab.host("worker2")])
    msg = str(failed.value)
    assert msg.startswith("worker2 did not answer on ssh within 8 s; ssh said: "), msg
    head, _, console = msg.partition("\n--- console of worker2 (last lines) ---\n")
    assert len(head.split("ssh said: ")[1]) > 0 and len(console.splitlines()) >= 3, msg
    assert "\x1b[" not in console
    assert any(line.endswith("worker2: restarting it once") for line in said), said
    assert ssh(tlab, "worker2", "hostname").stdout.strip() == "worker2"


def test_a_host_that_cannot_be_reached_stops_the_whole_provision(tlab) -> None:
    """A cluster is provisioned whole or not at all: the first unreachable host ends site.yml for every
    host, at the first play that meets it, instead of provisioning the others into a partial cluster."""
    inv = str(tlab.inventory_dir)
    fab("lab-kill", "worker2", "--inventory", inv)
    try:
        t0 = time.monotonic()
        proc = subprocess.run([str(BIN / "ansible-playbook"), "site.yml", "-i", inv], cwd=REPO,
                              capture_output=True, text=True, timeout=900)
        took = time.monotonic() - t0
    finally:
        fab("lab-start", "worker2", "--inventory", inv)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert re.search(r"^worker2\s+:.*unreachable=1", proc.stdout, re.M), out[-3000:]
    # every host stopped with it, at the first play (facts): no role touched the master or worker1 (the
    # controller's own preparation, e.g. the Hadoop runtime's build, may run: it touches no host)
    touched = [m.group(0) for m in re.finditer(r"^TASK \[\w+ : [^\]]*\](?:(?!^TASK )[\s\S])*?^\w+: \[(?!localhost)",
                                               proc.stdout, re.M)]
    assert not touched, touched[:3]
    assert took < 120, f"the run took {took:.0f} s to stop"


def test_bad_host_name_is_one_clear_line(tlab) -> None:
    out = fab("lab-kill", "nosuchhost", "--inventory", str(tlab.inventory_dir), check=False)
    assert out.returncode == 2
    assert "no lab host named 'nosuchhost'" in out.stdout + out.stderr


def test_down_leaves_nothing_behind(tlab) -> None:
    fab("lab-down", "--inventory", str(tlab.inventory_dir))
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert tlab.public_bridge not in links and tlab.private_bridge not in links
    assert "sltest" not in links
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    assert "10.78." not in routes
    mounts = Path("/proc/self/mounts").read_text()
    assert str(tlab.state_dir) not in mounts
    for table in ("filter", "nat"):
        rules = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True).stdout
        assert tlab.chain not in rules
    procs = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tlab.state_dir) not in procs
    assert not any(Path(r, tlab.name).exists() for r in lab.cgroups.CGROUP_ROOTS)
    assert not tlab.hosts_file.exists()
    assert not tlab.ssh_config.exists() and not tlab.known_hosts.exists()


def test_a_process_left_in_only_one_cgroup_hierarchy_still_counts_and_dies(tmp_path) -> None:
    """Seen after growth + power cuts: a host's nspawn left only in the v1 ``systemd`` hierarchy (its
    unified cgroup gone). ``host_running`` must still see it and ``kill_host`` must end it, or ``lab-down``
    leaves the host running."""
    require_lab_machine()
    spec = labspec.load_spec(make_inventory(tmp_path / "lab", "slcg", 74))
    v1 = lab.cgroups.CGROUP_ROOTS[1] / spec.name / "worker1" / "supervisor"
    v1.mkdir(parents=True)
    proc = subprocess.Popen(["sleep", "300"])
    try:
        (v1 / "cgroup.procs").write_text(str(proc.pid))
        assert not (lab.cgroups.CGROUP_ROOTS[0] / spec.name / "worker1").exists()
        assert lab.cgroups.host_running(spec, "worker1")
        lab.hosts.kill_host(spec, "worker1", timeout=10)
        assert proc.wait(timeout=10) == -9
        assert not lab.cgroups.host_running(spec, "worker1")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for root in lab.cgroups.CGROUP_ROOTS:
            lab.cgroups.rmdir_tree(root / spec.name)
