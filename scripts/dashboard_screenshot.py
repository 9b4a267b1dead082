"""A screenshot of a run's TensorBoard Custom Scalars tab, taken by headless Chromium.

    python scripts/dashboard_screenshot.py --logdir logs/base --output dashboard.png

Starts TensorBoard on a free local port, waits until it serves the run's layout (mlm_lightning.callbacks
.DashboardLayout), opens the tab with smoothing off and outliers shown (the address docs/output.md gives), saves
a PNG and stops TensorBoard. Chromium: ``apt-get install -y chromium`` on Debian (or ``$CHROMIUM``). Used by
tests/test_dashboards.py (skipped where Chromium is absent) and to check docs/output.md's description by eye.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# The Custom Scalars tab without TensorBoard's defaults that hid the story: smoothing 0.6 (a four-point validation
# curve drawn far from its values) and "ignore outliers" (the base model's step-0 figure clipped).
TAB = "#custom_scalars&_smoothingWeight=0&_ignoreYOutliers=false"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable: ``$CHROMIUM``, else the first of the usual names on ``PATH``."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    return next((found for found in map(shutil.which, names) if found), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_layout(base: str, deadline: float) -> dict:
    """The layout TensorBoard serves once it has read the run's events (an empty dict until then)."""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/data/plugin/custom_scalars/layout", timeout=5) as response:
                layout = json.loads(response.read() or b"{}")
            if layout.get("category"):
                return layout
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError("TensorBoard served no Custom Scalars layout (is --logdir a run of `fit`?)")


def screenshot(logdir: str | os.PathLike[str], output: str | os.PathLike[str], width: int = 1400,
               height: int = 2000, timeout: float = 180.0) -> dict:  # fmt: skip
    """Saves the Custom Scalars tab of ``logdir`` as the PNG ``output``; returns the layout TensorBoard served."""
    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("no Chromium found: apt-get install -y chromium (or set $CHROMIUM)")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    tensorboard = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        layout = _wait_for_layout(base, deadline)
        output = Path(output).absolute()
        output.unlink(missing_ok=True)
        subprocess.run(
            [chromium, *CHROMIUM_FLAGS, "--hide-scrollbars", f"--window-size={width},{height}",
             "--virtual-time-budget=30000", f"--screenshot={output}", f"{base}/{TAB}"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            timeout=max(30.0, deadline - time.monotonic()),
        )  # fmt: skip
        if not output.is_file():
            raise RuntimeError(f"Chromium wrote no {output}")
        return layout
    finally:
        tensorboard.terminate()
        try:
            tensorboard.wait(timeout=10)
        except subprocess.TimeoutExpired:
            tensorboard.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logdir", required=True, help="A run folder (trainer.default_root_dir), e.g. logs/base.")
    parser.add_argument("--output", default="dashboard.png", help="The PNG to write.")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=2000)
    args = parser.parse_args()
    layout = screenshot(args.logdir, args.output, args.width, args.height)
    charts = sum(len(category.get("chart", [])) for category in layout["category"])
    print(f"{args.output}: the Custom Scalars tab of {args.logdir} ({charts} charts)")


if __name__ == "__main__":
    main()
