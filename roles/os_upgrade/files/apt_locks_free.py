#!/usr/bin/env python3
"""Exit 0 when no process holds an apt/dpkg lock, 1 otherwise (for os_upgrade's wait).

apt and dpkg lock with fcntl(F_SETLK); try the same lock, non-blocking, and let it go at once.
"""
import fcntl
import os
import sys

for path in sys.argv[1:]:
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        continue
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.lockf(fd, fcntl.LOCK_UN)
    except OSError:
        print(f"locked: {path}")
        sys.exit(1)
    finally:
        os.close(fd)
print("free")
