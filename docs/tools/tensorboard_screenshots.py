"""Screenshots of TensorBoard's HPARAMS and CUSTOM SCALARS tabs for docs/dashboards.md.

    python docs/tools/tensorboard_screenshots.py LOGDIR [--out docs/img] [--tab hparams]
                                                 [--budget-ms 20000]

Starts ``tensorboard --logdir LOGDIR --host 127.0.0.1`` on a free port, takes one picture per
tab with headless Chromium (Debian's ``chromium`` package), reduces each PNG to a 256-colour
palette (TensorBoard's flat colours survive it; the files shrink several times), and stops the
server it started. Not part of the package: a reproducible record of how the pictures were made.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

#: picture -> (TensorBoard tab, browser window in pixels, zoom). The HPARAMS table keeps about
#: twelve columns in view whatever the width (the rest scroll), so a wider window does not help.
TABS = {"tensorboard_hparams.png": ("hparams", "2400,440", 1.0),
        "tensorboard_custom_scalars.png": ("custom_scalars", "1600,1250", 1.0)}
CHROMIUM = ["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--hide-scrollbars"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(1)


def screenshot(url: str, out: Path, size: str, zoom: float, budget_ms: int, profile: str) -> None:
    subprocess.run([*CHROMIUM, f"--user-data-dir={profile}", f"--window-size={size}",
                    f"--force-device-scale-factor={zoom}", f"--screenshot={out}",
                    f"--virtual-time-budget={budget_ms}", url],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    image = Image.open(out).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


def keep_outliers(port: int, profile: str) -> None:
    """Untick "Ignore outliers in chart scaling" (TensorBoard keeps it in the page's
    localStorage): else a chart whose tags have one point each (the test metrics) is drawn on a
    0..1 axis and raw and calibrated look the same. localStorage belongs to the origin, so a
    page on the same host and port sets it before TensorBoard starts there."""
    with tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / "index.html"
        page.write_text("<script>localStorage.setItem('_ignoreYOutliers', 'false')</script>")
        server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                   "--directory", folder], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            wait_for(f"http://127.0.0.1:{port}/index.html")
            screenshot(f"http://127.0.0.1:{port}/index.html", Path(folder) / "blank.png", "400,300", 1.0,
                       5000, profile)  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir")
    parser.add_argument("--out", default="docs/img")
    parser.add_argument("--tab", action="append", choices=[tab for tab, _, _ in TABS.values()],
                        help="only this tab (repeatable; default: all)")
    parser.add_argument("--budget-ms", type=int, default=20000, help="Chromium's virtual time budget")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as profile:
        keep_outliers(port, profile)
        server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", args.logdir,
                                   "--host", "127.0.0.1", "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            wait_for(f"http://127.0.0.1:{port}/data/plugins_listing")
            for name, (tab, size, zoom) in TABS.items():
                if args.tab and tab not in args.tab:
                    continue
                out = Path(args.out) / name
                # smoothing off: the raw points, not a running average, are what is compared
                url = f"http://127.0.0.1:{port}/#{tab}&_smoothingWeight=0"
                screenshot(url, out, size, zoom, args.budget_ms, profile)
                print(f"{out}: {out.stat().st_size // 1024} KB")
        finally:
            server.terminate()
            server.wait(timeout=30)

if __name__ == "__main__":
    main()
