"""The node's model cache: complete model directories keyed by content digest, evicted least
recently used first when the total would pass a bound.

    ROOT/entries/KEY/        a complete, verified model directory (renamed into place, never written)
    ROOT/entries/KEY.used    its last use (mtime), the LRU order
    ROOT/staging/NAME/       downloads in progress; cleared of anything older than an hour
    ROOT/lock                flock: shared while an entry is read, exclusive to add or evict

Only a directory that was downloaded completely and whose digests matched is renamed into
entries/, so a crash mid-download leaves nothing there that a later pod would serve.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("kinfer_runtime.fetch")

STALE_STAGING_S = 3600


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@dataclass(frozen=True)
class NodeCache:
    root: Path
    max_bytes: int

    @property
    def entries(self) -> Path:
        return self.root / "entries"

    @contextlib.contextmanager
    def _locked(self, mode: int) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "lock").open("a") as f:
            fcntl.flock(f, mode)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def staging(self) -> Path:
        """A fresh directory on the cache's file system (so an entry is made by a rename)."""
        base = self.root / "staging"
        base.mkdir(parents=True, exist_ok=True)
        for old in base.iterdir():
            with contextlib.suppress(OSError):
                if time.time() - old.stat().st_mtime > STALE_STAGING_S:
                    shutil.rmtree(old, ignore_errors=True)
        path = base / uuid.uuid4().hex
        path.mkdir()
        return path

    @contextlib.contextmanager
    def lookup(self, key: str) -> Iterator[Path | None]:
        """The entry for key, held against eviction while the caller copies it out."""
        with self._locked(fcntl.LOCK_SH):
            entry = self.entries / key
            if entry.is_dir():
                (self.entries / f"{key}.used").touch()
                yield entry
            else:
                yield None

    def add(self, key: str, directory: Path) -> Path | None:
        """Move a complete model directory in as key, evicting the least recently used entries
        to make room. None when it cannot fit at all (it is left where it is)."""
        size = tree_size(directory)
        if size > self.max_bytes:
            log.warning("model of %.1f MB is larger than the cache (%.1f MB): not cached",
                        size / 1e6, self.max_bytes / 1e6)  # fmt: skip
            return None
        with self._locked(fcntl.LOCK_EX):
            self.entries.mkdir(parents=True, exist_ok=True)
            entry = self.entries / key
            if entry.is_dir():  # another pod on this node finished first
                shutil.rmtree(directory, ignore_errors=True)
            else:
                self._evict(self.max_bytes - size)
                directory.rename(entry)
            (self.entries / f"{key}.used").touch()
            return entry

    def _evict(self, keep_at_most: int) -> None:
        found = []
        for entry in self.entries.iterdir():
            if entry.is_dir():
                used = self.entries / f"{entry.name}.used"
                when = used.stat().st_mtime if used.exists() else 0.0
                found.append((when, entry, tree_size(entry)))
        total = sum(size for _, _, size in found)
        for _, entry, size in sorted(found, key=lambda f: f[0]):
            if total <= keep_at_most:
                break
            log.info("cache: evicting %s (%.1f MB, least recently used)", entry.name, size / 1e6)
            # Renamed away first: a reader never sees a half-deleted entry.
            doomed = self.root / "staging" / f"evicted-{uuid.uuid4().hex}"
            doomed.parent.mkdir(parents=True, exist_ok=True)
            entry.rename(doomed)
            (self.entries / f"{entry.name}.used").unlink(missing_ok=True)
            shutil.rmtree(doomed, ignore_errors=True)
            total -= size


def link_tree(src: Path, dst: Path) -> None:
    """Make dst hold src's files: hard links where both are on one file system, else copies."""
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
