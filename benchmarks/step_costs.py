"""CPU, kernel time, page faults and peak memory of a few ``base.yaml`` training steps, under an allocator setting.

Runs ``fit`` in-process like ``profile_step.py`` (two plays, no validation, checkpoint or export, dataloader in
the trainer) after setting glibc's ``malloc`` parameters from ``--malloc`` (``dynamic`` = glibc's defaults, or
``mmap=BYTES,trim=BYTES,top_pad=BYTES``), and prints one line for steps ``--skip`` + 1 to ``--steps``: median
step time, user and kernel CPU seconds, minor page faults per step, the peak RSS over those steps (``VmHWM``,
reset when they start) and the glibc heap (``mallinfo2``: size, in use, in separate mappings) at the end. Every
further argument goes to the command line (e.g. ``--model.attention_dropout 0``; ``--model.compile false`` for
the uncompiled step that ``base.yaml`` runs where no C++ compiler is). One setting per process: alternate them, the
machine's load moves the times.

Usage::

    python benchmarks/step_costs.py --malloc mmap=1048576  # memory.limit_heap: true (base.yaml)
    python benchmarks/step_costs.py --malloc dynamic
    python benchmarks/step_costs.py --malloc mmap=1048576 --model.attention_dropout 0
"""

from __future__ import annotations

import argparse
import ctypes
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PARAMS = {"mmap": -3, "trim": -1, "top_pad": -2}  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, M_TOP_PAD (malloc.h)
FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS.split()]


def status_mb(key: str) -> float:
    """A ``/proc/self/status`` memory figure (``VmRSS``, ``VmHWM``) in MB."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
    return int(line.split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--malloc", default="mmap=1048576", help="dynamic, or mmap=..,trim=..,top_pad=.. (bytes)")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps")
    parser.add_argument("--skip", type=int, default=3, help="steps before measuring")
    parser.add_argument("--trim", action="store_true", help="malloc_trim(0) after every optimizer step")
    args, extra = parser.parse_known_args()
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    if args.malloc != "dynamic":  # before torch allocates anything
        for item in args.malloc.split(","):
            key, value = item.split("=")
            assert libc.mallopt(PARAMS[key], int(value)), item

    import lightning as L
    from common import QUIET_TRAINER, plays

    from mlm_lightning.callbacks.memory import HeapGrowthLimit
    from mlm_lightning.cli.lightning_cli import run_cli

    two = plays(2)
    times: list[float] = []
    state: dict[str, Any] = {}

    class Measure(L.Callback):
        def on_train_start(self, trainer: L.Trainer, module: Any) -> None:
            state["fit_start"] = time.perf_counter()

        def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
            if trainer.global_step == args.skip:
                state["warm_up"] = time.perf_counter() - state["fit_start"]  # steps 1..skip: compilation, if any
                state["usage"] = resource.getrusage(resource.RUSAGE_SELF)
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak RSS
            state["start"] = time.perf_counter()

        def on_train_batch_end(self, trainer: L.Trainer, module: Any, out: Any, batch: Any, idx: int) -> None:
            if args.trim:
                libc.malloc_trim(0)
            if trainer.global_step > args.skip:
                times.append(time.perf_counter() - state["start"])
            if trainer.global_step == args.steps:
                usage, start, info = resource.getrusage(resource.RUSAGE_SELF), state["usage"], libc.mallinfo2()
                n = args.steps - args.skip
                print(
                    f"malloc {args.malloc}{' trim' if args.trim else ''} {' '.join(extra)}: "
                    f"first {args.skip} steps {state['warm_up']:.1f} s, "
                    f"step {statistics.median(times):.2f} s (median), "
                    f"user {usage.ru_utime - start.ru_utime:.1f} s, sys {usage.ru_stime - start.ru_stime:.1f} s, "
                    f"{(usage.ru_minflt - start.ru_minflt) / n:,.0f} faults/step over {n} steps; "
                    f"peak RSS {status_mb('VmHWM'):,.0f} MB; heap {info.arena / 2**20:,.0f} MB, "
                    f"in use {info.uordblks / 2**20:,.0f}, mapped {info.hblkhd / 2**20:,.0f}; "
                    f"load {Path('/proc/loadavg').read_text().split()[0]}",
                    flush=True,
                )

    with tempfile.TemporaryDirectory(prefix="mlm-steps-") as tmp:
        # fmt: off
        cli = run_cli([
            "--config", "configs/base.yaml", "--trainer.max_steps", str(args.steps),
            *QUIET_TRAINER, "--trainer.default_root_dir", tmp, "--export.enabled", "false",
            "--data.train_files", json.dumps(two), "--data.val_files", json.dumps(two[:1]),
            "--data.num_workers", "0", "--memory.limit_heap", "false", *extra,
        ], run=False)  # fmt: on
        # The setting under test stands alone: no threshold or trimming from the run's own HeapGrowthLimit (with
        # base.yaml's limit_heap the command line would also fix the threshold when parsed, and --malloc dynamic
        # would measure the 1 MiB threshold: it did, unnoticed, until the parse-time setting was accounted for).
        cli.trainer.callbacks[:] = [c for c in cli.trainer.callbacks if not isinstance(c, HeapGrowthLimit)]
        cli.trainer.callbacks.append(Measure())
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)


if __name__ == "__main__":
    sys.exit(main())
