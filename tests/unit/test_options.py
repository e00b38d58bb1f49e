"""Every bad option of `fab` is one line saying what to give, a non-zero exit, and no traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scalelab import cli
from scalelab.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
FAB = Path(sys.executable).parent / "fab"


@pytest.mark.parametrize(("args", "message"), [
    (["run-experiment", "pagerank", "--nodes", "two"], "--nodes 'two': give a whole number"),
    (["run-experiment", "pagerank", "--nodes", "0"], "--nodes must be at least 1, not 0"),
    (["run-experiment", "pagerank", "--nodes", "1", "--timeout", "soon"], "--timeout 'soon': give a whole number"),
    (["run-experiment", "pagerank", "--nodes", "1", "--args", "--tol 'x"], "No closing quotation"),
    (["run-matrix", "--nodes", "1,x"], "--nodes '1,x': give comma-separated whole numbers"),
    (["run-matrix", "--nodes", "1,,2"], "--nodes '1,,2': give comma-separated whole numbers"),
    (["run-matrix", "--workloads", "pa[/]gerank"], "unknown workload 'pa[/]gerank'"),
    (["run-matrix", "--repeat", "-1"], "--repeat must be at least 1, not -1"),
])
def test_bad_option_is_one_line(args: list[str], message: str) -> None:
    proc = subprocess.run([str(FAB), *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "SCALELAB_INVENTORY": str(ROOT / "no-such-inventory")})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


def test_parsers() -> None:
    assert cli.int_option("nodes", " 3 ") == 3
    assert cli.int_list("nodes", "1,2,3") == [1, 2, 3]
    assert cli.split_args("--damping 0.95 --name 'a b'") == ["--damping", "0.95", "--name", "a b"]
    assert cli.split_args(None) == []
    with pytest.raises(UserError, match="--nodes must be at least 1, not -2"):
        cli.int_option("nodes", "-2")


def test_ctrl_c_is_one_line_and_exit_130(capsys) -> None:
    @cli.user_errors
    def task() -> None:
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as exc:
        task()
    assert exc.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: interrupted (Ctrl-C)"]


def test_markup_in_a_message_is_printed_as_it_is(capsys) -> None:
    cli.error_line("bad [/] value [bold]x")
    assert capsys.readouterr().err.strip() == "error: bad [/] value [bold]x"


def test_a_lab_host_that_will_not_boot_is_its_message_and_exit_1_not_a_traceback(capsys) -> None:
    from scalelab.lab.hosts import HostUnreachable

    @cli.user_errors
    def task() -> None:
        raise HostUnreachable("master", "did not answer on ssh within 120 s", "No route to host", "boot line")
    with pytest.raises(SystemExit) as exc:
        task()
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: master did not answer on ssh within 120 s; ssh said: No route to host\n"), err
    assert "--- console of master (last lines) ---\nboot line" in err and "Traceback" not in err
