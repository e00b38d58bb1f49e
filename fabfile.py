"""Fabric 3 looks for `fabfile`: the tasks live in tasks.py."""
from tasks import ns  # noqa: F401
