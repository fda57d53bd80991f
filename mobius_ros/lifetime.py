"""How long a process started by ``mobius-ros`` lives: the node that ``mobius-ros replay``
starts ends itself with the replay (``kill -9`` included). Shared by the CLI (which arms it
in the node) and replay (which sets the variable); no rclpy, no torch."""

from __future__ import annotations

import os
import sys
import time

# Set by `mobius-ros replay` for the node it starts: the pid the node must not outlive.
PARENT_ENV = "MOBIUS_EXIT_WITH_PARENT"


def exit_with_parent() -> None:
    """End this process (SIGTERM to itself, which the node handles as a clean stop) when the
    process named by ``$MOBIUS_EXIT_WITH_PARENT`` ends, however it ends (``kill -9``
    included): on Linux the kernel sends it (prctl PR_SET_PDEATHSIG), elsewhere a thread
    watches the parent pid. A no-op without the variable."""
    import signal

    text = os.environ.pop(PARENT_ENV, "")
    if not text.isdigit():
        return
    parent = int(text)
    armed = False
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(1, int(signal.SIGTERM), 0, 0, 0) == 0  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            armed = False
    if not armed:
        import threading

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
    if os.getppid() != parent:  # it ended before the above was in place
        os.kill(os.getpid(), signal.SIGTERM)
