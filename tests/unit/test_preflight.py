"""The preflight play rejects broken inventories in one line, before any host is touched.

Runs the real `ansible-playbook playbooks/preflight.yml -i <inventory>` on temporary inventories
(hosts point at 127.0.0.1:9 so that even a preflight that let a broken inventory through could
reach nothing), plus direct calls of the filter functions for the finer cases.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from scalelab import labspec

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = ROOT / ".venv/bin/ansible-playbook"
PLAYBOOK = ROOT / "playbooks/preflight.yml"

_spec = importlib.util.spec_from_file_location(
    "scalelab_inventory", ROOT / "playbooks/filter_plugins/scalelab_inventory.py"
)
inv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(inv)

pytestmark = pytest.mark.skipif(not ANSIBLE_PLAYBOOK.exists(), reason="needs .venv/bin/ansible-playbook")

UNREACHABLE = {"ansible_host": "127.0.0.1", "ansible_port": 9, "ansible_connection": "ssh"}


def lab_like() -> dict:
    """An inventory shaped like the one `fab lab-up` writes, with the lab's network variables."""
    return {
        "all": {
            "vars": {
                "scalelab_private_cidr": "10.77.1.0/24",
                "scalelab_private_interface": "eth1",
                "scalelab_public_interface": "eth2",
                "scalelab_public_gateway": "10.77.0.1",
                "scalelab_port_forwards": [
                    {"port": 10022, "host": "worker1", "dest_port": 22},
                    {"port": 13389, "host": "worker2", "dest_port": 22},
                ],
                "scalelab_cluster_user": "scalelab",
            },
            "children": {
                "cluster": {
                    "children": {
                        "masters": {"hosts": {"master": {**UNREACHABLE, "scalelab_public_ip": "10.77.0.10",
                                                        "scalelab_private_ip": "10.77.1.1"}}},
                        "workers": {"hosts": {
                            "worker1": {**UNREACHABLE, "scalelab_private_ip": "10.77.1.2"},
                            "worker2": {**UNREACHABLE, "scalelab_private_ip": "10.77.1.3"},
                        }},
                    }
                }
            },
        }
    }


def _groups(doc):
    return doc["all"]["children"]["cluster"]["children"]


def no_master(doc):
    del _groups(doc)["masters"]


def two_masters(doc):
    _groups(doc)["masters"]["hosts"]["master2"] = {**UNREACHABLE, "scalelab_private_ip": "10.77.1.9",
                                                  "scalelab_public_ip": "10.77.0.11"}


def duplicate_ip(doc):
    _groups(doc)["workers"]["hosts"]["worker2"]["scalelab_private_ip"] = "10.77.1.2"


def missing_ip(doc):
    del _groups(doc)["workers"]["hosts"]["worker1"]["scalelab_private_ip"]


def unknown_forward(doc):
    doc["all"]["vars"]["scalelab_port_forwards"][1]["host"] = "worker9"


def outside_cidr(doc):
    _groups(doc)["workers"]["hosts"]["worker2"]["scalelab_private_ip"] = "10.99.0.3"


def forward_port_22(doc):
    doc["all"]["vars"]["scalelab_port_forwards"][0]["port"] = 22


def master_is_worker(doc):
    _groups(doc)["workers"]["hosts"]["master"] = {}


def worker_public_ip(doc):
    _groups(doc)["workers"]["hosts"]["worker1"]["scalelab_public_ip"] = "10.77.0.12"


def worker_global_ip(doc):
    doc["all"]["vars"]["scalelab_private_cidr"] = "0.0.0.0/0"
    _groups(doc)["workers"]["hosts"]["worker2"]["scalelab_private_ip"] = "8.8.8.8"


def same_interface(doc):
    doc["all"]["vars"]["scalelab_private_interface"] = "eth2"


def forward_master_ssh_port(doc):
    _groups(doc)["masters"]["hosts"]["master"]["ansible_port"] = 10022


def public_is_private(doc):
    _groups(doc)["masters"]["hosts"]["master"]["scalelab_public_ip"] = "10.77.1.3"


