"""The result record as a model: one pydantic definition that the workloads (before they write), the
runner, the matrix, the report, `fab compare` and `fab export` all check records against.

Exact where readers rely on a field (the envelope, timings, the convergence and quality numbers, the
verdict, provenance); open (extra keys kept) where workloads add metrics or parameters.  The JSON Schema
in ``docs/record.schema.json`` is generated from here::

    python -m workloads.recordmodel > docs/record.schema.json

Versions: ``SCHEMA`` is written; older versions are upgraded on load (:data:`UPGRADES`); a version this
code does not know is refused in one line.
"""
from __future__ import annotations

import json
import math
import sys
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeFloat,
    Tag,
    TypeAdapter,
    ValidationError,
)

from workloads.record import SCHEMA

WORKLOADS = ("pagerank", "kmeans", "pneumonia", "xgboost", "cifar-pbt")
Workload = Literal["pagerank", "kmeans", "pneumonia", "xgboost", "cifar-pbt"]
Framework = Literal["ray", "torch", "reference"]


class BadRecord(ValueError):
    """A record that does not match the model or whose schema version cannot be read; str() is one line."""


class _Exact(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


# --------------------------------------------------------------------------------- common parts
class Dataset(_Open):
    name: str | None = None
    uri: str | None = None
    bytes: int | None = Field(None, ge=0)
    records: int | None = Field(None, ge=0, description="edges (pagerank), points (kmeans), examples (learning)")


class Verification(_Open):
    """The run checked against a reference; ``error`` is null where the check is a threshold, not a distance."""
    reference: str
    error: float | None = None
    passed: bool
    reason: str | None = Field(None, description="why it failed (only where it did)")


class Env(_Exact):
    python: str
    ray: str | None = None
    torch: str | None = None
    hosts: list[str]
    cpus_per_node: int = Field(ge=1)


class Git(_Exact):
    commit: str | None
    dirty: bool | None


class InventoryId(_Exact):
    name: str
    hash: str


class Versions(_Open):
    python: str | None = None
    ray: str | None = None
    torch: str | None = None


class NodeFacts(_Exact):
    cpu_model: str | None = None
    cores: int | None = None
    memory_gib: float | None = None
    workloads_hash: str | None = None
    versions: Versions | None = None


class Provenance(_Exact):
    """What the runner adds on the controller (scalelab/provenance.py)."""
    git: Git | None = None
    node_lock_hash: str | None = None
    workloads_hash: str | None = None
    inventory: InventoryId | None = None
    params_hash: str | None = Field(None, description="what the user asked for: workload, framework, nodes, "
                                                      "dataset, extra options")
    nodes: dict[str, NodeFacts] | None = Field(None, description="each node's machine, versions and code")


class HostUsage(_Exact):
    cpu_mean: float | None = None
    cpu_peak: float | None = None
    mem_mean: float | None = None
    mem_peak: float | None = None
    samples: int | None = None


class Resources(_Exact):
    interval_s: float | None = None
    hosts: dict[str, HostUsage]
    wall_s: float | None = None


Timings = dict[str, NonNegativeFloat | None]


# --------------------------------------------------------------------------------- metrics
PhasePeaks = Annotated[dict[str, list[NonNegativeFloat | None]], Field(
    description="each phase's largest resident size (GiB), one per rank in rank order (\"results\": "
                "rank 0's alone; null where it could not be measured)")]


class PageRankMetrics(_Open):
    iterations: int = Field(ge=0)
    converged: bool
    stopped_by: Literal["tol", "floor", "max_iter"] | None = None
    l1_change: float | None = None
    error_bound: float | None = Field(None, description="L1 distance to the fixed point in exact arithmetic")
    rounding_bound: float | None = Field(None, description="what float64's rounding can add to error_bound (L1)")
    top_error_bound: float | None = None
    nodes: int | None = None
    edges: int | None = None
    arcs: int | None = None
    top: list[tuple[int, float]] | None = Field(None, description="[[node id, score], ...], best first")
    peak_rss_gib: PhasePeaks | None = None


class PageRankVerification(Verification):
    mode: Literal["same-iterations", "converged"] | None = None
    reference_iterations: int | None = None
    l1_error: float | None = None
    accuracy: float | None = None
    l1_accuracy: float | None = Field(None, description="converged: the L1 distance allowed, both error and "
                                                        "rounding bounds, the run's and the reference's")
    reference_error_bound: float | None = None
    reference_rounding_bound: float | None = None


class KMeansMetrics(_Open):
    ch_score: float = Field(description="Calinski-Harabasz score (blockwise: the mean over blocks)")
    method: Literal["global", "blockwise"] | None = None
    k: int | None = Field(None, ge=1)
    inertia: float | None = None
    centroids: list[list[float]] | None = None
    iterations: int | None = None
    converged: bool | None = None
    stopped_by: str | None = None
    points: int | None = None
    peak_rss_gib: PhasePeaks | None = None


class ClassifierMetrics(_Open):
    """pneumonia, xgboost, cifar-pbt: test accuracy and a training curve."""
    accuracy: float = Field(ge=0, le=1)
    loss_per_epoch: list[float | None] | None = None


METRICS: dict[str, type[BaseModel]] = {"pagerank": PageRankMetrics, "kmeans": KMeansMetrics,
                                       "pneumonia": ClassifierMetrics, "xgboost": ClassifierMetrics,
                                       "cifar-pbt": ClassifierMetrics}


# --------------------------------------------------------------------------------- the record
class _Record(_Exact):
    schema_: Literal[SCHEMA] = Field(alias="schema")  # type: ignore[valid-type]
    run_id: str = Field(min_length=1)
    workload: Workload
    framework: Framework
    nodes: int = Field(ge=1)
    workers: int = Field(ge=1)
    dataset: Dataset
    params: dict[str, Any]
    timings_s: Timings = Field(description="seconds per step: startup, load, build, compute, verify, total, ...")
    env: Env | None = None
    started_at: str
    finished_at: str | None
    provenance: Provenance | None = None
    resources: Resources | None = Field(None, description="CPU and memory per host, sampled by the runner")
    logs: str | None = Field(None, description="the run's log directory, relative to results/")
    cleanup_problems: dict[str, str] | None = None
    experiment_dir: str | None = Field(None, description="the Ray Tune/Train experiment directory (shared storage)")


class FailedRecord(_Record):
    """Any workload, failed: the error says why; what was measured before the failure may be there.
    Its sizes are what was asked, valid or not (``--workers 0`` fails with a record saying so)."""
    nodes: int
    workers: int
    status: Literal["failed"]
    error: str = Field(min_length=1)
    metrics: dict[str, Any]
    verification: Verification | None


class _Ok(_Record):
    status: Literal["ok"]
    error: None


class PageRankRecord(_Ok):
    workload: Literal["pagerank"]
    metrics: PageRankMetrics
    verification: PageRankVerification | None


class KMeansRecord(_Ok):
    workload: Literal["kmeans"]
    metrics: KMeansMetrics
    verification: Verification | None


class ClassifierRecord(_Ok):
    workload: Literal["pneumonia", "xgboost", "cifar-pbt"]
    metrics: ClassifierMetrics
    verification: Verification | None


def _kind(v: Any) -> str:
    get = v.get if isinstance(v, dict) else (lambda k, d=None: getattr(v, k, d))
    status = get("status")
    if status not in ("ok", "failed"):
        return None  # the custom error below
    if status == "failed":
        return "failed"
    return {"pagerank": "pagerank", "kmeans": "kmeans"}.get(get("workload"), "classifier")


Record = Annotated[
    Annotated[FailedRecord, Tag("failed")] | Annotated[PageRankRecord, Tag("pagerank")]
    | Annotated[KMeansRecord, Tag("kmeans")] | Annotated[ClassifierRecord, Tag("classifier")],
    Discriminator(_kind, custom_error_type="status", custom_error_message="must be ok or failed")]
ADAPTER: TypeAdapter[Any] = TypeAdapter(Record)


# --------------------------------------------------------------------------------- versions
def finite(x: Any) -> Any:
    """``x`` with non-finite numbers as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite(v) for v in x]
    return x


def _from_1(rec: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 wrote Infinity/NaN (not JSON); 2 writes null there.  Nothing else changed."""
    return {**finite(rec), "schema": 2}


UPGRADES = {1: _from_1}  # version -> the function that lifts it one version


def upgrade(rec: dict[str, Any], source: str = "record") -> dict[str, Any]:
    v = rec.get("schema")
    if v == SCHEMA:
        return rec
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise BadRecord(f"{source}: schema {v!r} is not a record schema version (this scalelab reads 1-{SCHEMA})")
    if v > SCHEMA:
        raise BadRecord(f"{source}: schema {v} is newer than this scalelab reads (1-{SCHEMA}): "
                        "update this checkout (git pull) to read it")
    while rec["schema"] != SCHEMA:
        rec = UPGRADES[rec["schema"]](rec)
    return rec


# --------------------------------------------------------------------------------- checks
def _where(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("failed", "pagerank", "kmeans", "classifier")]
    return ".".join(parts).replace("schema_", "schema")


def one_line(exc: ValidationError, source: str = "record") -> str:
    errs = exc.errors(include_url=False)
    e = errs[0]
    where = _where(e["loc"])
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    got = e.get("input")
    if e["type"] == "status" and isinstance(got, dict):  # the discriminator sees the whole record
        got, where = got.get("status"), "status"
    value = "" if e["type"] == "missing" else f" (got {json.dumps(got, default=str)[:60]})"
    return f"{source}: {where + ': ' if where else ''}{e['msg'].lower()}{value}{more}"


def parse(rec: dict[str, Any], source: str = "record") -> BaseModel:
    """The model of a current-schema record, read as JSON (strictly: a number is not a string, a flag is
    not a number); raises BadRecord with one line."""
    try:
        text = json.dumps(rec, allow_nan=False)
    except ValueError:
        raise BadRecord(f"{source}: holds Infinity or NaN, which JSON has not: write null") from None
    try:
        return ADAPTER.validate_json(text)
    except ValidationError as exc:
        raise BadRecord(one_line(exc, source)) from None


def dump(model: BaseModel) -> dict[str, Any]:
    """The record of a model: the fields it was given, under their JSON names."""
    return ADAPTER.dump_python(model, mode="json", by_alias=True, exclude_unset=True)


def check(rec: Any, source: str = "record") -> dict[str, Any]:
    """``rec`` upgraded to the current schema and checked; raises BadRecord with one line."""
    if not isinstance(rec, dict):
        raise BadRecord(f"{source}: not a JSON object")
    rec = upgrade(rec, source)
    parse(rec, source)
    return rec


def load(path: Any) -> dict[str, Any]:
    """A record file, read, upgraded and checked; BadRecord (one line) for anything else."""
    try:
        with open(path, encoding="utf-8") as f:
            rec = json.load(f)
    except OSError as exc:
        raise BadRecord(f"{path}: {(exc.strerror or str(exc)).lower()}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRecord(f"{path}: not JSON ({exc})") from None
    except RecursionError:  # (json's parser recurses once per level)
        raise BadRecord(f"{path}: not a record (JSON nested too deeply to read)") from None
    return check(rec, str(path))


def json_schema() -> dict[str, Any]:
    doc = ADAPTER.json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"scalelab result record, schema {SCHEMA}",
            "description": "One JSON file per run, results/<workload>/<run_id>.json. "
                           "Generated by `python -m workloads.recordmodel`; do not edit.", **doc}


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] not in ([], ["--schema"]):
        print("usage: python -m workloads.recordmodel [--schema] > docs/record.schema.json", file=sys.stderr)
        sys.exit(2)
    sys.stdout.write(schema_text())
