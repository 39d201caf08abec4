"""Installs what the local stack runs on, once, from the registries this machine reaches: the
Kafka, Connect and Debezium jars and PostgreSQL's server binaries (zonky's build of the upstream
sources) from Maven Central, at the versions pinned in deploy/pom.xml, cached under OFISYNC_LIB;
Debian's PostgreSQL where a server older than 16 is asked for (`OFISYNC_POSTGRES_BIN`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from functools import cache
from pathlib import Path

from streams.settings import Settings
from streams.stack.procs import StackError, run

REPO = Path(__file__).resolve().parents[2]
POM = REPO / "deploy" / "pom.xml"
DEBEZIUM_DIR = "debezium-connector-postgres"
POSTGRES_ARCHIVE = "postgres-linux-x86_64.txz"  # inside zonky's jar
PG_USER = "postgres"


@cache
def pinned(name: str) -> str:
    """A version pinned in deploy/pom.xml's properties (`kafka`, `debezium`, `postgres`)."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    found = ET.parse(POM).getroot().find(f"m:properties/m:{name}.version", ns)
    if found is None or not found.text:
        raise StackError(f"deploy/pom.xml pins no {name}.version")
    return found.text


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


def debian_postgres(major: int = 15) -> Path:
    """The bin directory of Debian's PostgreSQL `major` (installed when missing)."""

    def find() -> Path | None:
        path = Path(f"/usr/lib/postgresql/{major}/bin")
        return path if (path / "postgres").exists() else None

    return apt_install(f"postgresql-{major}", f"PostgreSQL {major}", find)


def ensure_os_user() -> None:
    """PostgreSQL refuses to run as root: its clusters run as the `postgres` OS user."""
    try:
        pwd.getpwnam(PG_USER)
        return
    except KeyError:
        pass
    if os.geteuid() != 0:
        raise StackError(f"there is no `{PG_USER}` OS user to run PostgreSQL; create it as root")
    run(
        ["useradd", "--system", "--user-group", "--home-dir", "/var/lib/postgresql",
         "--shell", "/bin/bash", PG_USER],
        f"creating the `{PG_USER}` OS user",
    )  # fmt: skip


def postgres_bin(settings: Settings) -> Path:
    """The bin directory of the PostgreSQL the local stack runs: OFISYNC_POSTGRES_BIN when set,
    else the pinned build, unpacked under OFISYNC_LIB (fetched first when missing)."""
    if settings.postgres_bin is not None:
        if not (settings.postgres_bin / "postgres").exists():
            raise StackError(
                f"OFISYNC_POSTGRES_BIN={settings.postgres_bin} holds no `postgres`; point it at"
                " a PostgreSQL bin directory (e.g. /usr/lib/postgresql/15/bin)"
            )
        return settings.postgres_bin
    home = settings.lib / f"postgresql-{pinned('postgres')}"
    if not (home / "bin" / "postgres").exists():
        archive = settings.lib / "postgres-archive" / POSTGRES_ARCHIVE
        if not archive.exists():
            _maven(settings)
        partial = home.with_name(home.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        with tarfile.open(archive, "r:xz") as tar:
            tar.extractall(partial, filter="data")
        partial.rename(home)
    return home / "bin"


def ensure_postgres(settings: Settings) -> Path:
    ensure_os_user()
    return postgres_bin(settings)


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
    _maven(settings)
    if not jars_present(settings):
        raise StackError(
            f"Maven finished but jars are missing under {settings.lib}; see deploy/pom.xml"
        )


# Maven's HTTP clients wait 30 minutes on a stalled download by default (wagon in Maven 3.8,
# the resolver's transport in 3.9): a stall fails after a minute instead, and the fetch runs
# again, keeping what it had already downloaded in the local repository.
MAVEN_HTTP_OPTIONS = (
    "-Dmaven.wagon.rto=60000",
    "-Dmaven.wagon.http.retryHandler.count=5",
    "-Dmaven.wagon.http.retryHandler.requestSentEnabled=true",
    "-Daether.connector.requestTimeout=60000",
    "-Daether.connector.http.retryHandler.count=5",
)
MAVEN_ATTEMPTS = 3
MAVEN_ATTEMPT_S = 300.0  # a whole fetch from an empty repository takes 35 s here
MAVEN_RETRY_PAUSE_S = 10.0


def _maven(settings: Settings) -> None:
    mvn = shutil.which("mvn")
    if not mvn:
        raise StackError("Maven (mvn) is not installed; install it (apt-get install maven)")
    what = (
        f"Maven fetch of Kafka {pinned('kafka')}, Debezium {pinned('debezium')} and PostgreSQL"
        f" {pinned('postgres')} (is Maven Central reachable?)"
    )
    argv = [
        mvn,
        "-B",
        "-q",
        *MAVEN_HTTP_OPTIONS,
        "-f",
        str(POM),
        f"-Dmaven.repo.local={settings.maven_repo}",
        f"-Dofisync.lib={settings.lib}",
        "package",
    ]
    for attempt in range(1, MAVEN_ATTEMPTS + 1):
        # Maven's markers of what it unpacked (in the pom's build directory) go too, or it
        # would skip what is missing.
        for partial in (
            settings.lib / "kafka",
            settings.lib / "connect-plugins",
            settings.lib / "postgres-archive",
            settings.lib.parent / "build",
        ):
            shutil.rmtree(partial, ignore_errors=True)
        try:
            run(argv, what, timeout=MAVEN_ATTEMPT_S)
            return
        except StackError as exc:
            if attempt == MAVEN_ATTEMPTS:
                raise StackError(f"{exc}\n(tried {MAVEN_ATTEMPTS} times)") from exc
            print(
                f"… {what}: attempt {attempt} of {MAVEN_ATTEMPTS} failed, trying again"
                f" in {MAVEN_RETRY_PAUSE_S:.0f} s:\n{exc}",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(MAVEN_RETRY_PAUSE_S)


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    candidate = Path(home) / "bin" / "java" if home else None
    if candidate and candidate.exists():
        return str(candidate)
    found = shutil.which("java")
    if not found:
        raise StackError("Java 17+ is not installed; install it (apt-get install openjdk-17-jre)")
    return found
