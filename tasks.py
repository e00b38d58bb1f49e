"""scalelab's command line: `fab --list`.  Tasks are thin: parse options, call into `scalelab`."""
from __future__ import annotations

import time

from invoke import Collection, task

from scalelab import lab as _lab
from scalelab import labspec as _labspec
from scalelab.cli import console, table, user_errors


@task(help={"workers": "number of worker hosts besides the master (default: lab.yml, 2)",
            "rebuild_base": "rebuild the cached Debian base first"})
@user_errors
def lab_up(c, workers=None, rebuild_base=False):
    """Bring up the local lab: a master and N workers as systemd-nspawn hosts (needs root)."""
    spec = _labspec.load_spec(workers=None if workers is None else int(workers))
    if rebuild_base:
        import shutil
        shutil.rmtree(_lab.base_path(spec), ignore_errors=True)
    t0 = time.monotonic()
    state = _lab.up(spec, say=console.print)
    console.print(table(_lab.status(spec), title=f"lab {spec.name}"))
    console.print(f"lab up in {time.monotonic() - t0:.1f} s (base {state['base_seconds']} s); "
                  f"inventory: {spec.hosts_file}")


@task(help={"keep_disks": "keep the hosts' disks (default: remove them)"})
@user_errors
def lab_down(c, keep_disks=False):
    """Stop the lab and remove its hosts, bridges, routes, firewall chains and mounts."""
    spec = _labspec.load_spec()
    _lab.down(spec, say=console.print, keep_disks=keep_disks)
    console.print("lab down")


@task
@user_errors
def lab_status(c):
    """Show the lab's hosts: running or not, addresses, ssh."""
    spec = _labspec.load_spec()
    console.print(table(_lab.status(spec), title=f"lab {spec.name}"))


@task(help={"host": "lab host to cut the power of (master, worker1, ...)"})
@user_errors
def lab_kill(c, host):
    """Power-cut a lab host: all its processes die at once; its disk stays."""
    _lab.kill(_labspec.load_spec(), host)
    console.print(f"{host} killed")


@task(help={"host": "lab host to boot again"})
@user_errors
def lab_start(c, host):
    """Boot a stopped lab host again, with its disk as it was."""
    t0 = time.monotonic()
    _lab.start(_labspec.load_spec(), host, say=console.print)
    console.print(f"{host} up in {time.monotonic() - t0:.1f} s")


ns = Collection(lab_up, lab_down, lab_status, lab_kill, lab_start)
