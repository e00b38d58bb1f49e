"""Errors a user can cause: printed as one line (what is wrong, what to do), no traceback.

The class is the workloads' own, so an error raised on a node and one raised on the controller
are handled the same way.
"""
from workloads.record import UserError

__all__ = ["UserError"]
