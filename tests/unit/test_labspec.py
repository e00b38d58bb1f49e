"""The lab's shape and generated files, computed from inventory/lab/group_vars: no root, no hosts."""
from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scalelab import labspec
from scalelab.errors import UserError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def inv(tmp_path: Path) -> Path:
    """A copy of the lab inventory's group_vars that a test may break."""
    dst = tmp_path / "lab"
    shutil.copytree(REPO / "inventory/lab/group_vars", dst / "group_vars")
    return dst


def _edit(inv: Path, name: str, **changes) -> None:
    p = inv / "group_vars/all" / name
    data = yaml.safe_load(p.read_text())
    data.update(changes)
    p.write_text(yaml.safe_dump(data))


def test_default_spec_has_seed_topology(inv: Path) -> None:
    spec = labspec.load_spec(inv)
    names = [h.name for h in spec.hosts]
    assert names == ["master", "worker1", "worker2"]
    master, *workers = spec.hosts
    assert master.public_ip and all(w.public_ip is None for w in workers)
    priv = ipaddress.ip_network(spec.private_cidr)
    pub = ipaddress.ip_network(spec.public_cidr)
    assert all(ipaddress.ip_address(h.private_ip) in priv for h in spec.hosts)
    assert len({h.private_ip for h in spec.hosts}) == 3
    # the master has a leg on each bridge, workers only on the private one
    assert {i.bridge for i in master.interfaces} == {spec.public_bridge, spec.private_bridge}
    assert all({i.bridge for i in w.interfaces} == {spec.private_bridge} for w in workers)
    # the controller has an address on the public network only
    assert ipaddress.ip_address(spec.controller_ip) in pub
    assert ipaddress.ip_address(spec.controller_ip) not in priv


def test_interface_names_fit_the_kernel_limit(inv: Path) -> None:
    spec = labspec.load_spec(inv, workers=8)
    names = [i.host_side for h in spec.hosts for i in h.interfaces] + [spec.public_bridge, spec.private_bridge]
    assert all(len(n) <= 15 for n in names)
    assert len(set(names)) == len(names)


def test_workers_option_changes_host_count(inv: Path) -> None:
    assert len(labspec.load_spec(inv, workers=0).hosts) == 1
    assert len(labspec.load_spec(inv, workers=5).hosts) == 6


@pytest.mark.parametrize("change, message", [
    ({"scalelab_lab_public_cidr": "10.77.1.0/25"}, "overlaps"),
    ({"scalelab_lab_controller_ip": "10.99.0.1"}, "is not in scalelab_lab_public_cidr"),
    ({"scalelab_lab_master_public_ip": "10.77.0.1"}, "must differ"),
    ({"scalelab_lab_name": "Bad-Name"}, "lower-case"),
    ({"scalelab_lab_public_cidr": "10.77.0.300/24"}, "bad lab address"),
    ({"scalelab_lab_workers": 99}, "between 0 and"),
    ({"scalelab_lab_suite": None}, "scalelab_lab_suite is not set"),
])
def test_bad_lab_settings_fail_in_one_line(inv: Path, change: dict, message: str) -> None:
    _edit(inv, "lab.yml", **change)
    with pytest.raises(UserError, match=message) as exc:
        labspec.load_spec(inv)
    assert "\n" not in str(exc.value)


def test_missing_or_broken_vars_file(inv: Path) -> None:
    (inv / "group_vars/all/network.yml").unlink()
    with pytest.raises(UserError, match="network.yml is missing"):
        labspec.load_spec(inv)
    (inv / "group_vars/all/network.yml").write_text("a: [1,\n")
    with pytest.raises(UserError, match="not valid YAML"):
        labspec.load_spec(inv)


def test_unknown_host_name_lists_the_hosts(inv: Path) -> None:
    with pytest.raises(UserError, match="master, worker1, worker2"):
        labspec.load_spec(inv).host("slave9")


def test_inventory_groups_and_connection(inv: Path) -> None:
    spec = labspec.load_spec(inv)
    data = yaml.safe_load(labspec.render_inventory(spec))
    cluster = data["all"]["children"]["cluster"]["children"]
    assert set(cluster) == {"masters", "workers"}
    assert list(cluster["masters"]["hosts"]) == ["master"]
    assert list(cluster["workers"]["hosts"]) == ["worker1", "worker2"]
    assert cluster["workers"]["hosts"]["worker1"] == {"scalelab_private_ip": "10.77.1.2",
                                                      "ansible_host": "{{ scalelab_private_ip }}"}
    assert cluster["masters"]["hosts"]["master"]["scalelab_public_ip"] == spec.master_public_ip
    assert "vars" not in data["all"]      # how to log in is in group_vars/*/connection.yml, as for okeanos


def _shape(doc):
    """The structure of an inventory document with the values a user edits (addresses, names) blanked."""
    if isinstance(doc, dict):
        return {("HOST" if k.startswith(("master", "slave", "worker")) and k not in ("masters",) else k): _shape(v)
                for k, v in doc.items()}
    return doc if isinstance(doc, str) and "{{" in doc else "VALUE"


