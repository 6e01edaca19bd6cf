"""Supervised worker threads: a worker's loop that raises (a bug outside any one model call) fails
the work it held, is logged and counted, and starts again after `RESTART_PAUSE`; a worker that
ended would leave every later request waiting for its deadline."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

RESTART_PAUSE = 0.1  # seconds a worker waits after it failed before its loop starts again (no busy crash loop)


def supervise(
    work: Callable[[], None], recover: Callable[[BaseException], None], restarted: Callable[[], None]
) -> None:
    """`work()` until it returns (stopped); when it raises instead, `recover(exc)` fails the work it
    held (its callers answer 500 at once, not 504 at their deadline), the failure is logged,
    `restarted()` is told, and the loop starts again after `RESTART_PAUSE`."""
    while True:
        try:
            work()
            return
        except Exception as exc:  # a worker must outlive any bug in one turn
            name = threading.current_thread().name
            log.critical("batcher worker %s failed; restarting it", name, exc_info=exc)
            try:
                recover(exc)
            except Exception as again:  # noqa: BLE001 - the restart must not depend on it
                log.critical("batcher worker %s: failing its work failed too: %r", name, again)
            restarted()
            time.sleep(RESTART_PAUSE)


def start_supervised(
    name: str, work: Callable[[], None], recover: Callable[[BaseException], None], restarted: Callable[[], None]
) -> threading.Thread:
    """A daemon thread `name` running `work` supervised."""
    thread = threading.Thread(target=supervise, args=(work, recover, restarted), name=name, daemon=True)
    thread.start()
    return thread
