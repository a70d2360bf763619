"""Model download: kinfer's storage initializer against boto3's own download_file, side by side.

    eval "$(kinfer dev env)"          # the test bed's MinIO (or any S3 endpoint in AWS_*)
    python bench/storage_download.py --mb 500 --rounds 3

1. First download of one MB-sized object (no cache): `fetch()` (parallel ranged GETs, SHA-256
   hashed as parts land, written into a model directory) vs boto3 `download_file` (its default
   TransferConfig: 8 MiB parts, 10 threads, no hashing), interleaved, same process, same object.
   Goal: kinfer >= 80 % of boto3's throughput.
2. Ready time from the node cache vs from a local file: `kinfer-runtime` started on a model
   directory that is a local file:// path, vs the same after `fetch()` served it from the cache
   (the init container's work plus the server's start). Goal: <= 1.2x.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import boto3

from kinfer_runtime.storage.cache import NodeCache
from kinfer_runtime.storage.fetch import fetch

BUCKET = "kinfer-bench"


def ensure_object(s3: object, key: str, size: int, checksum: bool = False) -> None:
    try:
        if s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == size:  # type: ignore[attr-defined]
            return
    except Exception:
        pass
    with contextlib.suppress(Exception):  # it exists
        s3.create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
    with tempfile.NamedTemporaryFile() as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
        f.flush()
        if checksum:  # one PUT with x-amz-checksum-sha256, as `kinfer model push` uploads
            from boto3.s3.transfer import TransferConfig

            s3.upload_file(f.name, BUCKET, key, ExtraArgs={"ChecksumAlgorithm": "SHA256"},  # type: ignore[attr-defined]
                           Config=TransferConfig(multipart_threshold=4 << 30))  # fmt: skip
        else:
            s3.upload_file(f.name, BUCKET, key)  # type: ignore[attr-defined]


def download_throughput(mb: int, rounds: int, scratch: Path) -> None:
    s3 = boto3.client("s3")
    size = mb << 20
    plain, checked = f"blob-{mb}mb.bin", f"blob-{mb}mb-sha256.bin"
    ensure_object(s3, plain, size)
    ensure_object(s3, checked, size, checksum=True)
    theirs, ours, ours_checked = [], [], []

    def timed(run: object) -> float:
        t0 = time.perf_counter()
        run()  # type: ignore[operator]
        return size / (time.perf_counter() - t0) / 1e6

    for _ in range(rounds):
        theirs.append(timed(lambda: s3.download_file(BUCKET, plain, str(scratch / "boto3.bin"))))
        (scratch / "boto3.bin").unlink()
        ours.append(timed(lambda: fetch(f"s3://{BUCKET}/{plain}", scratch / "kinfer", None)))
        ours_checked.append(timed(lambda: fetch(f"s3://{BUCKET}/{checked}", scratch / "kinfer", None)))
        shutil.rmtree(scratch / "kinfer")
    b = statistics.median(theirs)
    for name, runs in (("no digest stored", ours), ("sha256 stored, checked", ours_checked)):
        a = statistics.median(runs)
        print(f"download {mb} MB from S3, median of {rounds}: kinfer fetch ({name}) {a:.0f} MB/s, "
              f"boto3 download_file {b:.0f} MB/s: ratio {a / b:.2f} (goal >= 0.80)")  # fmt: skip


def _ready_seconds(model_dir: Path, port: int) -> float:
    argv = [sys.executable, "-m", "kinfer_runtime", f"--model-uri=file://{model_dir}", f"--http-port={port}",
            "--grpc-port=-1", "--host=127.0.0.1", "--event-loop=asyncio"]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(0.02)
            if proc.poll() is not None:
                raise RuntimeError("kinfer-runtime exited")
    finally:
        proc.terminate()
        proc.wait(30)


def cache_hit_ready(mb: int, rounds: int, scratch: Path) -> None:
    from kinfer_dev.local import make_model

    model = make_model(scratch / "model-src")
    pad = model / "weights.bin"  # the model's size on disk, as a real model's would be
    with pad.open("wb") as f:
        for _ in range(mb >> 20):
            f.write(os.urandom(1 << 20))
    s3 = boto3.client("s3")
    for path in model.iterdir():
        s3.upload_file(str(path), BUCKET, f"ready/{path.name}")
    cache = NodeCache(scratch / "cache", 1 << 40)
    fetch(f"s3://{BUCKET}/ready/", scratch / "warm", cache)  # fills the cache
    local, cached = [], []
    for i in range(rounds):
        local.append(_ready_seconds(model, 18700 + 2 * i))
        t0 = time.perf_counter()
        report = fetch(f"s3://{BUCKET}/ready/", scratch / "pod", cache)
        assert report.cache_hit
        took = time.perf_counter() - t0
        cached.append(took + _ready_seconds(scratch / "pod", 18701 + 2 * i))
    a, b = statistics.median(cached), statistics.median(local)
    print(f"ready with a {mb} MB model, median of {rounds}: from the node cache {a:.2f} s "
          f"(fetch + server start), from a local file {b:.2f} s: ratio {a / b:.2f} "
          "(goal <= 1.20)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("KINFER_BENCH_DIR")) as d:
        download_throughput(args.mb, args.rounds, Path(d))
        cache_hit_ready(args.mb, args.rounds, Path(d))


if __name__ == "__main__":
    main()
