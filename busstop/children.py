"""Children that die with ``busstop up``, whatever ends it.

A Ctrl-C or SIGTERM lets ``busstop up`` stop its children in order. A SIGKILL gives it no chance, so on
Linux each child also asks the kernel (``prctl(PR_SET_PDEATHSIG)``) to be killed when its parent dies.
Elsewhere this is a no-op and only the orderly stop applies.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Run in the child between fork and exec (``Popen(preexec_fn=...)``)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
