"""A headless Chromium driven by Selenium, for the review app's tests and its benchmark.

Debian's `chromium` and `chromium-driver` packages (`make test` installs them where it can,
as root); nothing is downloaded: Selenium is given both paths, so its driver manager never
runs. The flags keep the browser off the network and out of the user's profile.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage")
CANDIDATES = {"chromium": ("/usr/bin/chromium", "chromium", "chromium-browser"),
              "chromedriver": ("/usr/bin/chromedriver", "chromedriver")}


def _find(name: str) -> str | None:
    for candidate in CANDIDATES[name]:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def missing() -> str | None:
    """Why a browser cannot be started here, or None when it can."""
    absent = [name for name in CANDIDATES if _find(name) is None]
    if absent:
        return (f"no {' or '.join(absent)} here: `make test` installs Debian's chromium and "
                "chromium-driver when run as root (or: apt-get install chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -r requirements.txt)"
    return None


def start(width: int = 1400, height: int = 1000) -> tuple[Any, Path]:
    """(a Selenium Chrome driver on a fresh profile, that profile's folder to remove)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _find("chromium")
    profile = Path(tempfile.mkdtemp(prefix="bc-review-chromium-"))
    for flag in (*CHROMIUM_FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(_find("chromedriver")), options=options)
    return driver, profile


def stop(driver: Any, profile: Path) -> None:
    try:
        driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
