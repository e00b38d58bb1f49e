"""`make bench-scale` on the lab stops before a dataset whose ranks cannot share this machine's memory."""
from __future__ import annotations

import os

import pytest

from bench import scale_bench
from scalelab.errors import UserError
from workloads import data


@pytest.fixture
def machine_of_24_gib(monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.sysconf
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 24 * 2**30 // 4096}
    monkeypatch.setattr(os, "sysconf", lambda name: pages.get(name) or real(name))


def test_the_seed_s_largest_cut_on_a_3_host_lab_of_one_24_gib_machine_is_refused(machine_of_24_gib) -> None:
    """Seen: all four runs OOM-killed (ranks at 7 GB and rising) after 11 GB had been copied to each host."""
    with pytest.raises(UserError, match=r"^data on the lab needs ~52 GiB of this machine's memory \(its 3 hosts "
                                        r"share its 24 GiB; a rank holds ~80 B per edge of its share\): pick a "
                                        r"smaller --dataset, or run on a real cluster$"):
        scale_bench.check_lab_memory("data", data.spec_for("data").edges, 3)


def test_data_2_fits_the_same_machine(machine_of_24_gib) -> None:
    scale_bench.check_lab_memory("data_2", data.spec_for("data_2").edges, 3)  # ran here: the four runs finished