# case -> (mutation, the one line preflight must print)
BROKEN = {
    "no_master": (no_master, "preflight: no master: group 'masters' is missing or empty; put exactly one host in it"),
    "two_masters": (two_masters, "preflight: 2 masters (master, master2): group 'masters' must hold exactly one host"),
    "duplicate_ip": (duplicate_ip, "preflight: duplicate scalelab_private_ip 10.77.1.2: used by worker1 and worker2"),
    "missing_ip": (missing_ip, "preflight: host 'worker1' has no scalelab_private_ip (its address on the private network)"),
    "unknown_forward": (
        unknown_forward,
        "preflight: port forward 13389 -> worker9:22 names a host that is not in the inventory "
        "(known: master, worker1, worker2)",
    ),
    "outside_cidr": (outside_cidr, "preflight: host 'worker2': scalelab_private_ip 10.99.0.3 is outside scalelab_private_cidr 10.77.1.0/24"),
    "forward_port_22": (forward_port_22, "preflight: port forward 22 -> worker1:22: port 22 is the master's own sshd"),
    "master_is_worker": (master_is_worker, "preflight: host 'master' is in both 'masters' and 'workers'"),
    "worker_public_ip": (worker_public_ip, "preflight: worker 'worker1' has a scalelab_public_ip; workers have "
                         "only a private address"),
    "worker_global_ip": (worker_global_ip, "preflight: host 'worker2': scalelab_private_ip 8.8.8.8 is a public "
                         "address"),
    "same_interface": (same_interface, "preflight: scalelab_private_interface and scalelab_public_interface are "
                       "both 'eth2'"),
    "forward_master_ssh_port": (forward_master_ssh_port, "preflight: port forward 10022 -> worker1:22: port 10022 "
                                "is the master's own ssh port"),
    "public_is_private": (public_is_private, "preflight: master 'master': scalelab_public_ip 10.77.1.3 is also the "
                          "private address of 'worker2'"),
}


