"""The translated files of /translate_file and the file jobs that make them.

Parsing and writing happen in worker threads of their own (`Jobs`), never on the event loop,
with at most `max_file_jobs` files in progress (beyond: 503 + Retry-After); within a second of a job
the memory it freed is handed back to the system. Results live in one temporary folder of the
process (`Store`: bounded in bytes, expired by a timer, swept after a crash), each under a
random name, and are deleted after `ttl_s` (or at shutdown). The formats: service/formats/.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import functools
import gc
import io
import logging
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.errors import ServiceError, too_large
from service.html import T
from service.runtime.allocator import trim_heap

log = logging.getLogger("service")


def store(state: Any) -> Store:
    """The service's store, made at first use: a read-only root filesystem without a writable
    temporary folder still serves everything else; file translation then answers 503."""
    if state.files is None:
        s = state.settings
        try:
            state.files = Store(s.file_ttl_s, s.max_file_jobs, s.file_store_mb * 1024 * 1024)
        except OSError as exc:
            raise ServiceError(
                503, f"file translation needs a writable temporary folder (a tmpfs at /tmp, or TMPDIR): {exc.strerror}"
            ) from None
    return state.files


RELEASE_AFTER_S = 1.0  # a file job's freed memory goes back to the system this long after it ends


class Jobs:
    """The file jobs in progress: at most `limit` at once (`slot`; beyond it 503 + Retry-After at
    once), their parsing and writing (`run`) in `limit` threads of their own, so the event loop
    goes on answering (the probes, other requests) meanwhile. After a job its objects are
    collected (odfpy's tree is full of reference cycles) and the memory freed is handed back to
    the system, `RELEASE_AFTER_S` later: a job's peak stays no longer than that after the job.
    The jobs that end meanwhile share that one release: a full collection holds the GIL for
    50-100 ms, which a release after every job of a burst of small files spent again and again
    (200 files: 20 s of collections, the event loop stalled by each)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.running, self.closed = limit, 0, False
        self.pool = ThreadPoolExecutor(limit, thread_name_prefix="file-job")
        self._release: threading.Timer | None = None  # the release to come, if one is due
        self._lock = threading.Lock()

    @contextmanager
    def slot(self) -> Iterator[None]:
        if self.running >= self.limit:
            raise ServiceError(503, "file translation busy, retry later", headers={"Retry-After": "1"})
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._release_soon()

    def _release_soon(self) -> None:
        with self._lock:
            if self.closed or self._release is not None:
                return  # the release due takes this job's memory too
            self._release = threading.Timer(RELEASE_AFTER_S, self._released)
            self._release.daemon = True
            self._release.start()

    def _released(self) -> None:
        with self._lock:
            self._release = None  # a job that ends from now on is released by the next one
        _release_memory()

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in one of the jobs' threads."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(function, *args))

    def close(self) -> None:
        """At shutdown: jobs not started are dropped; one still running ends with its request."""
        with self._lock:
            self.closed = True
            if self._release is not None:
                self._release.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)


def _release_memory() -> None:
    """Collect garbage and return the heap's free pages to the system (glibc's malloc_trim; the
    service keeps up to 2 x `retain_freed_mb` of freed heap otherwise, and a file job's
    documents can free hundreds of MB)."""
    gc.collect()
    trim_heap()


MAX_NAME_BYTES = 128  # a stored file's name, in UTF-8 (file systems allow 255, some 143)


def safe_name(name: str) -> str:
    """The name a translated file is stored and downloaded under: the upload's last path part,
    with every character but letters, digits, `_`, `.` and `-` replaced, shortened to
    MAX_NAME_BYTES bytes of UTF-8 (never inside a character) with its extension kept."""
    safe = re.sub(r"[^\w.-]", "_", Path(name).name).strip(".") or "file"
    ext = Path(safe).suffix if len(Path(safe).suffix) <= 16 else ""
    stem = safe[: len(safe) - len(ext)].encode()[: MAX_NAME_BYTES - len(ext.encode())]
    return (stem.decode("utf-8", "ignore") or "file") + ext


STORE_PREFIX = "transerve-files-"  # each process's store: a folder of this name in the temporary folder
FULL = "file store full, retry later"
GONE = "no such file (or it expired)"


def sweep_orphans(parent: Path | None = None) -> list[Path]:
    """Remove the stores of processes that ended without removing them (kill -9, out of memory,
    a node restart with /tmp kept): a store is held by its process with a `flock` on its
    folder, which the kernel releases when the process ends however it ends, so a folder whose
    lock can be taken has no owner. Stores of live processes (other replicas, tests) are left.
    The folders removed."""
    swept: list[Path] = []
    try:
        folders = list((parent or Path(tempfile.gettempdir())).glob(STORE_PREFIX + "*"))
    except OSError:  # no temporary folder: nothing to sweep
        return swept
    for folder in folders:
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its process lives
            continue
        else:
            shutil.rmtree(folder, ignore_errors=True)
            swept.append(folder)
        finally:
            os.close(fd)
    if swept:
        log.warning("removed %d file store(s) left by ended processes: %s", len(swept), ", ".join(map(str, swept)))
    return swept


