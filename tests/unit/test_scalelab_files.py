"""library/scalelab_files.py, the roles' one-run directories and files, run as Ansible runs it.

Each case runs the module file itself with the venv's Python and a JSON arguments file (the way
Ansible's own hacking/test-module does), on real files under tmp_path: what it reports, what it
writes, what check mode leaves alone.
"""

from __future__ import annotations

import grp
import importlib.util
import json
import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "library/scalelab_files.py"

# Found, not imported: importing ansible.module_utils patches sys.intern for the whole process (which
# torch's compiler, in other tests of the same run, then refuses). The module runs in its own Python.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("ansible") is None, reason="needs ansible (make setup)")


def run(tmp_path: Path, *, directories=(), files=(), check=False) -> dict:
    args = tmp_path.parent / f"{tmp_path.name}-args.json"
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {
        "directories": list(directories), "files": list(files),
        "_ansible_check_mode": check, "_ansible_diff": True,
    }}))
    out = subprocess.run([sys.executable, str(MODULE), str(args)], capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)


def mode(path: Path) -> str:
    return f"{stat.S_IMODE(path.stat().st_mode):04o}"


def test_makes_directories_and_files_then_a_second_run_changes_nothing(tmp_path):
    deep = tmp_path / "etc/app/conf.d"
    conf = tmp_path / "etc/app/app.conf"
    dirs = [{"path": str(tmp_path / "etc/app"), "mode": "0750"}, {"path": str(deep), "mode": "0700"}]
    files = [{"path": str(conf), "content": "a = 1\n", "mode": "0640"},
             {"path": str(deep / "x.conf"), "content": "ü\n", "mode": "0600"}]
    first = run(tmp_path, directories=dirs, files=files)
    assert first["changed"] is True
    assert first["changed_paths"] == [d["path"] for d in dirs] + [f["path"] for f in files]
    assert conf.read_text() == "a = 1\n" and (deep / "x.conf").read_text(encoding="utf-8") == "ü\n"
    assert [mode(tmp_path / "etc/app"), mode(deep), mode(conf), mode(deep / "x.conf")] == \
        ["0750", "0700", "0640", "0600"]
    parents = run(tmp_path, directories=[{"path": str(tmp_path / "var/lib/x/y"), "mode": "0711"}])
    assert parents["changed_paths"] == [str(tmp_path / "var/lib/x/y")]
    assert [mode(tmp_path / p) for p in ("var", "var/lib", "var/lib/x", "var/lib/x/y")] == ["0711"] * 4
    again = run(tmp_path, directories=dirs, files=files)
    assert (again["changed"], again["changed_paths"], again["diff"]) == (False, [], [])


def test_a_changed_content_is_replaced_whole_with_its_diff_and_no_temporary_file_left(tmp_path):
    conf = tmp_path / "app.conf"
    conf.write_text("old\n")
    os.chmod(conf, 0o600)
    result = run(tmp_path, files=[{"path": str(conf), "content": "new\n", "mode": "0644"}])
    assert result["changed_paths"] == [str(conf)]
    assert result["diff"][0]["before"] == "old\n" and result["diff"][0]["after"] == "new\n"
    assert conf.read_text() == "new\n" and mode(conf) == "0644"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.conf"]


def test_an_attribute_alone_is_set_and_reported_without_rewriting(tmp_path):
    conf = tmp_path / "app.conf"
    conf.write_text("same\n")
    os.chmod(conf, 0o600)
    inode = conf.stat().st_ino
    result = run(tmp_path, files=[{"path": str(conf), "content": "same\n", "mode": "0644"}])
    assert result["changed_paths"] == [str(conf)]
    assert result["diff"] == [{"before": {"path": str(conf), "mode": "0600"},
                               "after": {"path": str(conf), "mode": "0644"}}]
    assert mode(conf) == "0644" and conf.stat().st_ino == inode


