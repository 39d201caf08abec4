"""Settings: where everything lives and listens, read once from the environment.

Every default is the one in CONTRACT.md; every one can be moved with its variable.
Secrets are kept out of `repr` so they never reach a log line by accident.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from streams.core.conflicts import Policy


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the variable to fix."""


@dataclass(frozen=True)
class Endpoint:
    """A host:port something listens on, and the variable that moves it."""

    host: str
    port: int
    variable: str

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Database:
    """One of the two application databases."""

    side: str  # "erp" or "crm"
    title: str
    dsn: str = field(repr=False)
    variable: str

    @property
    def params(self) -> dict[str, str]:
        return {k: str(v) for k, v in conninfo_to_dict(self.dsn).items() if v is not None}

    @property
    def endpoint(self) -> Endpoint:
        p = self.params
        return Endpoint(p.get("host", "127.0.0.1"), int(p.get("port", "5432")), self.variable)

    @property
    def dbname(self) -> str:
        return self.params.get("dbname", "postgres")

    @property
    def user(self) -> str:
        return self.params.get("user", "postgres")

    @property
    def password(self) -> str | None:
        return self.params.get("password")

    def dsn_for(self, dbname: str) -> str:
        """The same server, another database (e.g. `postgres` to create ours)."""
        return make_conninfo(self.dsn, dbname=dbname)

    @property
    def safe_dsn(self) -> str:
        """The DSN with any password removed, fit for logs and status output."""
        p = self.params
        return f"postgresql://{p.get('user', 'postgres')}@{self.endpoint}/{self.dbname}"


def _positive(value: str, variable: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise SettingsError(f"{variable}={value!r} must be a whole number of at least 1")
    return int(value)


def _policy(value: str) -> Policy:
    try:
        return Policy(value)
    except ValueError:
        choices = ", ".join(p.value for p in Policy)
        raise SettingsError(f"OFISYNC_CONFLICT_POLICY={value!r}: use one of {choices}") from None


def _endpoint(value: str, variable: str) -> Endpoint:
    raw = value if "://" in value else f"tcp://{value}"
    parts = urlsplit(raw)
    if not parts.hostname or not parts.port:
        raise SettingsError(f"{variable}={value!r} is not host:port; set it like 127.0.0.1:9092")
    return Endpoint(parts.hostname, parts.port, variable)


@dataclass(frozen=True)
class Settings:
    home: Path
    erp: Database
    crm: Database
    kafka: Endpoint
    kafka_controller: Endpoint
    connect: Endpoint
    web: Endpoint
    tenant: str
    lib: Path
    # Partitions of every topic the stack creates: the most workers that can share the work.
    # It applies to topics created from now on (see README: Scaling out).
    partitions: int = 4
    # Copies of every topic the stack creates: 1 on one machine, 3 on a production cluster.
    replication_factor: int = 1
    # The PostgreSQL bin directory the local stack runs its clusters with (None: the pinned
    # build, installed under `lib`); e.g. Debian's /usr/lib/postgresql/15/bin.
    postgres_bin: Path | None = None
    # Which value wins when both sides changed a field (streams/core/conflicts.py).
    conflict_policy: Policy = Policy.LATER_WINS
    # This worker process among several (its own state directory).
    worker_name: str = "worker1"
    # Worker processes the local stack runs (`ofisync up`): they share the partitions, so a
    # machine's cores share the work (one process runs its Python on one core at a time).
    workers: int = 1

    def __post_init__(self) -> None:
        if self.workers > self.partitions:
            raise SettingsError(
                f"OFISYNC_WORKERS={self.workers} is more than OFISYNC_PARTITIONS={self.partitions}:"
                " a worker past the partitions gets no work. Run fewer workers, or raise"
                " OFISYNC_PARTITIONS before the topics are created"
            )

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = dict(os.environ if env is None else env)
        home = Path(e.get("OFISYNC_HOME", "./.ofisync")).resolve()
        tenant = e.get("OFISYNC_TENANT", "ofisync")
        if not tenant.replace("_", "").isalnum() or not tenant.islower():
            raise SettingsError(
                f"OFISYNC_TENANT={tenant!r}: use lower-case letters, digits and '_' only"
            )
        return cls(
            home=home,
            erp=Database(
                "erp",
                "OfiViaje",
                e.get("OFISYNC_ERP_DSN", "postgresql://postgres@127.0.0.1:55432/ofiviaje"),
                "OFISYNC_ERP_DSN",
            ),
            crm=Database(
                "crm",
                "OfiCrmTravel",
                e.get("OFISYNC_CRM_DSN", "postgresql://postgres@127.0.0.1:55433/oficrm"),
                "OFISYNC_CRM_DSN",
            ),
            kafka=_endpoint(e.get("OFISYNC_KAFKA", "127.0.0.1:9092"), "OFISYNC_KAFKA"),
            kafka_controller=_endpoint(
                e.get("OFISYNC_KAFKA_CONTROLLER", "127.0.0.1:9093"), "OFISYNC_KAFKA_CONTROLLER"
            ),
            connect=_endpoint(e.get("OFISYNC_CONNECT", "http://127.0.0.1:8083"), "OFISYNC_CONNECT"),
            web=_endpoint(e.get("OFISYNC_WEB", "http://127.0.0.1:6066"), "OFISYNC_WEB"),
            tenant=tenant,
            lib=Path(e.get("OFISYNC_LIB", str(home / "lib"))).resolve(),
            partitions=_positive(e.get("OFISYNC_PARTITIONS", "4"), "OFISYNC_PARTITIONS"),
            replication_factor=_positive(
                e.get("OFISYNC_REPLICATION_FACTOR", "1"), "OFISYNC_REPLICATION_FACTOR"
            ),
            postgres_bin=Path(e["OFISYNC_POSTGRES_BIN"]).resolve()
            if e.get("OFISYNC_POSTGRES_BIN")
            else None,
            conflict_policy=_policy(e.get("OFISYNC_CONFLICT_POLICY", Policy.LATER_WINS.value)),
            worker_name=e.get("OFISYNC_WORKER_NAME", "worker1"),
            workers=_positive(e.get("OFISYNC_WORKERS", "1"), "OFISYNC_WORKERS"),
        )

    # Names derived from the tenant, so several agencies can share one Kafka cluster.
    def connector_name(self, side: str) -> str:
        return f"{self.tenant}-{side}"

    def slot_name(self, side: str) -> str:
        return f"{self.tenant}_{side}"

    @property
    def connect_group(self) -> str:
        return f"{self.tenant}-connect"

    @property
    def worker_group(self) -> str:
        return f"{self.tenant}-worker"

    @property
    def connect_url(self) -> str:
        return f"http://{self.connect}"

    @property
    def web_url(self) -> str:
        return f"http://{self.web}"

    @property
    def databases(self) -> tuple[Database, Database]:
        return (self.erp, self.crm)

    # Layout of OFISYNC_HOME.
    @property
    def maven_repo(self) -> Path:
        return self.lib.parent / "m2"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def run(self) -> Path:
        return self.home / "run"

    def pg_data(self, side: str) -> Path:
        return self.home / "pg" / side
