"""Cluster services on a provisioned lab: testinfra checks, `fab status`, `fab put-data`.  (A worker
power-cut and booted again rejoining Ray, HDFS and the base by itself: tests/e2e/test_hadoop.py.)

Uses the session lab of tests/e2e/conftest.py (`plab`: its own lab `sle2e`, made with make_inventory,
site.yml run once, torn down at the end even on failure); tests/e2e/test_provision.py asserts that a
second site.yml run over it changes only what names a new node, and a third, in check mode, nothing.
The lab runs HDFS and YARN (a Hadoop runtime built from Maven Central): the daemon checks of
tests/infra/test_services.py run here, and tests/e2e/test_hadoop.py runs YARN, the HDFS read path
and the HDFS faults.
"""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from scalelab import cluster as _cluster
from scalelab import inventory as _inventory
from tests.e2e.labutil import REPO, fab, wait_ray_whole

pytestmark = pytest.mark.lab


def test_services_infra(plab) -> None:
    wait_ray_whole(plab.inventory)  # the infra checks count Ray's nodes: an earlier power cut must have settled
    out = plab.infra("tests/infra/test_services.py")
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]


def test_fab_status_reports_every_ray_node(plab) -> None:
    proc = fab("status", "--inventory", str(plab.inventory), check=False)
    n = len(plab.spec.hosts)
    assert f"ray: {n}/{n} nodes alive" in proc.stdout, proc.stdout + proc.stderr
    assert f"hdfs: {n}/{n} DataNodes live, safemode off" in proc.stdout, proc.stdout
    assert f"yarn: {n}/{n} NodeManagers active" in proc.stdout, proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the same for scripts: one JSON object on stdout, from Ray's, the NameNode's and the RM's own JSON
    js = fab("status", "--inventory", str(plab.inventory), "--json", check=False)
    st = json.loads(js.stdout)
    assert js.returncode == 0 and st["ok"] is True, js.stdout + js.stderr
    assert [h["host"] for h in st["hosts"]] == [h.name for h in plab.spec.hosts]
    assert (st["ray"]["alive"], st["hdfs"]["live"], st["yarn"]["active"]) == (n, n, n), st
    assert st["ray"]["missing"] == [] and st["hdfs"]["missing"] == [] and st["ray"]["cpus"] > 0


def test_put_data_copies_to_the_same_path_on_every_node(plab, tmp_path) -> None:
    cl = _inventory.load(plab.inventory)
    data = tmp_path / "data"
    data.mkdir()
    (data / "svc_e2e.csv").write_text("".join(f"{i},{i + 1}\n" for i in range(1000)))
    out = _cluster.put_data(plab.inventory, "svc_e2e", say=lambda m: None, data_dir=data)
    assert out["uri"] == "file:///srv/scalelab/data/svc_e2e.csv"
    assert {out[n.name] for n in cl.nodes} == {"copied"}
    assert out["hdfs_uri"] == f"hdfs://{cl.master.name}:9000/data/svc_e2e.csv"   # and into HDFS /data
    again = _cluster.put_data(plab.inventory, "svc_e2e", say=lambda m: None, data_dir=data)
    assert {again[n.name] for n in cl.nodes} == {"unchanged"}
    for node in cl.nodes:
        r = cl.ssh(node, "wc -l < /srv/scalelab/data/svc_e2e.csv")
        assert r.stdout.strip() == "1000"


def test_provision_reports_one_line_without_site(tmp_path, monkeypatch) -> None:
    """`fab provision` refuses a lab that is not up, in one line."""
    inv = tmp_path / "lab"
    shutil.copytree(REPO / "inventory/lab/group_vars", inv / "group_vars")
    proc = subprocess.run([str(REPO / ".venv/bin/fab"), "provision", "--inventory", str(inv)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "fab lab-up" in proc.stdout + proc.stderr
