"""Static guarantees that keep provisioning working on any fresh host and whole-or-nothing:
package lists refreshed by one role whatever their age, every play any_errors_fatal, and the torch
wheel found without the user's help."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scalelab import wheelhouse

ROOT = Path(__file__).resolve().parents[2]
ROLES = ROOT / "roles"


def _tasks(role: Path) -> list[dict]:
    out = []
    for f in sorted((role / "tasks").glob("*.yml")):
        stack = list(yaml.safe_load(f.read_text()) or [])
        while stack:
            t = stack.pop()
            out.append(t)
            for key in ("block", "rescue", "always"):
                stack += t.get(key) or []
    return out


def _installs_packages(task: dict) -> bool:
    apt = task.get("ansible.builtin.apt") or task.get("apt")
    return isinstance(apt, dict) and "name" in apt


def test_every_role_that_installs_packages_refreshes_the_lists_first():
    for role in sorted(p for p in ROLES.iterdir() if (p / "tasks").is_dir()):
        if role.name == "apt_cache" or not any(_installs_packages(t) for t in _tasks(role)):
            continue
        deps = [d["role"] if isinstance(d, dict) else d
                for d in (yaml.safe_load((role / "meta/main.yml").read_text()).get("dependencies") or [])]
        includes = [t["ansible.builtin.include_role"]["name"] for t in _tasks(role)
                    if "ansible.builtin.include_role" in t]
        assert "apt_cache" in deps + includes, f"{role.name} installs packages without the apt_cache role"


def test_only_apt_cache_decides_when_to_refresh_the_lists():
    """cache_valid_time alone skips the update on a minutes-old image without lists."""
    for role in sorted(p for p in ROLES.iterdir() if (p / "tasks").is_dir() and p.name != "apt_cache"):
        for t in _tasks(role):
            apt = t.get("ansible.builtin.apt") or {}
            assert "cache_valid_time" not in apt, f"{role.name}: '{t.get('name')}' sets cache_valid_time"
    rule = next(t for t in _tasks(ROLES / "apt_cache") if "ansible.builtin.apt" in t)
    assert "else 0" in rule["ansible.builtin.apt"]["cache_valid_time"]
    assert rule["changed_when"] is False


def test_every_play_stops_the_whole_run_on_the_first_failed_host():
    site = yaml.safe_load((ROOT / "site.yml").read_text())
    books = [ROOT / p["ansible.builtin.import_playbook"] for p in site]
    assert len(books) >= 9
    for book in books:
        for play in yaml.safe_load(book.read_text()):
            assert play.get("any_errors_fatal") is True, f"{book.name}: play '{play['name']}'"
            # any_errors_fatal stops the hosts of its own play only: a later play on other hosts would
            # still run, so every play covers the whole cluster.
            assert play["hosts"] in ("cluster", "localhost:all"), f"{book.name}: play '{play['name']}'"


def test_torch_comes_from_a_local_wheel_directory_when_there_is_one(tmp_path):
    (tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    assert wheelhouse.torch_pip_args({"SCALELAB_WHEELS": str(tmp_path)}) == ["--find-links", str(tmp_path)]


def test_torch_comes_from_the_cpu_index_without_a_local_wheel(tmp_path, monkeypatch):
    monkeypatch.setattr(wheelhouse, "LOCAL_WHEEL_DIRS", (tmp_path / "none",))
    assert wheelhouse.torch_pip_args({}) == ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]
    (tmp_path / "empty").mkdir()   # a directory without a torch wheel is no source either
    assert wheelhouse.torch_pip_args({"SCALELAB_WHEELS": str(tmp_path / "empty")})[0] == "--extra-index-url"


def test_uv_gets_pips_index_settings_and_the_torch_source(tmp_path, monkeypatch):
    """`make setup` installs with uv, which reads no pip.conf: pip's settings are passed on (the index
    pip would use, extra indexes, existing link directories, trusted hosts); PyTorch's CPU index is searched
    beside the others as pip does."""
    monkeypatch.setattr(wheelhouse, "LOCAL_WHEEL_DIRS", (tmp_path / "none",))
    (tmp_path / "links").mkdir()
    pip_config = "\n".join([
        "global.index-url='https://mirror-a.example/simple'",
        f"global.find-links='{tmp_path / 'links'} {tmp_path / 'missing'}'",
        "global.cert='/etc/ssl/certs/ca-certificates.crt'",
        "install.trusted-host='mirror-b.example'",
        ":env:.index-url='https://mirror-b.example/simple'",
        f":env:.find-links='{tmp_path / 'links'}'",
        ":env:.extra-index-url='https://extra.example/simple'"])
    assert wheelhouse.uv_args(pip_config, {}) == [
        "--index-url", "https://mirror-b.example/simple",
        "--find-links", str(tmp_path / "links"),
        "--allow-insecure-host", "mirror-b.example",
        "--extra-index-url", "https://extra.example/simple",
        "--extra-index-url", "https://download.pytorch.org/whl/cpu", "--index-strategy", "unsafe-best-match"]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    assert wheelhouse.uv_args("", {"SCALELAB_WHEELS": str(wheels)}) == ["--find-links", str(wheels)]


def test_uv_gets_pips_certificate_bundle_and_proxy_unless_the_environment_has_them():
    pip_config = "global.cert='/etc/ca.pem'\n:env:.proxy='http://proxy.example:3128'"
    env = wheelhouse.uv_env(pip_config, {"PATH": "/usr/bin"})
    assert env == {"PATH": "/usr/bin", "SSL_CERT_FILE": "/etc/ca.pem", "HTTPS_PROXY": "http://proxy.example:3128",
                   "HTTP_PROXY": "http://proxy.example:3128"}
    assert wheelhouse.uv_env(pip_config, {"SSL_CERT_FILE": "/mine.pem"})["SSL_CERT_FILE"] == "/mine.pem"


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-node.lock"])
def test_the_locks_pin_the_cpu_build_of_torch(lock):
    pins = [line for line in (ROOT / lock).read_text().splitlines() if line.startswith("torch==")]
    assert pins == ["torch==2.13.0+cpu"]