def run_playbook(playbook: Path, inventory: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ANSIBLE_PLAYBOOK), str(playbook), "-i", str(inventory), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"PATH": f"{ROOT / '.venv/bin'}:/usr/bin:/bin", "ANSIBLE_FORCE_COLOR": "0", "NO_COLOR": "1",
             "HOME": str(inventory.parent), "LANG": "C.UTF-8"},
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Every preflight run of this module, two at a time (each is ~2 s of CPU)."""
    jobs: dict[str, tuple] = {}
    for case, (mutate, _) in BROKEN.items():
        doc = lab_like()
        mutate(doc)
        d = tmp_path_factory.mktemp(case)
        (d / "hosts.yml").write_text(yaml.safe_dump(doc))
        jobs[case] = (PLAYBOOK, d / "hosts.yml")
    d = tmp_path_factory.mktemp("good_lab")
    (d / "hosts.yml").write_text(yaml.safe_dump(lab_like()))
    jobs["good_lab"] = (PLAYBOOK, d / "hosts.yml")
    jobs["okeanos_as_shipped"] = (PLAYBOOK, ROOT / "inventory/okeanos")
    filled = tmp_path_factory.mktemp("good_okeanos") / "okeanos"
    shutil.copytree(ROOT / "inventory/okeanos", filled)
    hosts = filled / "hosts.yml"
    hosts.write_text(hosts.read_text().replace("203.0.113.10", "10.250.0.10"))  # a user's real address
    jobs["good_okeanos"] = (PLAYBOOK, filled)
    # The lab's inventory as `fab lab-up` writes it (rendered here: no lab needs to run).
    real_lab = tmp_path_factory.mktemp("good_real_lab") / "lab"
    shutil.copytree(ROOT / "inventory/lab/group_vars", real_lab / "group_vars")
    (real_lab / "hosts.yml").write_text(labspec.render_inventory(labspec.load_spec(real_lab)))
    jobs["good_real_lab"] = (PLAYBOOK, real_lab)
    # ... and as `fab lab-up --workers 1` writes it: network.yml still names worker2's forward.
    one_worker = tmp_path_factory.mktemp("good_one_worker_lab") / "lab"
    shutil.copytree(ROOT / "inventory/lab/group_vars", one_worker / "group_vars")
    (one_worker / "hosts.yml").write_text(labspec.render_inventory(labspec.load_spec(one_worker, workers=1)))
    jobs["good_one_worker_lab"] = (PLAYBOOK, one_worker)
    # The whole site.yml on a broken inventory: must stop in preflight, no host play may start,
    # also with --limit (localhost is then not in the play; the check runs delegated to it).
    jobs["site_broken"] = (ROOT / "site.yml", jobs["duplicate_ip"][1])
    jobs["site_broken_limit"] = (ROOT / "site.yml", jobs["missing_ip"][1], "--limit", "worker2")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run_playbook, *job) for name, job in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def _fail_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if re.match(r"fatal: \[(localhost|\S+ -> localhost)\]: FAILED!", line)]


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_inventory_fails_in_one_line(runs, case):
    result = runs[case]
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    fails = _fail_lines(out)
    assert len(fails) == 1, out
    msg = re.search(r'"msg": "(.*)"', fails[0]).group(1)
    assert msg.startswith(BROKEN[case][1]), out
    assert "\\n" not in msg
    # Nothing but the controller was involved.
    assert "Gathering Facts" not in out and "UNREACHABLE" not in out


@pytest.mark.parametrize("case", ["good_lab", "good_okeanos", "good_real_lab", "good_one_worker_lab"])
def test_good_inventory_passes(runs, case):
    result = runs[case]
    assert result.returncode == 0, result.stdout + result.stderr
    assert "failed=0" in result.stdout


def test_okeanos_placeholder_stops_preflight(runs):
    """As shipped, inventory/okeanos holds a documentation address: preflight stops before contacting it."""
    result = runs["okeanos_as_shipped"]
    out = result.stdout + result.stderr
    assert result.returncode != 0
    fails = _fail_lines(out)
    assert len(fails) == 1, out
    assert "scalelab_public_ip 203.0.113.10 is a documentation placeholder" in fails[0]


@pytest.mark.parametrize(("case", "message"), [("site_broken", "preflight: duplicate scalelab_private_ip"),
                                               ("site_broken_limit", "preflight: host 'worker1' has no scalelab_private_ip")])
def test_site_stops_in_preflight(runs, case, message):
    result = runs[case]
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert len(_fail_lines(out)) == 1 and message in _fail_lines(out)[0], out
    plays = re.findall(r"^PLAY \[(.*?)\]", out, flags=re.M)
    assert plays == ["Preflight - check the inventory before touching any host"], plays
    assert "Gathering Facts" not in out and "UNREACHABLE" not in out


# --- the filter functions directly ------------------------------------------------------------------

def _flat(doc) -> tuple[dict, dict]:
    """groups and hostvars as Ansible would give them, for the lab-like document."""
    groups, hostvars = {}, {}
    shared = doc["all"].get("vars", {})
    for gname, g in _groups(doc).items():
        groups[gname] = list(g.get("hosts", {}))
        for h, hv in g.get("hosts", {}).items():
            hostvars.setdefault(h, dict(shared)).update(hv)
    groups["cluster"] = list(dict.fromkeys(groups.get("masters", []) + groups.get("workers", [])))
    return groups, hostvars


def test_filter_accepts_lab_like():
    assert inv.inventory_errors(*_flat(lab_like())) == []
    assert inv.inventory_warnings(*_flat(lab_like())) == []


@pytest.mark.parametrize("case", list(BROKEN))
def test_filter_reports_each_case(case):
    doc = copy.deepcopy(lab_like())
    BROKEN[case][0](doc)
    errors = inv.inventory_errors(*_flat(doc))
    assert errors, case
    assert any(("preflight: " + e).startswith(BROKEN[case][1]) for e in errors), errors


@pytest.mark.parametrize(
    ("forwards", "expected"),
    [
        ([{"port": 10022, "host": "worker1"}], "needs port, host and dest_port"),
        ([{"port": "x", "host": "worker1", "dest_port": 22}], "ports must be integers in 1-65535"),
        ([{"port": 70000, "host": "worker1", "dest_port": 22}], "ports must be integers in 1-65535"),
        ([{"port": 10022, "host": "master", "dest_port": 22}], "points at the master itself"),
        ([{"port": 10022, "host": "worker1", "dest_port": 22}, {"port": 10022, "host": "worker2", "dest_port": 22}],
         "public port 10022 is already forwarded by forward #1"),
        ({"port": 1}, "scalelab_port_forwards must be a list"),
    ],
)
def test_filter_forward_checks(forwards, expected):
    doc = lab_like()
    doc["all"]["vars"]["scalelab_port_forwards"] = forwards
    errors = inv.inventory_errors(*_flat(doc))
    assert any(expected in e for e in errors), errors


def test_filter_missing_network_vars():
    doc = lab_like()
    for name in ("scalelab_private_cidr", "scalelab_private_interface", "scalelab_public_interface"):
        del doc["all"]["vars"][name]
    errors = inv.inventory_errors(*_flat(doc))
    assert "scalelab_private_cidr is not set (group_vars/all/network.yml)" in errors
    assert "scalelab_public_interface is not set (group_vars/all/network.yml)" in errors


def test_filter_master_without_public_ip_and_bad_addresses():
    doc = lab_like()
    m = _groups(doc)["masters"]["hosts"]["master"]
    del m["scalelab_public_ip"]
    _groups(doc)["workers"]["hosts"]["worker1"]["scalelab_private_ip"] = "10.77.1.300"
    errors = inv.inventory_errors(*_flat(doc))
    assert "master 'master' has no scalelab_public_ip (its address on the public interface)" in errors
    assert "host 'worker1': scalelab_private_ip '10.77.1.300' is not an IP address" in errors


def test_filter_host_outside_cluster_group():
    groups, hostvars = _flat(lab_like())
    groups["cluster"].remove("worker2")
    errors = inv.inventory_errors(groups, hostvars)
    assert any("host 'worker2' is not in group 'cluster'" in e for e in errors)


def test_filter_warns_on_one_node_cluster():
    doc = lab_like()
    _groups(doc)["workers"]["hosts"] = {}
    doc["all"]["vars"]["scalelab_port_forwards"] = []
    assert inv.inventory_errors(*_flat(doc)) == []
    assert any("one-node cluster" in w for w in inv.inventory_warnings(*_flat(doc)))
