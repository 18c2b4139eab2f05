"""Screenshots of TensorBoard's HPARAMS and CUSTOM SCALARS tabs for docs/dashboards.md.

    python docs/tools/tensorboard_screenshots.py LOGDIR [--out docs/img] [--budget-ms 20000]

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


def screenshot(url: str, out: Path, size: str, zoom: float, budget_ms: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([*CHROMIUM, f"--user-data-dir={profile}", f"--window-size={size}",
                        f"--force-device-scale-factor={zoom}",
                        f"--screenshot={out}", f"--virtual-time-budget={budget_ms}", url],
                       check=True, capture_output=True, timeout=300)  # fmt: skip
    image = Image.open(out).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir")
    parser.add_argument("--out", default="docs/img")
    parser.add_argument("--budget-ms", type=int, default=20000, help="Chromium's virtual time budget")
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", args.logdir,
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(f"http://127.0.0.1:{port}/data/plugins_listing")
        for name, (tab, size, zoom) in TABS.items():
            out = Path(args.out) / name
            screenshot(f"http://127.0.0.1:{port}/#{tab}", out, size, zoom, args.budget_ms)
            print(f"{out}: {out.stat().st_size // 1024} KB")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
