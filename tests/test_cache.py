"""The tokenization cache and downloads under damage and faults: damaged entries, cut downloads, unwritable or
full cache folders. Each gives a rebuilt entry (with a warning) or one readable line, never wrong data."""

from __future__ import annotations

import errno
import http.server
import json
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mlm_lightning.__main__ import main
from mlm_lightning.data import MLMDataModule, cache_entry
from mlm_lightning.errors import MLMError
from mlm_lightning.io.sources import download
from tests.conftest import make_corpus


def make_dm(corpus: Path, tokenizer_dir: Path, cache: Path) -> MLMDataModule:
    return MLMDataModule(
        train_files=[str(corpus)], tokenizer=str(tokenizer_dir), max_seq_length=32, cache_dir=str(cache)
    )


def rows_of(dm: MLMDataModule) -> dict[str, list[list[int]]]:
    return {s: [dm.datasets[s][i]["input_ids"].tolist() for i in range(len(dm.datasets[s]))] for s in ("train", "val")}


def entry_of(cache: Path) -> Path:
    (entry,) = (cache / "corpora").iterdir()
    return entry


def new_process() -> None:
    """Forgets which entries this process has verified, as a later run (a new process) would not know."""
    cache_entry.VERIFIED.clear()


def zero_half(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] + bytes(len(raw) - len(raw) // 2))  # same size: [PAD]s at the end


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def edit_document_count(path: Path) -> None:
    meta = json.loads(path.read_text())
    meta["splits"]["train"]["documents"] += 1  # still valid JSON, and still plausible
    path.write_text(json.dumps(meta, indent=1))


def random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


DAMAGE = {
    "zero half of tokens.npy": ("train/tokens.npy", zero_half),
    "truncated tokens.npy": ("train/tokens.npy", truncate),
    "random bytes in tokens.npy": ("val/tokens.npy", random_bytes),
    "zeroed doc_offsets.npy": ("train/doc_offsets.npy", zero_half),
    "corrupt meta.json": ("meta.json", lambda p: p.write_text('{"splits": {"train": ')),
    "edited meta.json (valid JSON)": ("meta.json", edit_document_count),
    "missing tokens.npy": ("val/tokens.npy", lambda p: p.unlink()),
}


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "c.txt"
    path.write_text("\n".join(make_corpus(80, seed=3)), encoding="utf-8")
    return path


@pytest.mark.parametrize("case", DAMAGE, ids=list(DAMAGE))
def test_damaged_entry_is_rebuilt_with_one_warning(
    case: str, small_corpus: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    fresh = make_dm(small_corpus, tokenizer_dir, tmp_path / "fresh")
    fresh.prepare_data()
    fresh.setup("fit")
    cache = tmp_path / "cache"
    first = make_dm(small_corpus, tokenizer_dir, cache)
    first.prepare_data()
    entry = entry_of(cache)
    rel, damage = DAMAGE[case]
    damage(entry / rel)
    new_process()
    dm = make_dm(small_corpus, tokenizer_dir, cache)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.prepare_data()
    damaged = [str(w.message) for w in caught if "damaged" in str(w.message)]
    assert len(damaged) == 1 and str(entry) in damaged[0] and "rebuilding" in damaged[0], damaged
    assert "\n" not in damaged[0]
    dm.setup("fit")
    assert rows_of(dm) == rows_of(fresh)  # the training data equals a fresh build's
    assert dm.corpus_meta("train") == fresh.corpus_meta("train")
    assert [p.name for p in (cache / "corpora").iterdir()] == [entry.name]  # nothing set aside is left behind


@pytest.mark.parametrize(
    "case", ["zero half of tokens.npy", "truncated tokens.npy", "corrupt meta.json", "edited meta.json (valid JSON)"]
)
def test_damage_found_in_setup_is_one_line(case: str, small_corpus: Path, tokenizer_dir: Path, tmp_path: Path) -> None:
    """A process that does not prepare data (DDP's other ranks) must not rebuild what the others read: it stops."""
    cache = tmp_path / "cache"
    make_dm(small_corpus, tokenizer_dir, cache).prepare_data()
    entry = entry_of(cache)
    rel, damage = DAMAGE[case]
    damage(entry / rel)
    new_process()
    dm = make_dm(small_corpus, tokenizer_dir, cache)
    with pytest.raises(MLMError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert "\n" not in message and f"{entry} is damaged" in message and "delete that folder" in message


def test_digests_are_verified_once_per_process(small_corpus: Path, tokenizer_dir: Path, tmp_path: Path, monkeypatch):
    cache = tmp_path / "cache"
    make_dm(small_corpus, tokenizer_dir, cache).prepare_data()  # digested while building
    hashed = []
    real = cache_entry._blake2b
    monkeypatch.setattr(cache_entry, "_blake2b", lambda p: hashed.append(p) or real(p))
    for _ in range(3):  # new data modules, setups and dataloaders in the same process: no re-reading
        dm = make_dm(small_corpus, tokenizer_dir, cache)
        dm.prepare_data()
        dm.setup("fit")
        dm.train_dataloader()
    assert hashed == []
    new_process()
    dm = make_dm(small_corpus, tokenizer_dir, cache)
    dm.prepare_data()
    dm.setup("fit")
    assert len(hashed) == 4  # a new process checks each file once: {train,val} x {tokens,doc_offsets}


# ------------------------------------------------------------------------------------------------ downloads
BODY = ("\n".join(make_corpus(40, seed=4)) + "\n").encode()


class LyingHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``/good.txt`` whole; ``/short.txt`` announces 1,000,000 bytes and closes after 2,500;
    ``/chunked.txt`` breaks off inside a chunk; anything else is a 404."""

    hits: list[str] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        if self.path == "/good.txt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
        elif self.path == "/short.txt":
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(BODY[:2500])
        elif self.path == "/chunked.txt":
            self.protocol_version = "HTTP/1.1"
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n" % 5000 + BODY[:2500])
        else:
            self.send_error(404, "File not found")
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    LyingHandler.hits = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), LyingHandler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def files_in(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/short.txt", "the connection closed after 2,500 of the 1,000,000 bytes the server announced"),
        ("/chunked.txt", "IncompleteRead"),
        ("/missing.txt", "HTTP Error 404"),
    ],
)
def test_failed_download_is_one_line_and_leaves_nothing(server: str, tmp_path: Path, path: str, message: str) -> None:
    cache = tmp_path / "cache"
    for _ in range(2):  # and the next run does not find a "complete" file either
        with pytest.raises(MLMError) as info:
            download(server + path, cache)
        text = str(info.value)
        assert text.startswith(f"could not download {server + path}: ") and message in text and "\n" not in text
        assert files_in(cache) == []  # no file, no temporary, no empty folder
    assert LyingHandler.hits == [path, path]


def test_complete_download_is_cached_and_reused(server: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = download(server + "/good.txt", cache)
    assert first.read_bytes() == BODY and first.name == "good.txt"
    assert download(server + "/good.txt", cache) == first
    assert LyingHandler.hits == ["/good.txt"]
    assert [p.name for p in files_in(cache) if p.is_file()] == ["good.txt"]  # no temporary left beside it


# ------------------------------------------------------------------------------- unwritable or full cache
def test_cache_path_that_is_a_file_is_one_line(small_corpus: Path, tokenizer_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    dm = make_dm(small_corpus, tokenizer_dir, blocker / "cache")
    with pytest.raises(MLMError) as info:
        dm.prepare_data()
    text = str(info.value)
    assert (
        f"cannot write to {blocker / 'cache' / 'corpora'}" in text
        and "--data.cache_dir or $MLM_LIGHTNING_CACHE" in text
    )
    with pytest.raises(MLMError, match="cannot write to .*a_file.*MLM_LIGHTNING_CACHE"):
        download("http://127.0.0.1:9/never-fetched.txt", blocker)


def test_unwritable_cache_through_the_command_line(tiny_args: list[str], tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    root = Path(tiny_args[tiny_args.index("--trainer.default_root_dir") + 1])
    assert main(["fit", *tiny_args, "--data.cache_dir", str(blocker)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"cannot write to {blocker}" in errors[0] and "Traceback" not in err, err
    assert "--data.cache_dir" in errors[0]
    assert [p for p in root.rglob("*") if p.is_file()] == []  # no TensorBoard files, no checkpoints


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Simulates a read-only mount at a folder (tests run as root, for whom chmod does not stop writes)."""
    folder = Path(os.environ["MLM_LIGHTNING_CACHE"]).resolve()
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | getattr(os, "O_TMPFILE", 0)
    real_open, real_mkdir = os.open, os.mkdir

    def inside(path: object) -> bool:
        return Path(os.fsdecode(path)).resolve().is_relative_to(folder)

    def fake_open(path, flags, *args, **kwargs):
        if flags & writing and inside(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if inside(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    yield folder


def test_read_only_cache_is_one_line(small_corpus: Path, tokenizer_dir: Path, read_only: Path) -> None:
    dm = MLMDataModule(train_files=[str(small_corpus)], tokenizer=str(tokenizer_dir), max_seq_length=32)
    with pytest.raises(MLMError) as info:
        dm.prepare_data()
    text = str(info.value)
    assert "cannot write to" in text and str(read_only) in text and "Read-only file system" in text
    assert "--data.cache_dir or $MLM_LIGHTNING_CACHE" in text and "\n" not in text
    with pytest.raises(MLMError, match="Read-only file system.*MLM_LIGHTNING_CACHE"):
        download("http://127.0.0.1:9/never-fetched.txt")


def test_full_disk_while_caching_is_one_line_and_caches_nothing(
    small_corpus: Path, tokenizer_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    def no_space(file, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))

    monkeypatch.setattr(np, "save", no_space)  # the write of doc_offsets.npy, after tokens.npy
    cache = tmp_path / "cache"
    with pytest.raises(MLMError) as info:
        make_dm(small_corpus, tokenizer_dir, cache).prepare_data()
    text = str(info.value)
    assert text.startswith("the disk is full") and str(cache / "corpora") in text and "nothing was cached" in text
    assert "\n" not in text
    assert list((cache / "corpora").iterdir()) == []  # the temporary work folder is gone too
