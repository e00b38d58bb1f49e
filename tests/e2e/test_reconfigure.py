"""A changed setting on a provisioned cluster: site.yml restarts the daemons it concerns where they run.

Runs last on the session lab (tests/e2e/conftest.py orders it so): it leaves the lab with settings of
its own, and restarting every daemon twice to put the defaults back would cost minutes of `make test`;
the lab is torn down after it.
"""
from __future__ import annotations

import pytest

from tests.e2e.labutil import daemons, ssh

pytestmark = pytest.mark.lab


def _proc_has(lab, host: str, pid: str, what: str, text: str) -> bool:
    """Whether /proc/<pid>/<what> (cmdline or environ, NUL-separated) holds ``text``."""
    out = ssh(lab.spec, host, f"tr '\\0' '\\n' < /proc/{pid}/{what}", check=False).stdout
    return text in out.splitlines()


def test_a_changed_setting_restarts_every_running_daemon_with_it(plab) -> None:
    """A new heap size (hadoop-env.sh) and a new variable in Ray's environment file, through `--tags
    hadoop,ray`: every Hadoop and Ray daemon on every node restarts (a new PID), the running processes
    have the new setting, and the layers' own health checks (DataNodes live, every node in Ray) pass."""
    hosts = [h.name for h in plab.spec.hosts]
    master = hosts[0]
    before = {h: daemons(plab.spec, h) for h in hosts}
    assert {"hadoop-namenode.service", "ray-head.service"} <= set(before[master]), before
    assert all(any(u.startswith("ray-") for u in before[h]) and any(u.startswith("hadoop-") for u in before[h])
               for h in hosts), before
    proc, _rc = plab.playbook("--tags", "hadoop,ray", "-e", "hadoop_heapsize_mb=768",
                              "-e", '{"ray_extra_env": {"SCALELAB_E2E_SETTING": "1"}}', timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    after = {h: daemons(plab.spec, h) for h in hosts}
    for h in hosts:
        assert set(after[h]) == set(before[h]), (h, before[h], after[h])
        kept = [u for u in before[h] if after[h][u] == before[h][u]]
        assert not kept, f"{h}: not restarted after their settings changed: {kept}"
    assert _proc_has(plab, master, after[master]["hadoop-namenode.service"], "cmdline", "-Xmx768m")
    assert _proc_has(plab, hosts[-1], after[hosts[-1]]["ray-worker.service"], "environ", "SCALELAB_E2E_SETTING=1")
