"""scalelab's command line: `fab --list`.  Tasks are thin: parse options, call into `scalelab`."""
from __future__ import annotations

import time

from invoke import Collection, task

from scalelab import lab as _lab
from scalelab import labspec as _labspec
from scalelab.cli import console, table, user_errors

LAB_HELP = "lab inventory directory (default: inventory/lab)"


def _spec(inventory=None, workers=None):
    from pathlib import Path

    from scalelab.cli import REPO_ROOT
    inv = Path(inventory) if inventory else REPO_ROOT / "inventory" / "lab"
    return _labspec.load_spec(inv.resolve(), workers=None if workers is None else int(workers))


@task(help={"workers": "number of worker hosts besides the master (default: lab.yml, 2)",
            "rebuild_base": "rebuild the cached Debian base first", "inventory": LAB_HELP})
@user_errors
def lab_up(c, workers=None, rebuild_base=False, inventory=None):
    """Bring up the local lab: a master and N workers as systemd-nspawn hosts (needs root)."""
    spec = _spec(inventory, workers)
    if rebuild_base:
        import shutil
        shutil.rmtree(_lab.base_path(spec), ignore_errors=True)
    t0 = time.monotonic()
    state = _lab.up(spec, say=console.print)
    console.print(table(_lab.status(spec), title=f"lab {spec.name}"))
    console.print(f"lab up in {time.monotonic() - t0:.1f} s (base {state['base_seconds']} s); "
                  f"inventory: {spec.hosts_file}")


@task(help={"keep_disks": "keep the hosts' disks (default: remove them)", "inventory": LAB_HELP})
@user_errors
def lab_down(c, keep_disks=False, inventory=None):
    """Stop the lab and remove its hosts, bridges, routes, firewall chains and mounts."""
    spec = _spec(inventory)
    _lab.down(spec, say=console.print, keep_disks=keep_disks)
    console.print("lab down")


@task(help={"inventory": LAB_HELP})
@user_errors
def lab_status(c, inventory=None):
    """Show the lab's hosts: running or not, addresses, ssh."""
    spec = _spec(inventory)
    console.print(table(_lab.status(spec), title=f"lab {spec.name}"))


@task(help={"host": "lab host to cut the power of (master, worker1, ...)", "inventory": LAB_HELP})
@user_errors
def lab_kill(c, host, inventory=None):
    """Power-cut a lab host: all its processes die at once; its disk stays."""
    _lab.kill(_spec(inventory), host)
    console.print(f"{host} killed")


@task(help={"host": "lab host to boot again", "inventory": LAB_HELP})
@user_errors
def lab_start(c, host, inventory=None):
    """Boot a stopped lab host again, with its disk as it was."""
    t0 = time.monotonic()
    _lab.start(_spec(inventory), host, say=console.print)
    console.print(f"{host} up in {time.monotonic() - t0:.1f} s")


@task(help={"results": "results directory (default: results/)", "out": "output directory (default: reports/latest)"})
@user_errors
def report(c, results=None, out=None):
    """Build the Markdown + HTML report with tables and figures from the recorded results."""
    from pathlib import Path

    from scalelab import report as _report
    from scalelab import results as _results
    paths = _report.build(Path(results) if results else _results.RESULTS_DIR, Path(out) if out else None)
    console.print(f"report: {paths['html']}\n        {paths['markdown']}")


ns = Collection(report, lab_up, lab_down, lab_status, lab_kill, lab_start)