def test_a_link_to_a_directory_stands_for_it_and_a_link_at_a_file_path_is_replaced(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir(mode=0o755)
    (tmp_path / "data").symlink_to(disk)
    elsewhere = tmp_path / "elsewhere.conf"
    elsewhere.write_text("keep\n")
    (tmp_path / "app.conf").symlink_to(elsewhere)
    args = {"directories": [{"path": str(tmp_path / "data"), "mode": "0700"}],
            "files": [{"path": str(tmp_path / "app.conf"), "content": "keep\n", "mode": "0644"}]}
    first = run(tmp_path, **args)
    assert first["changed_paths"] == [str(tmp_path / "data"), str(tmp_path / "app.conf")]
    assert mode(disk) == "0700" and (tmp_path / "data").is_symlink()
    assert not (tmp_path / "app.conf").is_symlink() and elsewhere.read_text() == "keep\n"
    assert run(tmp_path, **args)["changed"] is False


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_owner_and_group_are_set(tmp_path):
    conf = tmp_path / "app.conf"
    result = run(tmp_path, directories=[{"path": str(tmp_path / "d"), "owner": "nobody", "group": "nogroup",
                                         "mode": "0755"}],
                 files=[{"path": str(conf), "content": "x\n", "owner": "nobody", "group": "nogroup",
                         "mode": "0644"}])
    assert result["changed"] is True
    for path in (tmp_path / "d", conf):
        st = path.stat()
        assert (pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name) == ("nobody", "nogroup")


def test_check_mode_reports_every_change_and_touches_nothing(tmp_path):
    conf = tmp_path / "app.conf"
    conf.write_text("old\n")
    os.chmod(conf, 0o600)
    other = tmp_path / "other.conf"
    other.write_text("same\n")
    os.chmod(other, 0o600)
    new_dir = tmp_path / "new/deeper"
    result = run(tmp_path, check=True,
                 directories=[{"path": str(new_dir), "mode": "0755"}],
                 files=[{"path": str(conf), "content": "new\n", "mode": "0600"},
                        {"path": str(other), "content": "same\n", "mode": "0644"},
                        {"path": str(new_dir / "f"), "content": "f\n", "mode": "0644"}])
    assert result["changed_paths"] == [str(new_dir), str(conf), str(other), str(new_dir / "f")]
    assert not (tmp_path / "new").exists()
    assert conf.read_text() == "old\n" and mode(conf) == "0600" and mode(other) == "0600"


@pytest.mark.parametrize("case, message", [
    ("file_is_a_directory", "exists and is not a regular file"),
    ("directory_is_a_file", "exists and is not a directory"),
    ("directory_missing", "does not exist: list it in directories"),
])
def test_a_path_it_cannot_use_fails_in_one_line_naming_it(tmp_path, case, message):
    target = tmp_path / "target"
    if case == "file_is_a_directory":
        target.mkdir()
        result = run(tmp_path, files=[{"path": str(target), "content": "x\n"}])
    elif case == "directory_is_a_file":
        target.write_text("keep\n")
        result = run(tmp_path, directories=[{"path": str(target)}])
        assert target.read_text() == "keep\n"
    else:
        target = tmp_path / "absent/target"
        result = run(tmp_path, files=[{"path": str(target), "content": "x\n"}])
        assert not target.parent.exists()
    assert result.get("failed") is True
    assert str(target) in result["msg"] and message in result["msg"] and "\n" not in result["msg"]


def test_its_documentation_renders_with_the_options_it_takes(tmp_path):
    def ansible_doc(*args):
        out = subprocess.run([str(Path(sys.executable).parent / "ansible-doc"), *args, "-M", str(ROOT / "library"),
                              "scalelab_files"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "HOME": str(tmp_path)})
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert "OPTIONS" in ansible_doc()  # the text form: a stray 'key: value' in a description breaks it
    options = json.loads(ansible_doc("--json"))["scalelab_files"]["doc"]["options"]
    assert {name: sorted(o["suboptions"]) for name, o in options.items()} == {
        "directories": ["group", "mode", "owner", "path"],
        "files": ["content", "group", "mode", "owner", "path"],
    }
    unknown = run(tmp_path, files=[{"path": str(tmp_path / "f"), "content": "", "colour": "red"}])
    assert unknown.get("failed") is True and "colour" in unknown["msg"]
