"""Helpers shared by the Fabric tasks: inventory selection, one-line errors, tables."""
from __future__ import annotations

import functools
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from scalelab.errors import Failure, UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INVENTORY = "inventory/lab"

# Tables stay readable when the output is a log or a pipe (rich would squeeze them to 80 columns).
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, soft_wrap=True)  # errors: one line, never wrapped


def inventory_path(option: str | None = None) -> Path:
    """--inventory, else $SCALELAB_INVENTORY, else inventory/lab (relative to the repo root)."""
    raw = option or os.environ.get("SCALELAB_INVENTORY") or DEFAULT_INVENTORY
    p = Path(raw)
    if not p.is_absolute():
        p = (Path.cwd() / p) if (Path.cwd() / p).exists() else (REPO_ROOT / p)
    if not p.exists():
        raise UserError(f"inventory {raw} does not exist: pass --inventory PATH or set SCALELAB_INVENTORY")
    return p


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn UserError into one red line and exit 2, a Failure into its message and exit 1, and Ctrl-C
    into one line and exit 130: no traceback."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            error_line(str(exc))
            sys.exit(2)
        except Failure as exc:
            error_line(str(exc))
            sys.exit(1)
        except KeyboardInterrupt:
            error_line("interrupted (Ctrl-C)")
            sys.exit(130)
    return wrapper


def error_line(message: str) -> None:
    """`error: MESSAGE` on stderr; the message is text, never rich markup (it may hold `[/]`)."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", message))


def say(message: str) -> None:
    """A progress line on stdout, printed as it is (no markup)."""
    console.print(message, markup=False, highlight=False)


def int_option(name: str, value: Any, minimum: int = 1) -> int:
    """--NAME as a whole number >= minimum, or one line saying what to give."""
    try:
        n = int(str(value).strip())
    except ValueError:
        raise UserError(f"--{name} {value!r}: give a whole number (e.g. --{name} {max(minimum, 2)})") from None
    if n < minimum:
        raise UserError(f"--{name} must be at least {minimum}, not {n}")
    return n


def int_list(name: str, value: Any, minimum: int = 1) -> list[int]:
    """--NAME as comma-separated whole numbers (e.g. 1,2,3)."""
    parts = [p for p in str(value).split(",")]
    if not all(p.strip() for p in parts):
        raise UserError(f"--{name} {value!r}: give comma-separated whole numbers (e.g. --{name} 1,2,3)")
    try:
        return [int_option(name, p, minimum) for p in parts]
    except UserError:
        raise UserError(f"--{name} {value!r}: give comma-separated whole numbers, each at least {minimum} "
                        f"(e.g. --{name} 1,2,3)") from None


def name_list(name: str, value: Any) -> list[str]:
    parts = [p.strip() for p in str(value).split(",")]
    if not all(parts):
        raise UserError(f"--{name} {value!r}: give comma-separated names with nothing empty between the commas")
    return parts


def split_args(value: str | None) -> list[str]:
    """--args as the shell would split it; an unbalanced quote is one line, not a traceback."""
    try:
        return shlex.split(value or "")
    except ValueError as exc:
        raise UserError(f"--args {value!r}: {exc} (quote the whole value once: --args '--max-iter 5')") from None


def table(rows: list[dict[str, Any]], title: str | None = None, columns: list[str] | None = None) -> Table:
    cols = columns or (list(rows[0]) if rows else [])
    t = Table(title=title)
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*(Text("" if r.get(c) is None else str(r.get(c))) for c in cols))  # as text: never markup
    return t
