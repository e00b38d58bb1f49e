"""write_record / check_output: a record is written whole and durably, or not at all, with one line."""
from __future__ import annotations

import argparse
import json
import os
import stat

import pytest

from workloads import record
from workloads.harness.cli import output_file
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


def test_a_target_that_is_not_a_regular_file_is_refused_and_kept(tmp_path):
    """A device, pipe or socket: the rename would replace it by a file (/dev/null, as root)."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for fn in (lambda: write_record(rec(), fifo), lambda: check_output(fifo)):
        with pytest.raises(UserError, match=f"cannot write the record to {fifo}: it is not a regular file"):
            fn()
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and os.listdir(tmp_path) == ["pipe"]


def test_a_failed_record_keeps_no_terminal_colour_codes():
    """Ray colours a task's error for a terminal (``\\x1b[36mray::RayRank.run()\\x1b[39m``)."""
    err = RuntimeError("\x1b[36mray::RayRank.run()\x1b[39m (pid=1) failed\x1b[0m")
    assert fail_record(new_record("kmeans", "ray", workers=2), err)["error"] == \
        "RuntimeError: ray::RayRank.run() (pid=1) failed"


def test_output_takes_file_uris_and_home_as_input_does_and_refuses_what_names_no_file():
    """``--output``: ``file:///tmp/r.json`` wrote ``./file:/tmp/r.json``, ``--output=~/r.json`` wrote
    ``./~/r.json`` and ``--output dir/`` a file named ``dir``."""
    assert output_file("file:///tmp/a%20b.json") == "/tmp/a b.json"
    assert output_file("file://localhost/tmp/r.json") == "/tmp/r.json"
    assert output_file("~/r.json") == os.path.expanduser("~/r.json") != "~/r.json"
    assert output_file("runs/r.json") == "runs/r.json"
    for bad, why in [("runs/", "names a directory"), (".", "names a directory"),
                     ("runs/..", "names a directory"), ("hdfs://nn:8020/r.json", "give a local path"),
                     ("file://other/r.json", "give a local path")]:
        with pytest.raises(argparse.ArgumentTypeError, match=why):
            output_file(bad)
