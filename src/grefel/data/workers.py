"""DataLoader workers that end when the process that feeds them does."""

from __future__ import annotations

import os
import select
import threading


def end_with(feeder_pid: int, worker_id: int) -> None:
    """`worker_init_fn` (bound with `functools.partial`): end this worker as soon as `feeder_pid` ends.

    PyTorch's workers end when their parent changes, but a worker started by a fork server is the server's
    child, and the server lives as long as any of its children (each holds the server's liveness pipe): a
    trainer killed outright (`kill -9`, the OOM killer) left its server and workers running for good. Once
    the workers end, the server sees its pipe close and ends too.
    """
    try:
        handle = os.pidfd_open(feeder_pid)
    except ProcessLookupError:
        os._exit(0)
    except OSError:  # a kernel without pidfd (Linux < 5.3): PyTorch's own parent check is all there is
        return
    threading.Thread(target=_exit_when_readable, args=(handle,), name="end-with-feeder", daemon=True).start()


def _exit_when_readable(handle: int) -> None:
    select.select([handle], [], [])  # a pidfd turns readable when its process ends
    os._exit(0)  # nothing of a worker's is worth saving, and the feeder is gone
