"""scalelab workloads: the experiment code that runs on the nodes.

Each workload has one numeric kernel and thin drivers (Ray, torch.distributed, reference),
and writes one result record (see :mod:`workloads.record`) per run.
"""
