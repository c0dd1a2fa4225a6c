"""A real headless browser (Debian's chromium) for tests of `rl report`'s page.

.ci/run installs chromium, so in CI (CI set) a missing browser fails the test; on a developer's
machine without it the test is skipped, with the command that installs it.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed, and CI must run the browser tests: .ci/run installs it with apt-get")
    pytest.skip("chromium is not installed (apt-get install -y chromium); CI installs it and runs this test")


def run_chromium(args: list[str], profile: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    profile.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HOME": str(profile)}  # no user profile or crash reports outside the test's folder
    return subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def dump_dom(page: Path, profile: Path) -> str:
    """The DOM after chromium loaded and laid out `page`."""
    done = run_chromium(["--dump-dom", page.resolve().as_uri()], profile)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def screenshot(page: Path, png: Path, profile: Path, size: tuple[int, int] = (1200, 2000)) -> tuple[int, int]:
    """Screenshot `page` into `png`; returns the PNG's (width, height)."""
    done = run_chromium([f"--screenshot={png}", f"--window-size={size[0]},{size[1]}", page.resolve().as_uri()], profile)
    assert done.returncode == 0 and png.is_file(), done.stderr[-3000:]
    header = png.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", header[16:24])


def ink_share(png: Path) -> float:
    """The share of pixels that are not (near) white: a blank page is ~0."""
    from PIL import Image

    image = Image.open(png).convert("L")
    histogram = image.histogram()
    return sum(histogram[:240]) / (image.width * image.height)
