"""Reading the cluster from the Ansible inventory (ansible-inventory itself, no hosts contacted)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from scalelab import inventory, labspec
from scalelab.errors import UserError
from tests.unit.test_labspec import inv  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def lab_inv(inv: Path) -> Path:  # noqa: F811
    (inv / "hosts.yml").write_text(labspec.render_inventory(labspec.load_spec(inv)))
    return inv


def test_lab_inventory_master_first_and_ssh_argv(lab_inv: Path) -> None:
    c = inventory.load(lab_inv)
    assert [n.name for n in c.nodes] == ["master", "worker1", "worker2"]
    assert c.master.private_ip == "10.77.1.1"
    argv = c.node("worker2").ssh_argv()
    assert argv[-1] == "user@10.77.1.3"
    assert "-F" in argv and "BatchMode=yes" in argv and "ProxyJump=user@10.77.0.10" in argv
    assert not any("{{" in a for a in argv)


def _okeanos_filled(tmp_path: Path) -> Path:
    """inventory/okeanos with the one value a user must edit filled in."""
    dst = tmp_path / "okeanos"
    shutil.copytree(REPO / "inventory/okeanos", dst)
    hosts = dst / "hosts.yml"
    hosts.write_text(hosts.read_text().replace("203.0.113.10", "198.51.100.7"))
    return dst


def test_okeanos_ssh_commands_are_rendered_and_go_through_the_master_as_user(tmp_path: Path) -> None:
    c = inventory.load(_okeanos_filled(tmp_path))
    assert c.master.address == "198.51.100.7"
    for n in c.nodes:
        argv = n.ssh_argv()
        assert not any("{{" in a for a in argv), argv
        assert argv[-1] == f"user@{n.address}"
    for w in c.nodes[1:]:
        assert "ProxyJump=user@198.51.100.7" in w.ssh_argv()
    # not root: what needs root goes through sudo, which must not wait for a password
    assert c.master.as_root("id -u") == "sudo -n sh -c 'id -u'"
    # the cluster runs as a user without sudo: a Ray job (anyone with the token) is not root
    assert inventory.node_var(c, "scalelab_cluster_user") == "scalelab" != c.master.login_user


def test_a_value_ansible_cannot_render_is_one_line(tmp_path: Path) -> None:
    okeanos = _okeanos_filled(tmp_path)
    hosts = okeanos / "hosts.yml"
    hosts.write_text(hosts.read_text().replace("scalelab_public_ip: 198.51.100.7", "scalelab_publik_ip: 198.51.100.7"))
    with pytest.raises(UserError) as err:
        inventory.load(okeanos)
    msg = str(err.value)
    assert "\n" not in msg and "host master: cannot render ansible_host" in msg and "scalelab_public_ip" in msg


def test_sudo_that_wants_a_password_is_one_line(lab_inv: Path) -> None:
    c = inventory.load(lab_inv)
    with pytest.raises(UserError, match="sudo asks user for a password: give user passwordless sudo"):
        inventory.sudo_refused(c.master, "sudo: a password is required\n")
    inventory.sudo_refused(c.master, "some other error")   # anything else is the caller's to report


def test_okeanos_inventory_reads(tmp_path: Path) -> None:
    c = inventory.load(_okeanos_filled(tmp_path))
    assert c.master.name == "master" and c.master.private_ip == "192.168.0.1"
    assert {n.private_ip for n in c.nodes} == {"192.168.0.1", "192.168.0.2", "192.168.0.4"}


def test_nodes_beyond_the_cluster_is_one_clear_line(lab_inv: Path) -> None:
    c = inventory.load(lab_inv)
    assert [n.name for n in c.first(2)] == ["master", "worker1"]
    with pytest.raises(UserError, match=r"--nodes 4 but the cluster has 3 hosts \(master, worker1, worker2\)"):
        c.first(4)
    with pytest.raises(UserError, match="at least 1"):
        c.first(0)


def test_lab_not_up(inv: Path) -> None:  # noqa: F811
    with pytest.raises(UserError, match="fab lab-up"):
        inventory.load(inv)


def test_no_master(tmp_path: Path) -> None:
    (tmp_path / "hosts.yml").write_text("all:\n  children:\n    workers:\n      hosts:\n        w1: {scalelab_private_ip: 10.0.0.2}\n")
    with pytest.raises(UserError, match="exactly one host in group 'masters'"):
        inventory.load(tmp_path / "hosts.yml")


def test_a_hosts_file_ansible_cannot_parse_is_named_with_its_line(tmp_path: Path) -> None:
    """ansible-inventory exits 0 and warns; the load said the inventory had no master."""
    okeanos = _okeanos_filled(tmp_path)
    hosts = okeanos / "hosts.yml"
    hosts.write_text(hosts.read_text().replace("workers:", "workers: [", 1))
    with pytest.raises(UserError) as err:
        inventory.load(okeanos)
    msg = str(err.value)
    assert msg.startswith(f"cannot read inventory {okeanos}: {hosts} is not a valid inventory (YAML "
                          "parsing failed")
    assert f" at {hosts}:" in msg and msg.endswith("; fix it") and "\n" not in msg


def test_node_defaults_are_the_roles_defaults() -> None:
    """The controller's fallbacks (runner, status, put-data) name the same paths and ports the roles use."""
    import yaml

    roles = Path(__file__).resolve().parents[2] / "roles"
    defaults: dict = {}
    for f in roles.glob("*/defaults/main.yml"):
        defaults.update(yaml.safe_load(f.read_text()) or {})
    shared = {k: v for k, v in inventory.NODE_DEFAULTS.items() if k in defaults}
    assert {"ray_dashboard_port", "hadoop_home", "hadoop_data_path", "hadoop_namenode_rpc_port"} <= set(shared)
    assert {k: defaults[k] for k in shared} == shared
