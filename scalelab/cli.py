"""Helpers shared by the Fabric tasks: inventory selection, one-line errors, tables."""
from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from scalelab.errors import UserError

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
    """Turn UserError into one red line and exit 2, with no traceback."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
            sys.exit(2)
    return wrapper


def table(rows: list[dict[str, Any]], title: str | None = None, columns: list[str] | None = None) -> Table:
    cols = columns or (list(rows[0]) if rows else [])
    t = Table(title=title)
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*("" if r.get(c) is None else str(r.get(c)) for c in cols))
    return t
