"""Peak memory of a command's whole process tree: ``python benchmarks/memory.py -- CMD ...``.

Samples every process of the tree (the command and all its descendants, e.g. dataloader workers) a few times
a second and reports the peaks of

* the tree's summed PSS (proportional set size: a page shared by forked processes counts once in total, split
  between them), the figure that says how much memory the run really takes;
* the tree's summed RSS (shared pages counted in every process: an upper bound);
* each process's own peak RSS and PSS, by its role (main / worker N).

Sampling can miss a spike shorter than the interval; ``/usr/bin/time -v`` gives the main process's exact
``Maximum resident set size`` for comparison.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import psutil


def _sample(proc: psutil.Process) -> dict[int, tuple[str, int, int]]:
    """pid -> (name, rss, pss) of ``proc`` and its descendants (processes that vanish meanwhile are skipped)."""
    out: dict[int, tuple[str, int, int]] = {}
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return out
    for p in procs:
        try:
            info = p.memory_full_info()
            out[p.pid] = (" ".join(p.cmdline()[:3])[:60], info.rss, info.pss)
        except psutil.Error:
            pass
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between samples")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command (after --)")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    start = time.monotonic()
    child = subprocess.Popen(command)
    root = psutil.Process(child.pid)
    peak_pss = peak_rss = 0
    peak_pss_at = 0.0
    per_pid: dict[int, list] = {}  # pid -> [name, peak rss, peak pss, first seen]
    while child.poll() is None:
        sample = _sample(root)
        if sample:
            pss = sum(v[2] for v in sample.values())
            rss = sum(v[1] for v in sample.values())
            if pss > peak_pss:
                peak_pss, peak_pss_at = pss, time.monotonic() - start
            peak_rss = max(peak_rss, rss)
            for pid, (name, r, p) in sample.items():
                entry = per_pid.setdefault(pid, [name, 0, 0, time.monotonic() - start])
                entry[1], entry[2] = max(entry[1], r), max(entry[2], p)
        time.sleep(args.interval)
    mb = 1 / 2**20
    print(f"\n[memory] exit {child.returncode}, {time.monotonic() - start:.0f} s", file=sys.stderr)
    print(f"[memory] tree peak PSS {peak_pss * mb:,.0f} MiB (at {peak_pss_at:.0f} s)", file=sys.stderr)
    print(f"[memory] tree peak RSS {peak_rss * mb:,.0f} MiB (shared pages counted per process)", file=sys.stderr)
    for pid, (name, r, p, seen) in per_pid.items():
        role = "main" if pid == child.pid else "child"
        print(
            f"[memory]   {role} {pid} (from {seen:.0f} s) peak RSS {r * mb:,.0f} MiB, PSS {p * mb:,.0f} MiB: {name}",
            file=sys.stderr,
        )
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
