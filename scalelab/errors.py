"""Errors a user can cause: printed as one line (what is wrong, what to do), no traceback.

The class is the workloads' own, so an error raised on a node and one raised on the controller
are handled the same way.
"""
from workloads.record import UserError

__all__ = ["Failure", "UserError"]


class Failure(RuntimeError):
    """Something the user did not cause and cannot fix by a flag failed, and the message says what is
    known (a lab host that will not boot: what ssh said, its console's tail).  `fab` prints the message
    without a traceback and exits 1."""
