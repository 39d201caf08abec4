"""Installs what the local stack runs on, once: Debian's PostgreSQL, and the Kafka, Connect and
Debezium jars from Maven Central (versions pinned in deploy/pom.xml, cached in OFISYNC_HOME).
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from streams.settings import Settings
from streams.stack.procs import StackError, run

REPO = Path(__file__).resolve().parents[2]
POM = REPO / "deploy" / "pom.xml"
DEBEZIUM_DIR = "debezium-connector-postgres"


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL server's bin directory, if any."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    return Path(found[-1]).parent if found else None


def apt_install(package: str, title: str, find: Callable[[], Path | None]) -> Path:
    """What `find` finds, installing the Debian `package` first when it finds nothing."""
    found = find()
    if found:
        return found
    if os.geteuid() != 0:
        raise StackError(f"{title} is not installed; run as root or `apt-get install {package}`")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    what = f"apt-get install {package} (is the Debian mirror reachable?)"
    run(["apt-get", "update", "-q"], what, env=env)
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", package], what, env=env)
    found = find()
    if not found:
        raise StackError(f"apt-get installed {package} but {title} is still not found")
    return found


def ensure_postgres() -> Path:
    return apt_install("postgresql", "PostgreSQL", postgres_bin)


def jars_present(settings: Settings) -> bool:
    kafka = settings.lib / "kafka"
    plugin = settings.lib / "connect-plugins" / DEBEZIUM_DIR
    return (
        any(kafka.glob("kafka_2.13-*.jar"))
        and any(kafka.glob("connect-runtime-*.jar"))
        and any(plugin.glob("debezium-connector-postgres-*.jar"))
    )


def ensure_jars(settings: Settings) -> None:
    if jars_present(settings):
        return
    mvn = shutil.which("mvn")
    if not mvn:
        raise StackError("Maven (mvn) is not installed; install it (apt-get install maven)")
    for partial in (settings.lib / "kafka", settings.lib / "connect-plugins"):
        shutil.rmtree(partial, ignore_errors=True)
    run(
        [
            mvn,
            "-B",
            "-q",
            "-f",
            str(POM),
            f"-Dmaven.repo.local={settings.maven_repo}",
            f"-Dofisync.lib={settings.lib}",
            "package",
        ],
        "Maven fetch of Kafka 4.3.1 and Debezium 3.6.1.Final (is Maven Central reachable?)",
    )
    if not jars_present(settings):
        raise StackError(
            f"Maven finished but jars are missing under {settings.lib}; see deploy/pom.xml"
        )


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    candidate = Path(home) / "bin" / "java" if home else None
    if candidate and candidate.exists():
        return str(candidate)
    found = shutil.which("java")
    if not found:
        raise StackError("Java 17+ is not installed; install it (apt-get install openjdk-17-jre)")
    return found
