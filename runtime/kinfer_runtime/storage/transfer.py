"""Parallel ranged reads of one object into a file, hashed as the parts land.

The file is allocated to its full size first (a full disk fails at once, not after minutes), parts
of PART bytes are read by a pool of threads and written at their offsets, and, when the object has
a digest to check, the calling thread hashes the parts in order as each completes (re-read from
the page cache), so the SHA-256 is ready when the last part lands. Without one nothing is hashed:
on a busy node hashing costs about as much CPU as the download itself. A part that fails
transiently is retried with back-off.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from kinfer_runtime.storage import errors
from kinfer_runtime.storage.errors import FetchError
from kinfer_runtime.storage.sources import Remote, Source

log = logging.getLogger("kinfer_runtime.fetch")

PART = 8 << 20  # bytes per ranged read (boto3's default part size)
RETRIES = 4
PROGRESS_EVERY_S = 2.0


@dataclass
class Progress:
    """Bytes landed so far, over every object of one fetch; logs a line every few seconds."""

    uri: str
    total: int
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    _last: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < PROGRESS_EVERY_S:
            return
        self._last = now
        took = max(now - self.started, 1e-9)
        log.info(
            "%s: %.1f/%.1f MB (%.1f MB/s)",
            self.uri,
            self.done / 1e6,
            self.total / 1e6,
            self.done / took / 1e6,
        )


def no_space(uri: str, path: Path, exc: OSError) -> FetchError:
    return FetchError(errors.NO_SPACE, uri, f"no space left for {path}: {exc.strerror}")


def _allocate(fd: int, size: int, uri: str, path: Path) -> None:
    if size == 0:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise no_space(uri, path, exc) from exc
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        os.ftruncate(fd, size)  # a file system without fallocate: the writes find out


def _part(source: Source, obj: Remote, fd: int, start: int, end: int, progress: Progress, path: Path) -> None:
    for attempt in range(RETRIES):
        pos = start
        try:
            for chunk in source.read(obj, start, end):
                if pos + len(chunk) > end:
                    raise FetchError(
                        errors.INVALID, source.uri, f"{obj.path}: more bytes than the range asked for"
                    )
                os.pwrite(fd, chunk, pos)
                pos += len(chunk)
                progress.add(len(chunk))
            if pos != end:
                raise FetchError(errors.UNREACHABLE, source.uri, f"{obj.path}: the connection closed early",
                                 transient=True)  # fmt: skip
            return
        except FetchError as exc:
            progress.add(start - pos)  # counted again on the retry
            if not exc.transient or attempt == RETRIES - 1:
                raise
            time.sleep(0.5 * 2**attempt)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise no_space(source.uri, path, exc) from exc
            raise


def download(source: Source, obj: Remote, path: Path, pool: ThreadPoolExecutor, progress: Progress) -> str:
    """Write obj to path; return its SHA-256 (hex) when it has one to check (else ""). Raises
    FetchError on a digest mismatch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _allocate(fd, obj.size, source.uri, path)
        bounds = [(s, min(s + PART, obj.size)) for s in range(0, obj.size, PART)] if source.ranged else []
        if not bounds:
            bounds = [(0, obj.size)] if obj.size else []
        futures: list[Future[None]] = [
            pool.submit(_part, source, obj, fd, s, e, progress, path) for s, e in bounds
        ]
        digest = hashlib.sha256()
        try:
            for fut, (start, end) in zip(futures, bounds, strict=True):
                while not fut.done():
                    wait([fut], timeout=PROGRESS_EVERY_S, return_when=FIRST_COMPLETED)
                    progress.report()
                fut.result()
                pos = start if obj.sha256 else end
                while pos < end:
                    data = os.pread(fd, min(8 << 20, end - pos), pos)
                    digest.update(data)
                    pos += len(data)
        except BaseException:
            for f in futures:
                f.cancel()
            wait(futures)  # none may still write to fd once it is closed
            raise
    finally:
        os.close(fd)
    if not obj.sha256:
        return ""
    got = digest.hexdigest()
    if got != obj.sha256:
        raise FetchError(errors.CHECKSUM, source.uri, f"{obj.path}: sha256 is {got}, expected {obj.sha256}")
    return got
