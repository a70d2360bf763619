"""`kinfer-runtime fetch URI DIR`: the storage initializer.

Runs as the model-server pod's init container. It names the model's content (the cache key:
an OCI manifest digest, the given sha256 of an https:// file, or the store's ETags and sizes),
serves it from the node cache when it is there, and otherwise downloads it into a staging
directory, checks every digest it has, unpacks archives, adds it to the cache, and only then
links it into DIR. DIR holds the model and `.kinfer-fetch.json` (what happened, in seconds and
bytes) and nothing else: whatever a failed earlier attempt left there is removed first.

On failure it exits 1 and writes `CAUSE: URI: detail` to the termination message
(/dev/termination-log), which the operator copies into the InferenceService's conditions; the
kubelet restarts it with back-off. On success the termination message is the report.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kinfer_runtime.storage import errors, oci, sources
from kinfer_runtime.storage.cache import NodeCache, link_tree
from kinfer_runtime.storage.errors import FetchError
from kinfer_runtime.storage.sources import Remote, Source
from kinfer_runtime.storage.transfer import Progress, download, no_space

log = logging.getLogger("kinfer_runtime.fetch")

REPORT = ".kinfer-fetch.json"
TERMINATION_LOG = "/dev/termination-log"
ARCHIVES = (".tar", ".tar.gz", ".tgz", ".zip")


@dataclass(frozen=True)
class Report:
    uri: str
    key: str  # cache key ("" when the content cannot be named)
    cache_hit: bool
    bytes: int  # downloaded (0 on a cache hit)
    download_seconds: float
    total_seconds: float
    files: int


def _key(kind: str, text: str) -> str:
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:40]}"


def _unpack(archive: Path, into: Path, uri: str) -> None:
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                for name in z.namelist():
                    target = (into / name).resolve()
                    if into.resolve() not in target.parents and target != into.resolve():
                        raise FetchError(errors.INVALID, uri, f"archive member {name!r} leaves the directory")
                z.extractall(into)
        else:
            with tarfile.open(archive) as tar:
                tar.extractall(into, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile) as exc:
        raise FetchError(errors.INVALID, uri, f"{archive.name}: not a readable archive: {exc}") from exc
    archive.unlink()
    entries = list(into.iterdir())
    if len(entries) == 1 and entries[0].is_dir():  # one top-level directory: it is the model
        inner = entries[0]
        for child in inner.iterdir():
            child.rename(into / child.name)
        inner.rmdir()


def _download_all(source: Source, objects: list[Remote], into: Path, workers: int) -> int:
    total = sum(o.size for o in objects)
    progress = Progress(source.uri, total)
    log.info(
        "%s: downloading %d file(s), %.1f MB, %d parallel reads",
        source.uri,
        len(objects),
        total / 1e6,
        workers,
    )
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for obj in objects:
            target = (into / obj.path).resolve()
            if into.resolve() not in target.parents:
                raise FetchError(
                    errors.INVALID, source.uri, f"object {obj.path!r} leaves the model directory"
                )
            download(source, obj, target, pool, progress)
    progress.report(force=True)
    return progress.done


Opener = Callable[[str, str, int], Source]


class _Named:
    """What uri names, asked of the store once (the cache key and the download both need it;
    each client costs about 0.1 s of CPU to make, each listing a round trip per file)."""

    def __init__(self, uri: str, sha256: str, workers: int, opener: Opener) -> None:
        self.uri, self.sha256, self.workers, self.opener = uri, sha256, workers, opener

    @functools.cached_property
    def manifest(self) -> tuple[Any, oci.Reference, dict[str, Any], str]:
        return oci.manifest(self.uri)

    @functools.cached_property
    def source(self) -> Source:
        return self.opener(self.uri, self.sha256, self.workers)

    @functools.cached_property
    def objects(self) -> list[Remote]:
        return self.source.objects()

    def key(self) -> str:
        """The cache key of what uri names now, or "" when its content cannot be named."""
        if self.uri.startswith("oci://"):
            return "oci-" + self.manifest[3].removeprefix("sha256:")
        if self.sha256:
            return "sha256-" + self.sha256
        if any(not o.version for o in self.objects):
            return ""  # no ETag: a changed file could not be told apart
        return _key(self.uri.split(":", 1)[0], sources.describe(self.objects))


def _stage(named: _Named, staging: Path) -> tuple[int, float]:
    """Download what named names into staging/model; (bytes, seconds)."""
    t0 = time.monotonic()
    model = staging / "model"
    model.mkdir()
    uri, workers = named.uri, named.workers
    if uri.startswith("oci://"):
        c, ref, doc, _ = named.manifest
        total = sum(int(layer.get("size", 0)) for layer in doc["layers"])
        progress = Progress(uri, total)
        oci.fetch_layers(uri, doc["layers"], c, ref, model, workers, progress)
        progress.report(force=True)
        return progress.done, time.monotonic() - t0
    objects = named.objects
    done = _download_all(named.source, objects, model, workers)
    if len(objects) == 1 and objects[0].path.endswith(ARCHIVES):
        _unpack(model / objects[0].path, model, uri)
    return done, time.monotonic() - t0


def open_source(uri: str, sha256: str, workers: int) -> Source:
    if uri.startswith("s3://"):
        return sources.S3Source(uri, workers)
    if uri.startswith("https://"):
        return sources.HttpsSource(uri, sha256)
    raise FetchError(errors.INVALID, uri, "only s3://, oci:// and https:// models are fetched")


def content_key(uri: str, sha256: str, workers: int, opener: Opener | None = None) -> str:
    """The cache key of what uri names now, or "" when its content cannot be named."""
    return _Named(uri, sha256, workers, opener or open_source).key()


def _clear(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def fetch(
    uri: str,
    dest: Path,
    cache: NodeCache | None,
    sha256: str = "",
    workers: int = 10,
    opener: Opener | None = None,
) -> Report:
    """Make dest hold the model uri names (see the module doc)."""
    named = _Named(uri, sha256, workers, opener or open_source)
    t0 = time.monotonic()
    _clear(dest)
    key = named.key() if cache is not None else ""
    if cache is not None and key:
        with cache.lookup(key) as entry:
            if entry is not None:
                link_tree(entry, dest)
                log.info("%s: served from the node cache (%s)", uri, key)
                report = Report(uri, key, True, 0, 0.0, time.monotonic() - t0, _count(dest))
                return _finish(report, dest)
    staging = cache.staging() if cache is not None else dest / ".kinfer-partial"
    staging.mkdir(parents=True, exist_ok=True)
    try:
        done, took = _stage(named, staging)
        model = staging / "model"
        entry = cache.add(key, model) if cache is not None and key else None
        if entry is not None:
            link_tree(entry, dest)
        else:
            for child in model.iterdir():
                shutil.move(child, dest / child.name)
    except OSError as exc:
        if exc.errno == 28:
            raise no_space(uri, dest, exc) from exc
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report = Report(uri, key, False, done, took, time.monotonic() - t0, _count(dest))
    log.info("%s: %.1f MB in %.2f s (%.1f MB/s)", uri, done / 1e6, took, done / max(took, 1e-9) / 1e6)
    return _finish(report, dest)


def _count(dest: Path) -> int:
    return sum(1 for p in dest.rglob("*") if p.is_file() and p.name != REPORT)


def _finish(report: Report, dest: Path) -> Report:
    (dest / REPORT).write_text(json.dumps(asdict(report)))
    return report


def _termination(text: str) -> None:
    path = os.environ.get("KINFER_TERMINATION_LOG", TERMINATION_LOG)
    try:
        with open(path, "w") as f:
            f.write(text[:4000])  # the kubelet keeps at most 4096 bytes
    except OSError:
        pass


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kinfer-runtime fetch", description="download a model into DIR")
    ap.add_argument("uri")
    ap.add_argument("dir", type=Path)
    ap.add_argument("--sha256", default=os.environ.get("KINFER_MODEL_SHA256", ""))
    ap.add_argument("--cache-dir", type=Path, default=os.environ.get("KINFER_CACHE_DIR") or None,
                    help="the node cache (a hostPath); unset: no cache")  # fmt: skip
    ap.add_argument(
        "--cache-max-bytes", type=int, default=int(os.environ.get("KINFER_CACHE_MAX_BYTES", 50 << 30))
    )
    ap.add_argument("--workers", type=int, default=int(os.environ.get("KINFER_FETCH_WORKERS", 10)))
    args = ap.parse_args(argv)
    # A deleted pod's initializer gets SIGTERM: unwind (finally: the staging directory is
    # removed) rather than die where it stands and leave a partial download in the node cache.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    for chatty in ("botocore", "boto3", "urllib3"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    cache = NodeCache(args.cache_dir, args.cache_max_bytes) if args.cache_dir else None
    if cache is not None:
        with contextlib.suppress(OSError):
            cache.root.mkdir(parents=True, exist_ok=True)
        if not os.access(cache.root, os.W_OK):
            log.warning("node cache %s is not writable by UID %d: not used", cache.root, os.getuid())
            cache = None
    try:
        report = fetch(args.uri, args.dir, cache, args.sha256, args.workers)
    except FetchError as exc:
        sys.stderr.write(f"{exc}\n")  # the last line: what FallbackToLogsOnError shows
        _termination(str(exc))
        return 1
    except Exception as exc:  # a bug or an unforeseen failure: still say which model
        log.exception("%s: fetch failed", args.uri)
        _termination(f"Error: {args.uri}: {exc!r}")
        return 1
    _termination(json.dumps(asdict(report)))
    return 0
