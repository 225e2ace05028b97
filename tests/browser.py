"""Headless Chromium for the page tests: Debian's `chromium` driven through its `chromedriver`.

`ensure_chromium()` installs the two Debian packages when they are missing (once per machine;
CI is a fresh machine running as root). Selenium is given both paths explicitly, so its
driver manager never tries to download a browser. The flags keep Chromium off the network:
without them it phones home at start and logs the refused connections as console errors.

`Page` wraps one loaded page with what the tests assert: console errors and failed loads (from
the browser log), every resource the page requested, images that failed to decode, and a
full-page screenshot.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--disable-dev-shm-usage", "--window-size=1400,1000")
#: Where the page tests leave their screenshots and pages (ignored by git).
OUTPUT = Path(os.environ.get("CURATOR_TEST_OUTPUT", Path(__file__).resolve().parents[1] / "test-output"))


def ensure_chromium() -> None:
    """Install Debian's chromium and chromium-driver if either is missing (serialised by a lock file)."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    if shutil.which("apt-get") is None:
        raise RuntimeError("headless Chromium is needed for the page tests: install Chromium and its "
                           f"chromedriver at {CHROMIUM} and {CHROMEDRIVER}")
    lock = Path(tempfile.gettempdir()) / "curator-chromium-install.lock"
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        if CHROMIUM.exists() and CHROMEDRIVER.exists():
            return
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]):
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if r.returncode != 0:
                raise RuntimeError(f"`{' '.join(cmd)}` failed (rc {r.returncode}); the page tests need Debian's "
                                   f"chromium and chromium-driver:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")


@dataclass
class Page:
    driver: Any
    url: str

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def log(self) -> list[dict[str, Any]]:
        """Browser log entries since the last call (console messages, failed loads, CSP violations)."""
        return list(self.driver.get_log("browser"))

    def errors(self) -> list[str]:
        """Console errors and failed resource loads (Chromium reports both as SEVERE)."""
        return [f"{e.get('source')}: {e.get('message')}" for e in self.log() if e.get("level") == "SEVERE"]

    def resources(self) -> list[str]:
        """URLs of every resource the page fetched (data: URIs are not fetched and not listed)."""
        return list(self.js("return performance.getEntriesByType('resource').map(e => e.name)"))

    def broken_images(self) -> list[str]:
        return list(self.js("return [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))"
                            ".map(i => i.alt || i.src.slice(0, 60))"))

    def text(self, selector: str = "body") -> str:
        return str(self.js("const e = document.querySelector(arguments[0]); return e ? e.innerText : ''",
                           selector))

    def count(self, selector: str) -> int:
        return int(self.js("return document.querySelectorAll(arguments[0]).length", selector))

    def screenshot(self, path: Path) -> Path:
        """The whole page (beyond the viewport) as PNG."""
        path.parent.mkdir(parents=True, exist_ok=True)
        w, h = self.js("return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": int(w), "height": min(int(h), 16000), "scale": 1}})
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def element_png(self, selector: str) -> bytes:
        from selenium.webdriver.common.by import By

        el = self.driver.find_element(By.CSS_SELECTOR, selector)
        self.js("arguments[0].scrollIntoView()", el)
        return el.screenshot_as_png


class Browser:
    """One headless Chromium with a fresh profile."""

    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        ensure_chromium()
        self.profile = tempfile.mkdtemp(prefix="curator-chromium-")
        opts = webdriver.ChromeOptions()
        opts.binary_location = str(CHROMIUM)
        for f in FLAGS:
            opts.add_argument(f)
        opts.add_argument(f"--user-data-dir={self.profile}")
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
        self.driver.set_page_load_timeout(60)

    def open(self, url: str) -> Page:
        self.driver.get(url)
        return Page(self.driver, url)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)


@contextlib.contextmanager
def browser() -> Iterator[Browser]:
    b = Browser()
    try:
        yield b
    finally:
        b.close()


def png_ink(png: bytes) -> float:
    """Share of pixels that differ from the most common colour (the background): > 0 means drawn."""
    import io

    from PIL import Image

    im = Image.open(io.BytesIO(png)).convert("L")
    hist = im.histogram()
    return 1.0 - max(hist) / max(1, sum(hist))