def test_lab_inventory_has_the_shape_of_okeanos(inv: Path) -> None:
    """Every lab test exercises what a real-cluster user edits: the same files, groups, variables and
    templated values as inventory/okeanos; only names and addresses differ."""
    okeanos = REPO / "inventory/okeanos"
    lab = yaml.safe_load(labspec.render_inventory(labspec.load_spec(inv)))
    real = yaml.safe_load((okeanos / "hosts.yml").read_text())
    workers = lambda d: d["all"]["children"]["cluster"]["children"]["workers"]["hosts"]  # noqa: E731
    assert _shape(workers(lab))["HOST"] == _shape(workers(real))["HOST"]
    assert _shape(lab) == _shape(real)
    files = lambda root: sorted(str(p.relative_to(root)) for p in (root / "group_vars").rglob("*.yml"))  # noqa: E731
    assert sorted(set(files(REPO / "inventory/lab")) - {"group_vars/all/lab.yml"}) == files(okeanos)
    for f in files(okeanos):
        assert set(yaml.safe_load((okeanos / f).read_text())) <= set(yaml.safe_load((REPO / "inventory/lab" / f).read_text())), f
    lab_conn = (REPO / "inventory/lab/group_vars/workers/connection.yml").read_text()
    assert "ProxyJump={{ ansible_user }}@{{ hostvars[groups['masters'][0]]['scalelab_public_ip'] }}" in lab_conn


def test_inventory_is_read_by_ansible(inv: Path) -> None:
    """ansible-inventory itself agrees with our groups (the inventory is the one source of truth)."""
    spec = labspec.load_spec(inv)
    (inv / "hosts.yml").write_text(labspec.render_inventory(spec))
    out = subprocess.run([str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(inv), "--list"],
                         capture_output=True, text=True, check=True).stdout
    data = yaml.safe_load(out)
    assert sorted(data["workers"]["hosts"]) == ["worker1", "worker2"]
    assert data["masters"]["hosts"] == ["master"]
    assert sorted(data["cluster"]["children"]) == ["masters", "workers"]
    hv = data["_meta"]["hostvars"]["worker2"]
    assert hv["scalelab_private_ip"] == "10.77.1.3" and hv["scalelab_private_cidr"] == spec.private_cidr


def _master_forwards(inv: Path) -> list[tuple[int, str]]:
    out = subprocess.run([str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(inv), "--host", "master"],
                         capture_output=True, text=True, check=True).stdout
    return [(f["port"], f["host"]) for f in yaml.safe_load(out)["scalelab_port_forwards"]]


@pytest.mark.parametrize(("workers", "forwards"), [
    (2, [(10022, "worker1"), (13389, "worker2")]),
    (1, [(10022, "worker1")]),
    (0, []),
    (3, [(10022, "worker1"), (13389, "worker2")]),
])
def test_a_lab_forwards_only_to_the_workers_it_has(inv: Path, workers: int, forwards: list) -> None:
    """network.yml names worker2; a lab of another size still has an inventory site.yml accepts."""
    (inv / "hosts.yml").write_text(labspec.render_inventory(labspec.load_spec(inv, workers=workers)))
    assert _master_forwards(inv) == forwards


def test_a_forward_to_a_mistyped_host_is_kept_for_the_preflight(inv: Path) -> None:
    _edit(inv, "network.yml", scalelab_port_forwards=[{"port": 10022, "host": "wroker1", "dest_port": 22},
                                                      {"port": 13389, "host": "worker2", "dest_port": 22}])
    (inv / "hosts.yml").write_text(labspec.render_inventory(labspec.load_spec(inv, workers=1)))
    assert _master_forwards(inv) == [(10022, "wroker1")]


def test_ssh_config_jumps_through_the_master_with_host_keys_checked(inv: Path) -> None:
    spec = labspec.load_spec(inv)
    cfg = labspec.render_ssh_config(spec)
    blocks = {b.split()[0]: b for b in cfg.split("\nHost ")[1:]}
    assert "ProxyJump" not in blocks["master"]
    assert f"ProxyJump user@{spec.master_public_ip}" in blocks["worker1"]
    assert "User user" in cfg and "root" not in cfg
    assert "StrictHostKeyChecking yes" in cfg
    assert "StrictHostKeyChecking " + "no" not in cfg  # (split so the repo-wide pattern scan stays clean)
    assert f"UserKnownHostsFile {spec.known_hosts}" in cfg


def test_known_hosts_name_every_host_by_name_and_address(inv: Path) -> None:
    spec = labspec.load_spec(inv)
    keys = {h.name: [f"ssh-ed25519 AAAAkey{h.name} root@x"] for h in spec.hosts}
    lines = labspec.render_known_hosts(spec, keys).splitlines()
    assert lines[0] == f"master,{spec.master_public_ip} ssh-ed25519 AAAAkeymaster"
    assert lines[1].startswith("worker1,10.77.1.2 ssh-ed25519")


def test_networkd_workers_have_no_default_route(inv: Path) -> None:
    spec = labspec.load_spec(inv)
    master, worker = spec.hosts[0], spec.hosts[1]
    mfiles = labspec.render_networkd(master, spec.controller_ip)
    wfiles = labspec.render_networkd(worker, spec.controller_ip)
    assert any("Gateway=" + spec.controller_ip in body for body in mfiles.values())
    assert not any("Gateway=" in body for body in wfiles.values())
    assert list(wfiles) == ["10-eth1.network"]
    assert "Address=10.77.1.2/24" in wfiles["10-eth1.network"]


def test_fresh_etc_hosts_looks_like_a_cloud_image(inv: Path) -> None:
    # the lab starts with Ubuntu's 127.0.1.1 line so that the hosts role is tested on removing it
    host = labspec.load_spec(inv).hosts[1]
    assert "127.0.1.1\tworker1" in labspec.render_etc_hosts(host)
