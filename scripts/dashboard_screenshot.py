"""A screenshot of a run's TensorBoard Custom Scalars tab, taken by headless Chromium.

    python scripts/dashboard_screenshot.py --logdir logs/base --output dashboard.png

Starts TensorBoard on a free local port, waits until it serves the run's layout (mlm_lightning.callbacks
.DashboardLayout), opens the tab with smoothing off (the address docs/output.md gives) and "Ignore outliers in
chart scaling" unticked (a browser setting, kept in the page's local storage: a small proxy in front of
TensorBoard sets it before the page loads, as a user unticking the box once would), saves a PNG and stops
TensorBoard. Chromium: ``apt-get install -y chromium`` on Debian (or ``$CHROMIUM``). Used by
tests/test_dashboards.py (skipped where Chromium is absent) and to check docs/output.md's description by eye.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

# The Custom Scalars tab without TensorBoard's defaults that hid the story: smoothing 0.6 (a four-point validation
# curve drawn far from its values) and "ignore outliers" (the base model's step-0 figure clipped). The first is an
# address parameter; the second lives in the browser's local storage (TensorBoard 2.21: key `_ignoreYOutliers`).
TAB = "#custom_scalars&_smoothingWeight=0"
SHOW_OUTLIERS = b"<script>localStorage.setItem('_ignoreYOutliers', 'false');</script>"
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


class _Proxy(http.server.BaseHTTPRequestHandler):
    """Passes GET requests on to TensorBoard; puts :data:`SHOW_OUTLIERS` at the top of its page."""

    upstream = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        try:
            with urllib.request.urlopen(self.upstream + self.path, timeout=60) as response:
                body, status, kind = response.read(), response.status, response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as err:
            body, status, kind = err.read(), err.code, err.headers.get("Content-Type", "")
        if self.path in ("/", "/index.html") and b"<head>" in body:
            body = body.replace(b"<head>", b"<head>" + SHOW_OUTLIERS, 1)
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


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
        proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Proxy", (_Proxy,), {"upstream": base}))
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        page = f"http://127.0.0.1:{proxy.server_address[1]}/{TAB}"
        try:
            subprocess.run(
                [chromium, *CHROMIUM_FLAGS, "--hide-scrollbars", f"--window-size={width},{height}",
                 "--virtual-time-budget=30000", f"--screenshot={output}", page],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                timeout=max(30.0, deadline - time.monotonic()),
            )  # fmt: skip
        finally:
            proxy.shutdown()
            proxy.server_close()
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
