"""write_record / check_output: a record is written whole and durably, or not at all, with one line."""
from __future__ import annotations

import json
import os

import pytest

from workloads import record
from workloads.record import UserError, check_output, fail_record, new_record, write_record


def rec() -> dict:
    return fail_record(new_record("pagerank", "reference", workers=1), "interrupted")


def test_record_is_fsynced_then_renamed_then_its_directory_fsynced(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(record.os, "fsync", lambda fd: (calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                        real_fsync(fd)))
    monkeypatch.setattr(record.os, "replace", lambda a, b: (calls.append(("replace", str(b))), real_replace(a, b)))
    out = tmp_path / "sub" / "r.json"
    write_record(rec(), out)
    assert json.loads(out.read_text())["workload"] == "pagerank"
    assert [c[0] for c in calls] == ["fsync", "replace", "fsync"]
    assert calls[0][1].endswith(".tmp") and calls[1][1] == str(out) and calls[2][1] == str(out.parent)
    assert os.listdir(out.parent) == ["r.json"]


@pytest.mark.parametrize("case", ["directory", "under_a_file"])
def test_unwritable_path_is_one_line_and_leaves_nothing(tmp_path, case):
    (tmp_path / "f").write_text("x")
    path = tmp_path if case == "directory" else tmp_path / "f" / "r.json"
    for fn in (lambda: write_record(rec(), path), lambda: check_output(path)):
        with pytest.raises(UserError, match=f"cannot write the record to {path}: ") as exc:
            fn()
        assert "\n" not in str(exc.value)
        assert ("is a directory" if case == "directory" else f"{tmp_path / 'f'} is not a directory") in str(exc.value)
    assert sorted(os.listdir(tmp_path)) == ["f"]


def test_a_failed_rename_removes_the_temp_file(tmp_path, monkeypatch):
    def fail(a, b):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(record.os, "replace", fail)
    with pytest.raises(UserError, match="invalid cross-device link"):
        write_record(rec(), tmp_path / "r.json")
    assert os.listdir(tmp_path) == []


def test_check_output_leaves_nothing_behind(tmp_path):
    check_output(tmp_path / "a" / "r.json")
    assert os.listdir(tmp_path / "a") == []
