"""A real headless Chromium for checking the HTML reports: the rendered DOM and a screenshot."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.required import skip_or_fail


def chromium() -> str:
    """The Chromium binary (Debian's `chromium`, installed by scripts/setup.sh)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    skip_or_fail("no Chromium here (apt-get install chromium; scripts/setup.sh installs it)")


def _run(page: Path, *flags: str, profile: Path) -> subprocess.CompletedProcess[str]:
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",  # tests run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
        # Any request leaving the machine would fail: the page must need none.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        *flags,
        page.resolve().as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def rendered_dom(page: Path, profile: Path) -> str:
    """The page's DOM after Chromium loaded and laid it out."""
    return _run(page, "--dump-dom", profile=profile).stdout


def screenshot(page: Path, out: Path, profile: Path, size: str = "1280,1800") -> Path:
    """A PNG of the rendered page."""
    _run(page, f"--screenshot={out}", f"--window-size={size}", "--hide-scrollbars", profile=profile)
    return out
