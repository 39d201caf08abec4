"""The Maven fetch of the stack's jars and server, against a stand-in `mvn` on PATH (Maven
Central is not what is tested here): a fetch that stalls is cut off and run again, what a
failed attempt left half unpacked is cleared first, and a fetch that keeps failing says what
failed and how often it was tried."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from streams.settings import Settings
from streams.stack import install
from streams.stack.procs import StackError

# The stand-in counts its runs in a file; the runs listed in STALL hang, the rest finish.
STAND_IN = """#!/bin/sh
count_file="{home}/runs"
runs=$(( $(cat "$count_file" 2>/dev/null || echo 0) + 1 ))
echo "$runs" > "$count_file"
ls "{lib}" > "{home}/seen-$runs" 2>/dev/null
case " {stall} " in *" $runs "*) exec sleep 30 ;; esac
case " {fail} " in *" $runs "*) echo "Could not transfer artifact" >&2; exit 1 ;; esac
mkdir -p "{lib}/kafka"
"""


def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stall: str, fail: str) -> Settings:
    settings = Settings.from_env(
        {"OFISYNC_HOME": str(tmp_path), "OFISYNC_LIB": str(tmp_path / "lib")}
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mvn = bin_dir / "mvn"
    mvn.write_text(STAND_IN.format(home=tmp_path, lib=settings.lib, stall=stall, fail=fail))
    mvn.chmod(mvn.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(install, "MAVEN_ATTEMPT_S", 1.0)
    monkeypatch.setattr(install, "MAVEN_RETRY_PAUSE_S", 0.0)
    return settings


def runs(tmp_path: Path) -> int:
    return int((tmp_path / "runs").read_text())


def test_a_stalled_fetch_is_cut_off_and_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = stand_in(tmp_path, monkeypatch, stall="1", fail="")
    (settings.lib / "kafka").mkdir(parents=True)
    (settings.lib / "kafka" / "half.jar").write_text("")

    install._maven(settings)

    assert runs(tmp_path) == 2
    assert (settings.lib / "kafka").is_dir()
    # Each attempt starts without what an earlier one left unpacked.
    assert "kafka" not in (tmp_path / "seen-2").read_text().split()


def test_a_fetch_that_keeps_failing_says_what_failed_and_how_often_it_was_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = stand_in(tmp_path, monkeypatch, stall="2", fail="1 3")

    with pytest.raises(StackError) as failed:
        install._maven(settings)

    assert runs(tmp_path) == install.MAVEN_ATTEMPTS == 3
    message = str(failed.value)
    assert "is Maven Central reachable?" in message
    assert "Could not transfer artifact" in message
    assert f"tried {install.MAVEN_ATTEMPTS} times" in message


def test_maven_gives_up_on_a_stalled_download_within_a_minute() -> None:
    assert "-Dmaven.wagon.rto=60000" in install.MAVEN_HTTP_OPTIONS
    assert "-Daether.connector.requestTimeout=60000" in install.MAVEN_HTTP_OPTIONS
