"""The experiment matrix: cells, and resuming (ok records already on disk are not run again)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from scalelab import provenance, runner
from scalelab.errors import UserError
from scalelab.inventory import Cluster, Node
from tests.unit.test_records import real
from workloads.record import fail_record, finish_record, new_record, write_record


def test_matrix_cells_follow_each_workloads_frameworks() -> None:
    cells = runner.matrix(["pagerank", "xgboost"], "both", [1, 2], ["tiny", "data_1"])
    labels = {c.label() for c in cells}
    assert "pagerank/ray/2n/data_1" in labels and "pagerank/torch/1n/tiny" in labels
    assert {c.label() for c in cells if c.workload == "xgboost"} == {"xgboost/ray/1n/-", "xgboost/ray/2n/-"}
    assert len(cells) == 2 * 2 * 2 + 2
    with pytest.raises(UserError, match="unknown workload 'pagerannk'"):
        runner.matrix(["pagerannk"], "both", [1], ["tiny"])
    with pytest.raises(UserError, match="cifar-pbt runs with ray, not 'torch'"):
        runner.matrix(["cifar-pbt"], "torch", [1], [])


def _record(results: Path, fw: str, nodes: int, ds: str, ok: bool, inventory: str = "inv",
            extra: tuple[str, ...] = ()) -> None:
    """A real PageRank record (tests/unit/records) as this cell's run."""
    r = {**real("pagerank-torch"), "framework": fw, "nodes": nodes, "workers": nodes,
         "run_id": new_record("pagerank", fw, workers=nodes)["run_id"]}
    r["dataset"] = {**r["dataset"], "name": ds}
    r["provenance"] = {"params_hash": provenance.params_hash("pagerank", fw, nodes, ds, list(extra)),
                       "inventory": {"name": "x", "hash": inventory}}
    write_record(finish_record(r) if ok else fail_record(r, "boom"), results / "pagerank" / f"{r['run_id']}.json")


def test_completed_counts_only_ok_records_of_the_same_cell(tmp_path: Path) -> None:
    cell = runner.Cell("pagerank", "ray", 2, "tiny")
    _record(tmp_path, "ray", 2, "tiny", ok=True)
    _record(tmp_path, "ray", 2, "tiny", ok=False)     # a failed run is redone
    _record(tmp_path, "torch", 2, "tiny", ok=True)    # another framework
    _record(tmp_path, "ray", 3, "tiny", ok=True)      # another node count
    _record(tmp_path, "ray", 2, "data_1", ok=True)    # another dataset
    _record(tmp_path, "ray", 2, "tiny", ok=True, extra=("--max-iter", "1"))  # other parameters
    _record(tmp_path, "ray", 2, "tiny", ok=True, inventory="other")  # another cluster
    assert len(runner.completed(tmp_path, cell, "inv")) == 1
    assert len(runner.completed(tmp_path, cell)) == 2  # any inventory


# A cluster as read from an inventory (no host is contacted by the code under test).
TWO_HOSTS = Cluster(Path("inventory/x"), (Node("master", "master", "10.0.0.1", "10.0.0.1"),
                                          Node("worker1", "workers", "10.0.0.2", "10.0.0.2")))


def test_matrix_larger_than_the_cluster_fails_before_running(tmp_path: Path) -> None:
    cells = runner.matrix(["pagerank"], "ray", [1, 3], ["tiny"])
    with pytest.raises(UserError, match="--nodes 3 but the cluster has 2 hosts"):
        runner.run_matrix(TWO_HOSTS, cells, results_dir=tmp_path, say=lambda m: None)


def test_fully_recorded_matrix_runs_nothing(tmp_path: Path) -> None:
    cells = runner.matrix(["pagerank"], "both", [2], ["tiny"])
    for c in cells:
        _record(tmp_path, c.framework, c.nodes, "tiny", ok=True, inventory=provenance.inventory_id(TWO_HOSTS)["hash"])
    said: list[str] = []
    out = runner.run_matrix(TWO_HOSTS, cells, results_dir=tmp_path, say=said.append)
    assert out == {"runs": 0, "failed": 0, "skipped_done": 2}
    assert "2 cells, 0 runs to do (2 already recorded ok and skipped)" in said[0]


# Hosts that refuse ssh at once (127.0.0.1, port 9): a node that is down.
DOWN = {"ansible_host": "127.0.0.1", "ansible_port": 9}
DOWN_CLUSTER = Cluster(Path("inventory/down"), (Node("master", "master", "127.0.0.1", "10.0.0.1", DOWN),
                                                Node("worker1", "workers", "127.0.0.1", "10.0.0.2", DOWN)))


def test_a_cell_whose_nodes_are_down_is_recorded_failed_and_the_matrix_goes_on(tmp_path: Path) -> None:
    cells = runner.matrix(["pagerank"], "both", [1], ["tiny"])
    said: list[str] = []
    out = runner.run_matrix(DOWN_CLUSTER, cells, results_dir=tmp_path, say=said.append, timeout_s=30)
    assert out == {"runs": 2, "failed": 2, "skipped_done": 0}
    recs = [json.loads(p.read_text()) for p in sorted((tmp_path / "pagerank").glob("*.json"))]
    assert sorted(r["framework"] for r in recs) == ["ray", "torch"]
    for r in recs:
        assert r["status"] == "failed" and "master not reachable over ssh" in r["error"]
        assert r["provenance"]["inventory"]["name"] == "down"
    # a failed record never satisfies a cell: the next matrix runs both again
    assert runner.run_matrix(DOWN_CLUSTER, cells, results_dir=tmp_path, say=said.append)["runs"] == 2
