"""Where a training step's CPU time goes: the PyTorch profiler on a few steps of ``fit`` with ``configs/base.yaml``.

Runs the CLI in-process (the pretrained MiniLM-L6-H384 encoder, batch 16 x 128, fp32 unless
``--precision``), two plays of the embedded text, no validation, no checkpoint, no export, dataloader in the
trainer process (``data.num_workers=0``, so collation and masking are in the profile), uncompiled (``base.yaml``
compiles where a C++ compiler is: compiled kernels would hide the operators), and profiles steps ``--skip`` + 1 to
``--skip`` + ``--steps`` with ``torch.profiler`` (CPU). Prints the top operators by self CPU time.

Usage::

    python benchmarks/profile_step.py                       # fp32, 3 profiled steps after 2
    python benchmarks/profile_step.py --precision bf16-mixed --rows 15
"""

from __future__ import annotations

import argparse
import json
import tempfile
from typing import Any

import lightning as L
import torch
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="32-true", help="the trainer's precision")
    parser.add_argument("--skip", type=int, default=2, help="steps before profiling (warm-up)")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--rows", type=int, default=10, help="operators to list")
    args = parser.parse_args()

    from common import QUIET_TRAINER, plays

    from mlm_lightning.cli.lightning_cli import run_cli

    two = plays(2)
    prof = profile(activities=[ProfilerActivity.CPU])

    class Profiled(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
            if trainer.global_step == args.skip:
                prof.start()

        def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, idx: int) -> None:
            if trainer.global_step == args.skip + args.steps:
                prof.stop()

    with tempfile.TemporaryDirectory(prefix="mlm-profile-") as tmp:
        cli = run_cli(
            [
                "--config",
                "configs/base.yaml",
                "--trainer.max_steps",
                str(args.skip + args.steps),
                "--trainer.precision",
                args.precision,
                *QUIET_TRAINER,
                "--trainer.default_root_dir",
                tmp,
                "--export.enabled",
                "false",
                "--model.compile",
                "false",
                "--data.train_files",
                json.dumps(two),
                "--data.val_files",
                json.dumps(two[:1]),
                "--data.num_workers",
                "0",
                "--data.cache_dir",
                tmp + "/cache",
            ],
            run=False,
        )
        cli.trainer.callbacks.append(Profiled())
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.precision}, {args.steps} steps")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40))


if __name__ == "__main__":
    main()
