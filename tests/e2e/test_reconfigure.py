"""A changed setting on a provisioned cluster, through one layer's tag: site.yml runs that layer alone and
restarts its daemons where they run, and nothing else.

Runs last on the session lab (tests/e2e/conftest.py orders it so): it leaves the lab with a setting of
its own, and restarting every Ray daemon again to put the default back would cost `make test` a minute;
the lab is torn down after it.  (Hadoop's restart by changed file: the growth test in test_provision.py
changes hdfs-site.xml on the old nodes, which restarts HDFS's daemons and leaves YARN's running; which
file restarts which daemon is test_services_static's.)
"""
from __future__ import annotations

import re

import pytest

from tests.e2e.labutil import daemons, ssh

pytestmark = pytest.mark.lab

SETTING = "SCALELAB_E2E_SETTING=1"


def _environ_has(lab, host: str, pid: str, text: str) -> bool:
    """Whether process ``pid``'s environment (/proc/<pid>/environ, NUL-separated) holds ``text``."""
    out = ssh(lab.spec, host, f"tr '\\0' '\\n' < /proc/{pid}/environ", check=False).stdout
    return text in out.splitlines()


def test_a_changed_ray_setting_re_runs_the_ray_layer_alone_and_restarts_ray(plab) -> None:
    """A new variable in Ray's environment file through `--tags ray`: only the Ray role's tasks run
    (after preflight), every Ray daemon on every node restarts (a new PID) with the variable in its
    environment, Hadoop's keep running, and the layer's own health check (every node in Ray) passes."""
    hosts = [h.name for h in plab.spec.hosts]
    before = {h: daemons(plab.spec, h) for h in hosts}
    assert "ray-head.service" in before[hosts[0]], before
    assert all(any(u.startswith("ray-") for u in before[h]) and any(u.startswith("hadoop-") for u in before[h])
               for h in hosts), before
    proc, _rc = plab.playbook("--tags", "ray", "-e", '{"ray_extra_env": {"SCALELAB_E2E_SETTING": "1"}}',
                              timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    roles = set(re.findall(r"^TASK \[(\w+) : (?!Validating arguments)", proc.stdout, re.M))
    assert "ray" in roles and roles <= {"ray"}, roles
    after = {h: daemons(plab.spec, h) for h in hosts}
    for h in hosts:
        assert set(after[h]) == set(before[h]), (h, before[h], after[h])
        for unit, pid in after[h].items():
            if unit.startswith("ray-"):
                assert pid != before[h][unit], f"{h}: {unit} not restarted after its setting changed"
                assert _environ_has(plab, h, pid, SETTING), f"{h}: {unit} runs without {SETTING}"
            else:
                assert pid == before[h][unit], f"{h}: {unit} restarted by the Ray layer"
