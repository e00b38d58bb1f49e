"""The record model (workloads/recordmodel.py) against real records of every kind, its JSON Schema file,
one-line errors, schema versions, and the records the runner writes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from scalelab import provenance, results, runner
from scalelab.inventory import Cluster, Node
from scalelab.sampler import HostSamples
from workloads import recordmodel
from workloads.record import SCHEMA, fail_record, new_record, write_record

REPO = Path(__file__).resolve().parents[2]
RECORDS = Path(__file__).with_name("records")     # written by the workloads: records/regenerate.sh
SCHEMA_FILE = REPO / "docs" / "record.schema.json"


def real(name: str) -> dict:
    return json.loads((RECORDS / f"{name}.json").read_text())


def all_real() -> list[Path]:
    return sorted(RECORDS.glob("*.json"))


def test_the_real_records_cover_every_kind_the_workloads_write() -> None:
    kinds = {(r["workload"], r["framework"], r["status"], r["metrics"].get("method")) for r in map(real_of, all_real())}
    assert kinds >= {("pagerank", "reference", "ok", None), ("pagerank", "torch", "ok", None),
                     ("pagerank", "ray", "ok", None), ("pagerank", "torch", "failed", None),
                     ("kmeans", "torch", "ok", "global"), ("kmeans", "reference", "ok", "blockwise"),
                     ("xgboost", "reference", "ok", None), ("xgboost", "ray", "ok", None),
                     ("pneumonia", "torch", "ok", None), ("cifar-pbt", "ray", "ok", None)}, kinds
    assert all(r["schema"] == SCHEMA for r in map(real_of, all_real()))


def real_of(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("path", all_real(), ids=lambda p: p.stem)
def test_every_real_record_round_trips_through_the_model(path: Path) -> None:
    rec = real_of(path)
    again = recordmodel.dump(recordmodel.parse(rec))
    assert again == rec
    assert json.loads(json.dumps(again, allow_nan=False)) == rec   # strict JSON
    assert recordmodel.load(path) == rec


def test_the_schema_file_is_the_models() -> None:
    """docs/record.schema.json is generated: `python -m workloads.recordmodel > docs/record.schema.json`."""
    assert SCHEMA_FILE.read_text() == recordmodel.schema_text(), \
        "docs/record.schema.json differs from the model: python -m workloads.recordmodel > docs/record.schema.json"
    proc = subprocess.run([sys.executable, "-m", "workloads.recordmodel", "--schema"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == SCHEMA_FILE.read_text()


def test_the_schema_file_accepts_the_real_records_and_refuses_a_broken_one() -> None:
    """A JSON Schema reader (not pydantic) agrees with the model."""
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    for path in all_real():
        validator.validate(real_of(path))
    rec = real("pagerank-torch")
    rec["metrics"]["converged"] = "yes"
    assert not validator.is_valid(rec)
    rec = real("kmeans-global-torch")
    rec["error"] = "an ok record with an error"
    assert not validator.is_valid(rec)


BROKEN = [  # (what is changed, the one line's end)
    (lambda r: r.pop("run_id"), "run_id: field required"),
    (lambda r: r.update(status="done"), 'status: must be ok or failed (got "done")'),
    (lambda r: r.update(framework="spark"), "framework: input should be 'ray', 'torch' or 'reference'"),
    (lambda r: r.update(error="boom"), "error: input should be null"),
    (lambda r: r["metrics"].update(iterations="many"), "metrics.iterations: input should be a valid integer"),
    (lambda r: r["metrics"].pop("converged"), "metrics.converged: field required"),
    (lambda r: r["timings_s"].update(load=-1.0), "timings_s.load: input should be greater than or equal to 0"),
    (lambda r: r["verification"].pop("passed"), "verification.passed: field required"),
    (lambda r: r.update(resultz=1), "resultz: extra inputs are not permitted"),
]


@pytest.mark.parametrize("change,says", BROKEN)
def test_an_invalid_record_is_one_line_naming_the_file_and_field(tmp_path: Path, change, says) -> None:
    rec = real("pagerank-torch")
    change(rec)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(rec))
    with pytest.raises(recordmodel.BadRecord) as err:
        recordmodel.load(path)
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"{path}: ") and says in line, line


def test_a_file_that_is_not_a_record_is_one_line(tmp_path: Path) -> None:
    for text, says in (("{not json", "not JSON"), ("[1, 2]", "not a JSON object"),
                       ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply")):  # (it was a trace)
        (tmp_path / "x.json").write_text(text)
        with pytest.raises(recordmodel.BadRecord, match=says) as err:
            recordmodel.load(tmp_path / "x.json")
        assert "\n" not in str(err.value)


def test_a_failed_record_keeps_what_was_measured_and_needs_its_error() -> None:
    rec = real("pagerank-failed")
    assert rec["status"] == "failed" and rec["error"] and recordmodel.check(rec)
    rec["error"] = None
    with pytest.raises(recordmodel.BadRecord, match="error: input should be a valid string"):
        recordmodel.check(rec)


# ------------------------------------------------------------------------------------------ versions
def test_a_schema_1_record_is_upgraded_on_load(tmp_path: Path) -> None:
    """Schema 1 wrote Infinity for an unbounded error (not JSON); 2 reads it as null."""
    text = (RECORDS / "v1" / "pagerank-torch.json").read_text()
    assert json.loads(text)["schema"] == 1
    old = json.loads(text)
    old["verification"]["error"] = float("inf")
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert "Infinity" in (tmp_path / "old.json").read_text()
    rec = recordmodel.load(tmp_path / "old.json")
    assert rec["schema"] == SCHEMA and rec["verification"]["error"] is None
    assert rec["timings_s"] == old["timings_s"] and rec["metrics"] == old["metrics"]


@pytest.mark.parametrize("version,says", [
    (SCHEMA + 1, f"schema {SCHEMA + 1} is newer than this scalelab reads (1-{SCHEMA}): update this checkout "
                 "(git pull) to read it"),
    (0, f"schema 0 is not a record schema version (this scalelab reads 1-{SCHEMA})"),
    ("2", f"schema '2' is not a record schema version (this scalelab reads 1-{SCHEMA})"),
    (None, f"schema None is not a record schema version (this scalelab reads 1-{SCHEMA})")])
def test_an_unknown_schema_version_is_refused_in_one_line(tmp_path: Path, version, says) -> None:
    rec = real("kmeans-global-torch")
    rec["schema"] = version
    (tmp_path / "r.json").write_text(json.dumps(rec))
    with pytest.raises(recordmodel.BadRecord) as err:
        recordmodel.load(tmp_path / "r.json")
    assert str(err.value) == f"{tmp_path / 'r.json'}: {says}"


# ------------------------------------------------------------------------------------------ writers
def test_write_record_refuses_an_invalid_record_and_writes_nothing(tmp_path: Path) -> None:
    rec = real("pagerank-torch")
    rec["metrics"]["converged"] = "maybe"
    with pytest.raises(recordmodel.BadRecord, match="^the record to write: metrics.converged"):
        write_record(rec, tmp_path / "r.json")
    assert list(tmp_path.iterdir()) == []


def test_write_record_writes_strict_json(tmp_path: Path) -> None:
    rec = fail_record(new_record("pagerank", "torch", workers=2), "boom")
    rec["verification"] = {"reference": "scipy", "error": float("inf"), "passed": False}
    text = write_record(rec, tmp_path / "r.json").read_text()
    assert "Infinity" not in text and json.loads(text)["verification"]["error"] is None


TWO = Cluster(Path("inventory/x"), (Node("master", "master", "10.0.0.1", "10.0.0.1"),
                                    Node("worker1", "workers", "10.0.0.2", "10.0.0.2")))


def runner_record(name: str, tmp_path: Path, cluster_name: str | None = None) -> dict:
    """A real workload record completed as the runner completes it on the controller (provenance from this
    checkout, node facts from a probe's output, the sampler's per-host summary)."""
    rec = real(name)
    samples = HostSamples(cpu=[50.0, 150.0], mem=[800.0, 900.0])
    facts = {n.name: provenance.node_facts(provenance.parse_probe(
        "cpus=2\ncpu_model=AMD EPYC\nmem_kib=8000000\ncode=abc\n"
        'versions={"python": "3.11.7", "ray": "2.60.0", "torch": "2.13.0"}\n')) for n in TWO.nodes}
    cluster = Cluster(TWO.inventory, TWO.nodes, {"scalelab_lab_name": cluster_name} if cluster_name else {})
    prov = {**provenance.controller(cluster),
            "params_hash": provenance.params_hash(rec["workload"], rec["framework"], 2, "tiny", []), "nodes": facts}
    return runner.complete_record(rec, TWO.nodes, resources={"master": samples.summary(), "worker1": HostSamples().summary()},
                                  wall=12.34, logs=f"{rec['workload']}/logs/{rec['run_id']}", provenance=prov,
                                  problems={"worker1": "no answer in 40 s"})


def test_the_runners_records_match_the_model(tmp_path: Path) -> None:
    for name in ("pagerank-torch", "kmeans-global-torch", "xgboost-ray", "cifar-pbt-ray", "pagerank-failed"):
        rec = runner_record(name, tmp_path)
        path = write_record(rec, tmp_path / f"{name}.json")
        back = recordmodel.load(path)
        assert back["provenance"]["git"]["commit"] and back["provenance"]["nodes"]["worker1"]["cores"] == 2
        assert back["resources"]["hosts"]["worker1"]["samples"] == 0 and back["nodes"] == 2
    rec = real("pagerank-torch")
    rec["provenance"] = {"git": {"commit": "x"}}        # a provenance without its dirty flag
    with pytest.raises(recordmodel.BadRecord, match="provenance.git.dirty: field required"):
        recordmodel.check(rec)


def test_the_matrix_records_a_cell_that_could_not_start(tmp_path: Path) -> None:
    path = runner._failed_cell(TWO, runner.Cell("kmeans", "torch", 2, "tiny"), "worker1: not reachable", tmp_path)
    rec = recordmodel.load(path)
    assert rec["status"] == "failed" and rec["provenance"]["params_hash"]


def test_a_node_record_the_model_refuses_is_one_line_naming_the_node() -> None:
    """What the runner's _finish reads from a node goes through the same check."""
    bad = real("pagerank-torch")
    bad["metrics"]["iterations"] = -1
    with pytest.raises(results.BadRecord, match="^the record on master: metrics.iterations"):
        results.validate(bad, "the record on master")


def test_load_records_lists_each_file_that_is_not_a_record_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "pagerank").mkdir()
    for name in ("pagerank-torch", "pagerank-ray"):
        (tmp_path / "pagerank" / f"{name}.json").write_text((RECORDS / f"{name}.json").read_text())
    bad = real("pagerank-ray")
    bad["nodes"] = 0
    (tmp_path / "pagerank" / "bad.json").write_text(json.dumps(bad))
    recs, problems = results.load_records(tmp_path)
    assert len(recs) == 2
    assert problems == [f"{tmp_path / 'pagerank' / 'bad.json'}: nodes: input should be greater than or equal to 1 "
                        "(got 0)"]
