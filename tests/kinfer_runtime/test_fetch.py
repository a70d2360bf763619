"""The storage initializer without a network: an in-memory source (the Source protocol), the
node cache on a temporary directory. The real stores are in e2e/test_storage.py."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kinfer_runtime.storage import errors
from kinfer_runtime.storage import fetch as fetch_mod
from kinfer_runtime.storage.cache import NodeCache, tree_size
from kinfer_runtime.storage.errors import FetchError
from kinfer_runtime.storage.sources import Remote, Source
from kinfer_runtime.storage.transfer import Progress, download

URI = "s3://models/ranker/"


@dataclass
class FakeSource:
    """Objects held in memory; fails the first `flaky` reads transiently; counts range reads."""

    files: dict[str, bytes]
    uri: str = URI
    ranged: bool = True
    flaky: int = 0
    fail: FetchError | None = None
    versions: dict[str, str] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    reads: list[tuple[str, int, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def objects(self) -> list[Remote]:
        if self.fail is not None:
            raise self.fail
        return [
            Remote(p, len(b), self.versions.get(p, f'"{hashlib.md5(b).hexdigest()}"'), self.sha256.get(p, ""))
            for p, b in sorted(self.files.items())
        ]

    def read(self, obj: Remote, start: int, end: int) -> Iterator[bytes]:
        with self.lock:
            self.reads.append((obj.path, start, end))
            flaky, self.flaky = self.flaky > 0, max(0, self.flaky - 1)
        data = self.files[obj.path][start:end]
        yield data[: len(data) // 2]
        if flaky:
            raise FetchError(errors.UNREACHABLE, self.uri, "connection reset", transient=True)
        yield data[len(data) // 2 :]


def opener(source: FakeSource) -> fetch_mod.Opener:
    return lambda uri, sha256, workers: source


def model_files() -> dict[str, bytes]:
    return {"signature.json": b'{"file": "model.pt"}', "model.pt": bytes(range(256)) * 4096 + b"end"}


def test_parts_are_read_in_parallel_and_hashed_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kinfer_runtime.storage.transfer.PART", 100_000)
    data = model_files()["model.pt"]
    src = FakeSource({"model.pt": data}, sha256={"model.pt": hashlib.sha256(data).hexdigest()})
    (obj,) = src.objects()
    with ThreadPoolExecutor(4) as pool:
        got = download(src, obj, tmp_path / "m", pool, Progress(URI, len(data)))
    assert got == obj.sha256
    assert (tmp_path / "m").read_bytes() == data
    assert sorted(r[1] for r in src.reads) == list(range(0, len(data), 100_000))


def test_a_transient_failure_is_retried_and_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kinfer_runtime.storage.transfer.PART", 100_000)
    monkeypatch.setattr("kinfer_runtime.storage.transfer.time.sleep", lambda s: None)
    data = model_files()["model.pt"]
    src = FakeSource({"model.pt": data}, flaky=3)
    (obj,) = src.objects()
    progress = Progress(URI, len(data))
    with ThreadPoolExecutor(4) as pool:
        download(src, obj, tmp_path / "m", pool, progress)
    assert (tmp_path / "m").read_bytes() == data
    assert progress.done == len(data)


def test_a_digest_mismatch_fails_and_leaves_nothing(tmp_path: Path) -> None:
    files = model_files()
    src = FakeSource(files, sha256={"model.pt": "0" * 64})
    cache = NodeCache(tmp_path / "cache", 1 << 30)
    with pytest.raises(FetchError) as e:
        fetch_mod.fetch(URI, tmp_path / "dest", cache, opener=opener(src))
    assert e.value.cause == errors.CHECKSUM
    assert "expected " + "0" * 64 in str(e.value)
    assert list((tmp_path / "dest").iterdir()) == []
    assert not (tmp_path / "cache" / "entries").exists() or not list(
        (tmp_path / "cache" / "entries").iterdir()
    )
    assert list((tmp_path / "cache" / "staging").iterdir()) == []


def test_second_fetch_is_a_cache_hit_with_the_same_files(tmp_path: Path) -> None:
    src = FakeSource(model_files())
    cache = NodeCache(tmp_path / "cache", 1 << 30)
    first = fetch_mod.fetch(URI, tmp_path / "a", cache, opener=opener(src))
    reads = len(src.reads)
    second = fetch_mod.fetch(URI, tmp_path / "b", cache, opener=opener(src))
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert first.bytes == sum(len(b) for b in model_files().values()) and second.bytes == 0
    assert len(src.reads) == reads  # nothing read again
    for name, data in model_files().items():
        assert (tmp_path / "b" / name).read_bytes() == data
    report = json.loads((tmp_path / "b" / fetch_mod.REPORT).read_text())
    assert report["cache_hit"] is True and report["key"] == first.key


def test_changed_content_is_a_new_key(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "cache", 1 << 30)
    first = fetch_mod.fetch(URI, tmp_path / "a", cache, opener=opener(FakeSource(model_files())))
    changed = {**model_files(), "model.pt": b"v2"}
    second = fetch_mod.fetch(URI, tmp_path / "a", cache, opener=opener(FakeSource(changed)))
    assert second.key != first.key and not second.cache_hit
    assert (tmp_path / "a" / "model.pt").read_bytes() == b"v2"


def test_no_cache_and_no_etag_download_every_time(tmp_path: Path) -> None:
    src = FakeSource(model_files(), versions={"model.pt": ""})
    cache = NodeCache(tmp_path / "cache", 1 << 30)
    assert fetch_mod.content_key(URI, "", 1, opener(src)) == ""
    fetch_mod.fetch(URI, tmp_path / "a", cache, opener=opener(src))
    again = fetch_mod.fetch(URI, tmp_path / "a", None, opener=opener(src))
    assert not again.cache_hit and again.bytes > 0
    assert not (tmp_path / "cache" / "entries").exists() or not list(
        (tmp_path / "cache" / "entries").iterdir()
    )


def test_leftovers_of_a_failed_attempt_are_removed(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / ".kinfer-partial" / "model").mkdir(parents=True)
    (dest / "model.pt").write_bytes(b"half")
    fetch_mod.fetch(URI, dest, None, opener=opener(FakeSource(model_files())))
    assert sorted(p.name for p in dest.iterdir()) == sorted([*model_files(), fetch_mod.REPORT])
    assert (dest / "model.pt").read_bytes() == model_files()["model.pt"]


def test_lru_eviction_keeps_the_cache_bounded(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "cache", 2500)
    for name in ("a", "b", "c"):
        staged = cache.staging() / "model"
        staged.mkdir()
        (staged / "w").write_bytes(b"x" * 1000)
        assert cache.add(name, staged) is not None
        if name == "b":
            with cache.lookup("a") as hit:  # a used after b: b is now the oldest
                assert hit is not None
    entries = sorted(p.name for p in (tmp_path / "cache" / "entries").iterdir() if p.is_dir())
    assert entries == ["a", "c"]
    assert tree_size(tmp_path / "cache" / "entries") <= 2500


def test_a_model_larger_than_the_cache_is_served_not_cached(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "cache", 100)
    report = fetch_mod.fetch(URI, tmp_path / "a", cache, opener=opener(FakeSource(model_files())))
    assert (tmp_path / "a" / "model.pt").exists() and not report.cache_hit
    with cache.lookup(report.key) as hit:
        assert hit is None


def test_an_archive_is_unpacked_and_its_top_directory_dropped(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in model_files().items():
            info = tarfile.TarInfo(f"ranker/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = buf.getvalue()
    src = FakeSource({"ranker.tar.gz": archive}, uri="https://h/ranker.tar.gz",
                     sha256={"ranker.tar.gz": hashlib.sha256(archive).hexdigest()})  # fmt: skip
    fetch_mod.fetch(src.uri, tmp_path / "a", None, opener=opener(src))
    assert (tmp_path / "a" / "model.pt").read_bytes() == model_files()["model.pt"]


def test_failures_name_the_cause_in_the_termination_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "termination-log"
    monkeypatch.setenv("KINFER_TERMINATION_LOG", str(log))
    denied = errors.from_http_status(403, URI, "AccessDenied")
    monkeypatch.setattr(fetch_mod, "open_source", lambda uri, sha, workers: FakeSource({}, fail=denied))
    assert fetch_mod.main([URI, str(tmp_path / "d")]) == 1
    assert log.read_text().startswith(f"Forbidden: {URI}: HTTP 403 (check the credentials)")


def _source_protocol_holds(s: FakeSource) -> Source:
    return s  # mypy checks the fake against the protocol


def test_the_fetch_report_becomes_runtime_metrics() -> None:
    from kinfer_runtime.metrics import RuntimeMetrics

    m = RuntimeMetrics("ranker")
    m.model_fetched({"cache_hit": True, "bytes": 0, "download_seconds": 0.0})
    m.model_fetched({"cache_hit": False, "bytes": 1234, "download_seconds": 2.5})
    m.load_seconds.set(1.5)
    text = m.render().decode()
    assert 'kinfer_model_cache_hits_total{model="ranker"} 1.0' in text
    assert 'kinfer_model_download_bytes_total{model="ranker"} 1234.0' in text
    assert 'kinfer_model_download_seconds{model="ranker"} 2.5' in text
    assert 'kinfer_model_load_seconds{model="ranker"} 1.5' in text


def test_a_cold_fetch_through_the_cache_opens_and_lists_the_source_once(tmp_path: Path) -> None:
    src = FakeSource(model_files())
    listed, opened = [], []

    class Counting(FakeSource):
        def objects(self) -> list[Remote]:
            listed.append(1)
            return src.objects()

    def counting_opener(uri: str, sha256: str, workers: int) -> Source:
        opened.append(uri)
        return Counting(src.files)

    cache = NodeCache(tmp_path / "cache", 1 << 30)
    report = fetch_mod.fetch(URI, tmp_path / "a", cache, opener=counting_opener)
    assert not report.cache_hit and report.key  # the key and the download, from one listing
    assert (len(opened), len(listed)) == (1, 1)
