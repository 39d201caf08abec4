"""Test/ops helper: renders a page in Debian's headless Chromium and returns its DOM after the
page's scripts ran (fetch()es answered, timers fired, charts drawn), so integration tests can
check what a person would see on the dashboard. Installs the `chromium` package once if missing.

It uses `--dump-dom` with `--virtual-time-budget`: Chromium runs the page on a virtual clock that
skips ahead over idle time (5 s of timers take about a second) and stands still while a request
is pending, then prints the DOM and exits, also for pages that poll with setInterval. A request
that never answers would stall it forever, hence the wall-clock `timeout_s`. The HTTP status is
not seen: an error page comes back as its DOM.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from streams.stack.install import apt_install
from streams.stack.procs import StackError

# The browser itself; /usr/bin/chromium is a shell wrapper that adds desktop flags and stderr noise.
DEBIAN_BINARY = Path("/usr/lib/chromium/chromium")

FLAGS = (
    "--headless",  # the new headless mode: the default for --headless since Chromium 112
    "--no-sandbox",  # required when running as root
    "--disable-gpu",
    "--disable-dev-shm-usage",  # a small /dev/shm (containers, CI) crashes renderers otherwise
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--mute-audio",
    "--hide-scrollbars",
)


def chromium_bin() -> Path | None:
    """The installed Chromium binary, if any."""
    if DEBIAN_BINARY.exists():
        return DEBIAN_BINARY
    found = shutil.which("chromium")
    return Path(found) if found else None


def ensure_chromium() -> Path:
    return apt_install("chromium", "Chromium", chromium_bin)


def _why(stderr: str) -> str:
    """The tail of Chromium's stderr without its harmless D-Bus complaints."""
    lines = [line for line in stderr.strip().splitlines() if "dbus" not in line]
    return "\n".join(lines[-10:]) or "(no message)"


def _kill_group(pid: int) -> None:
    """Kills the process group that `render` started Chromium (and its helpers) in."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def render(url: str, wait_ms: int = 5000, timeout_s: float = 60) -> str:
    """The DOM of `url` after `wait_ms` of the page's (virtual) time, as HTML text."""
    if wait_ms < 1:
        raise ValueError("wait_ms must be at least 1 (a virtual time budget of 0 never ends)")
    binary = ensure_chromium()
    with tempfile.TemporaryDirectory(prefix="ofisync-chromium-") as profile:
        argv = [
            str(binary),
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={wait_ms}",
            "--dump-dom",
            url,
        ]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            _, err = proc.communicate()
            raise StackError(
                f"Chromium did not finish rendering {url} within {timeout_s:.0f} s "
                f"(a request of the page that never answers?):\n{_why(err)}"
            ) from None
        finally:
            _kill_group(proc.pid)  # helper processes that outlived the browser, if any
    if proc.returncode != 0:
        raise StackError(f"Chromium failed on {url} (exit {proc.returncode}):\n{_why(err)}")
    if not out.strip():
        raise StackError(f"Chromium rendered nothing for {url} (is it being served?):\n{_why(err)}")
    return out
