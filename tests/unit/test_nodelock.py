"""requirements-node.lock is the nodes' part of requirements.lock: same pins, complete, up to date."""
from __future__ import annotations

import ast
import sys
from importlib import metadata
from pathlib import Path

from scalelab import nodelock


def test_node_lock_is_up_to_date() -> None:
    assert nodelock.main(["--check"]) == 0, "run `python -m scalelab.nodelock`"


def test_every_node_pin_is_a_controller_pin_and_tools_stay_off_the_nodes() -> None:
    main = nodelock.lock_lines(nodelock.MAIN_LOCK.read_text())
    node = nodelock.lock_lines(nodelock.NODE_LOCK.read_text())
    assert node and all(main[name] == line for name, line in node.items())
    for must in ("torch", "ray", "xgboost-cpu", "pyarrow", "numpy", "scipy", "scikit-learn"):
        assert must in node
    for tool in ("ansible", "ansible-core", "ansible-lint", "pytest", "fabric", "matplotlib", "ruff"):
        assert tool not in node


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, at module level or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_node_lock_holds_every_library_the_workloads_import() -> None:
    """The workloads run on the nodes: a library one of them imports, even lazily (torch_ppr in
    ``pagerank --method seed``), must come with the node lock, or the run fails there only."""
    node = nodelock.lock_lines(nodelock.NODE_LOCK.read_text())
    dists = metadata.packages_distributions()
    missing = {}
    for path in sorted((nodelock.REPO_ROOT / "workloads").glob("*.py")):
        for mod in imported_modules(path) - set(sys.stdlib_module_names) - {"workloads", "__future__"}:
            if not any(nodelock.canon(d) in node for d in dists.get(mod, [])):
                missing[mod] = path.name
    assert not missing, f"imported by the workloads, not in requirements-node.in: {missing}"