class Store:
    """Translated files, each in the process's own temporary folder under a random token, and the
    file `jobs` that make them.

    * Bounded: the stored files' bytes stay within `max_bytes`; a file that does not fit (or a
      disk that is full) is 503 `file store full, retry later` + Retry-After (when the oldest
      files that make room expire), nothing of it left on disk.
    * Expired by a timer thread of its own, `ttl_s` after each file was written, whether or not
      requests come; downloads never list or stat the folder (an index in memory says what is
      there), so their cost does not grow with the files stored.
    * Held with a `flock` on its folder while the process lives (`sweep_orphans` removes the
      stores of dead processes); a folder removed from outside is made anew (its files are gone:
      their downloads are 404) at the next write or timer tick.
    """

    def __init__(self, ttl_s: float, max_jobs: int = 2, max_bytes: int = 0) -> None:
        self.ttl_s, self.max_bytes = ttl_s, max_bytes  # max_bytes 0: no bound
        self._lock = threading.Lock()
        self._files: dict[str, tuple[int, float]] = {}  # token -> (bytes, deadline), in deadline order
        self.used = 0  # bytes of the stored files and of those being written
        self._fd = -1
        self.root = self._make_root()
        self.jobs = Jobs(max_jobs)
        self._stop = threading.Event()
        # a tick well within the lifetime: a file outlives its ttl_s by at most a tick
        self.tick_s = min(1.0, ttl_s / 4)
        threading.Thread(target=self._tick, name="file-expiry", daemon=True).start()

    def _make_root(self) -> Path:
        """A new store folder, locked (see `sweep_orphans`; a sweep that took the lock between
        the folder's making and ours has removed it: then another one)."""
        while True:
            root = Path(tempfile.mkdtemp(prefix=STORE_PREFIX))
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.path.samestat(os.fstat(fd), os.stat(root)):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        return root

    def _renew_root(self, seen: Path) -> None:
        """The store folder `seen` is gone (removed from outside): a new one, the index emptied."""
        with self._lock:
            if self.root != seen or self.root.is_dir():
                return  # another thread has made it anew already
            log.warning("file store %s was removed from outside; its files are gone, making a new one", seen)
            self._files.clear()
            self.used = 0
            self.root = self._make_root()

    def room(self) -> None:
        """503 + Retry-After at once when the store is full (before a file's work is done)."""
        with self._lock:
            if self.max_bytes and self.used >= self.max_bytes:
                raise self._full(1)

    def _full(self, needed: int) -> ServiceError:
        """The answer when `needed` more bytes do not fit: retry when enough of the oldest files
        will have expired to make room (the caller holds the lock)."""
        now = time.time()
        free, at = (self.max_bytes - self.used if self.max_bytes else 0), now + self.ttl_s
        for size, deadline in self._files.values():
            free += size
            if free >= needed:
                at = deadline
                break
        return ServiceError(503, FULL, headers={"Retry-After": str(max(1, math.ceil(at - now)))})

    def put(self, name: str, data: bytes) -> tuple[str, str]:
        """Store `data` as `name` (made safe: `safe_name`); its token and stored name. Beyond the
        bound or on a full disk: 503 (`FULL`); nothing is left behind when writing fails."""
        size = len(data)
        if self.max_bytes and size > self.max_bytes:
            raise too_large(f"translated file of {size} bytes is larger than the file store ({self.max_bytes})")
        with self._lock:
            if self.max_bytes and self.used + size > self.max_bytes:
                raise self._full(size)
            self.used += size  # reserved while it is written
        token, safe = secrets.token_urlsafe(16), safe_name(name)
        try:
            root = self.root
            try:
                (root / token).mkdir()
            except FileNotFoundError:  # the store folder was removed from outside
                self._renew_root(root)
                root = self.root
                (root / token).mkdir()
            try:
                (root / token / safe).write_bytes(data)
            except BaseException:
                shutil.rmtree(root / token, ignore_errors=True)
                raise
        except OSError as exc:
            with self._lock:
                self.used -= size
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # the disk filled before the bound
                    raise self._full(size) from None
            raise
        except BaseException:
            with self._lock:
                self.used -= size
            raise
        with self._lock:
            if self.root == root:
                self._files[token] = (size, time.time() + self.ttl_s)
            else:  # the folder was made anew meanwhile (which emptied the index): the file went with it
                self.used -= size
        return token, safe

    def open(self, token: str, name: str) -> io.BufferedReader:
        """The stored file `name` under `token`, opened for reading: the open file stays whole
        if expiry removes it while it is being sent. 404 when it is not there (or expired)."""
        if (
            not re.fullmatch(r"[\w-]{16,64}", token)
            or not re.fullmatch(r"[\w.-]+", name)
            or len(name.encode()) > MAX_NAME_BYTES
            or name in (".", "..")
        ):
            raise ServiceError(404, GONE)
        entry = self._files.get(token)
        if entry is None or entry[1] <= time.time():
            raise ServiceError(404, GONE)
        try:
            return (self.root / token / name).open("rb")
        except OSError:  # removed meanwhile (expiry, from outside), or not this name
            raise ServiceError(404, GONE) from None

    def expire(self, now: float | None = None) -> None:
        """Delete the files whose lifetime has passed; make the folder anew if it was removed."""
        now = time.time() if now is None else now
        with self._lock:
            due = []
            for token, (size, deadline) in self._files.items():
                if deadline > now:
                    break  # in deadline order: the rest are younger
                due.append((token, size))
            for token, size in due:
                del self._files[token]
                self.used -= size
            root = self.root
        for token, _ in due:
            shutil.rmtree(root / token, ignore_errors=True)
        if not root.is_dir():
            self._renew_root(root)

    def _tick(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.expire()
            except Exception:  # the timer goes on; the next tick tries again
                log.exception("file store expiry failed")

    def close(self) -> None:
        self._stop.set()
        self.jobs.close()
        shutil.rmtree(self.root, ignore_errors=True)
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


sweep_orphans()  # at start-up (the routes import this module): stores left by an earlier process
