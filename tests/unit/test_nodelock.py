"""requirements-node.lock is the nodes' part of requirements.lock: same pins, complete, up to date."""
from __future__ import annotations

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
