"""The production container set (deploy/production), checked without a container engine: the
compose file parses and holds three KRaft brokers with replication factor 3; the images pin the
versions deploy/pom.xml pins; the worker gets every variable the settings read; the connectors
registered are connectors/*.json with every placeholder filled; Connect, the worker and Connect's
worker config agree with the local stack's; Prometheus and Grafana use deploy/monitoring's
files; and no password is written anywhere under deploy/production.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import pytest
import yaml

from streams.secrets import Role, role_name
from streams.settings import Settings
from streams.stack.connect import Worker, render_connector

REPO: Final = Path(__file__).resolve().parents[2]
PRODUCTION: Final = REPO / "deploy" / "production"
MONITORING: Final = REPO / "deploy" / "monitoring"
CONNECTORS: Final = REPO / "connectors"
BROKERS: Final = ("kafka-1", "kafka-2", "kafka-3")

# --- reading the files -----------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((PRODUCTION / "compose.yaml").read_text())
    return loaded


def service(name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"][name]
    return found


def environment(name: str) -> dict[str, str]:
    return {k: str(v) for k, v in (service(name).get("environment") or {}).items()}


def dotenv(path: Path) -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?error}`."""

    def one(m: re.Match[str]) -> str:
        name, op = m["name"], m["op"] or ""
        if env.get(name) or (name in env and ":" not in op):
            return env[name]
        if op.endswith("-"):
            return m["arg"]
        raise AssertionError(f"{name} is required: {m['arg']}")

    return _VARIABLE.sub(one, value)


def example_env() -> dict[str, str]:
    """.env.example with a cluster id: what an operator's .env looks like."""
    return dotenv(PRODUCTION / ".env.example") | {"KAFKA_CLUSTER_ID": "MkU3OEVBNTcwNTJENDM2Qk"}


def resolved_environment(name: str) -> dict[str, str]:
    env = example_env()
    return {k: interpolate(v, env) for k, v in environment(name).items()}


def pom_versions() -> dict[str, str]:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    properties = ET.parse(REPO / "deploy" / "pom.xml").getroot().find("m:properties", ns)
    assert properties is not None
    return {p.tag.split("}", 1)[1]: (p.text or "").strip() for p in properties}


def dockerfile_args(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", path.read_text(), flags=re.M))


def properties(text: str) -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


def script(name: str) -> ModuleType:
    path = PRODUCTION / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"deploy_production_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    written, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ in deploy/
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = written
    return module


def mounts(name: str) -> dict[str, str]:
    """A service's bind mounts: container path → the host file, resolved."""
    found = {}
    for volume in service(name).get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            found[target] = str((PRODUCTION / source).resolve())
    return found


# --- Kafka -----------------------------------------------------------------------------------


def test_three_kraft_brokers_with_distinct_ids_form_one_static_quorum() -> None:
    envs = {name: resolved_environment(name) for name in BROKERS}
    ids = {name: int(env["KAFKA_NODE_ID"]) for name, env in envs.items()}
    assert sorted(ids.values()) == [1, 2, 3]
    for name, env in envs.items():
        assert service(name)["hostname"] == name
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert "CONTROLLER://:9093" in env["KAFKA_LISTENERS"].split(",")
        voters = dict(v.split("@") for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
        assert voters == {str(ids[b]): f"{b}:9093" for b in BROKERS}, "every node, every broker"
        assert "kafka" in service(name)["networks"]["default"]["aliases"]
    assert len({env["CLUSTER_ID"] for env in envs.values()}) == 1
    volumes = [service(name)["volumes"][0].split(":")[0] for name in BROKERS]
    assert len(set(volumes)) == 3 and set(volumes) <= set(compose()["volumes"])


def test_every_topic_keeps_three_copies_and_takes_writes_from_two() -> None:
    for name in BROKERS:
        env = resolved_environment(name)
        for key in (
            "KAFKA_DEFAULT_REPLICATION_FACTOR",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
        ):
            assert env[key] == "3", (name, key)
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
        assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false"
    register = script("register_connectors")
    assert production_settings().replication_factor == 3
    thin = {"name": "t", "partitions": [{"replica_nodes": [1, 2, 3]}, {"replica_nodes": [2]}]}
    assert register._replicas(thin) == 1, "a topic is as safe as its thinnest partition"


# --- versions --------------------------------------------------------------------------------


def test_the_images_pin_the_versions_of_deploy_pom_xml() -> None:
    pom = pom_versions()
    for name in BROKERS:
        assert service(name)["image"] == f"apache/kafka:{pom['kafka.version']}"
    dockerfile = PRODUCTION / "connect" / "Dockerfile"
    args = dockerfile_args(dockerfile)
    assert args["KAFKA_VERSION"] == pom["kafka.version"]
    assert args["DEBEZIUM_VERSION"] == pom["debezium.version"]
    assert re.fullmatch(r"[0-9a-f]{64}", args["DEBEZIUM_SHA256"])
    text = dockerfile.read_text()
    assert "FROM apache/kafka:${KAFKA_VERSION}" in text
    assert (
        "https://repo1.maven.org/maven2/io/debezium/debezium-connector-postgres/"
        "${DEBEZIUM_VERSION}/debezium-connector-postgres-${DEBEZIUM_VERSION}-plugin.tar.gz"
    ) in text
    assert "sha256sum -c" in text
    assert service("connect")["build"]["context"] == "./connect"


def test_the_plugin_checksum_is_the_archive_maven_fetched_for_the_local_stack() -> None:
    import hashlib

    version = pom_versions()["debezium.version"]
    archive = (
        Settings.from_env().maven_repo
        / "io/debezium/debezium-connector-postgres"
        / version
        / f"debezium-connector-postgres-{version}-plugin.tar.gz"
    )
    if not archive.is_file():
        pytest.skip(f"{archive} is not cached (`ofisync up` fetches it)")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert dockerfile_args(PRODUCTION / "connect" / "Dockerfile")["DEBEZIUM_SHA256"] == digest


# --- Kafka Connect ---------------------------------------------------------------------------

# What differs from the local stack's worker config by design: where things are, and copies.
DEPLOYMENT_KEYS: Final = {
    "bootstrap.servers",
    "listeners",
    "rest.advertised.host.name",
    "rest.advertised.port",
    "plugin.path",
    "config.storage.replication.factor",
    "offset.storage.replication.factor",
    "status.storage.replication.factor",
}
PRODUCTION_ONLY: Final = {"config.providers.env.param.allowlist.pattern"}


def connect_properties(tenant: str = "acme") -> dict[str, str]:
    text = (PRODUCTION / "connect" / "connect-distributed.properties").read_text()
    return properties(text.replace("@TENANT@", tenant).replace("@ADVERTISED_HOST@", "10.0.0.9"))


def test_connect_runs_the_local_stack_worker_config_with_three_replicas() -> None:
    settings = Settings.from_env({"OFISYNC_TENANT": "acme"})
    local = properties(Worker(settings).properties())
    prod = connect_properties("acme")
    assert prod.keys() == local.keys() | PRODUCTION_ONLY
    assert {k: v for k, v in prod.items() if k not in DEPLOYMENT_KEYS | PRODUCTION_ONLY} == {
        k: v for k, v in local.items() if k not in DEPLOYMENT_KEYS
    }
    for kind in ("config", "offset", "status"):
        assert prod[f"{kind}.storage.replication.factor"] == "3"
    assert prod["bootstrap.servers"].split(",") == [f"{b}:9092" for b in BROKERS]
    assert prod["group.id"] == settings.connect_group
    assert prod["plugin.path"] == "/opt/connect-plugins"
    assert (
        "COPY --from=debezium /plugins /opt/connect-plugins"
        in (PRODUCTION / "connect" / "Dockerfile").read_text()
    )


def test_connect_gets_each_password_the_connectors_reference_from_a_docker_secret() -> None:
    referenced = {
        name
        for path in CONNECTORS.glob("*.json")
        for name in re.findall(r"\$\{env:(\w+)\}", path.read_text())
    }
    assert referenced == {"OFISYNC_ERP_PASSWORD", "OFISYNC_CRM_PASSWORD"}
    entrypoint = (PRODUCTION / "connect" / "entrypoint.sh").read_text()
    allowlist = connect_properties()["config.providers.env.param.allowlist.pattern"]
    env = environment("connect")
    for name in referenced:
        assert re.search(rf'^{name}="\$\(cat "\$\{{{name}_FILE', entrypoint, flags=re.M), name
        assert re.search(rf"^export .*\b{name}\b", entrypoint, flags=re.M), name
        secret = env[f"{name}_FILE"].removeprefix("/run/secrets/")
        assert secret in service("connect")["secrets"]
        assert secret in compose()["secrets"]
        assert re.fullmatch(allowlist.strip("^$"), name)
    assert not re.fullmatch(allowlist.strip("^$"), "PATH")


# --- the connectors registered ---------------------------------------------------------------


def production_settings() -> Settings:
    return Settings.from_env(resolved_environment("worker"))


def test_the_production_script_registers_the_connector_templates_themselves() -> None:
    register = script("register_connectors")
    assert Path(register.CONNECTORS) == CONNECTORS
    assert sorted(register.SIDES) == sorted(p.stem for p in CONNECTORS.glob("*.json"))
    assert not list(PRODUCTION.rglob("*.json")), "no copy of a connector config"
    entrypoint = service("register")["entrypoint"]
    assert entrypoint[-1] == "/opt/ofisync/deploy/production/register_connectors.py"
    dockerfile = (PRODUCTION / "worker" / "Dockerfile").read_text()
    assert "COPY connectors/ connectors/" in dockerfile
    assert "deploy/production/register_connectors.py" in dockerfile
    assert resolved_environment("register") == resolved_environment("worker")


def test_the_templates_render_with_the_production_values() -> None:
    register = script("register_connectors")
    settings = production_settings()
    assert settings.replication_factor == 3
    for side, db in zip(register.SIDES, settings.databases, strict=True):
        spec = render_connector(settings, side, 180007)
        config = spec["config"]
        assert config["slot.stream.params"] == "origin=none"  # 16+: the server drops echoes
        older = render_connector(settings, side, 150018)["config"]
        assert "slot.stream.params" not in older  # 15 rejects the option: echoes come, marked
        assert {k: v for k, v in config.items() if k != "slot.stream.params"} == older
        assert "slot.stream.params" in render_connector(settings, side, 160000)["config"]
        assert "{{" not in json.dumps(spec)
        assert spec["name"] == settings.connector_name(side)
        assert config["topic.creation.default.replication.factor"] == "3"
        assert config["topic.creation.default.partitions"] == str(settings.partitions)
        assert config["database.hostname"] == db.endpoint.host
        assert config["database.port"] == str(db.endpoint.port)
        assert config["database.dbname"] == db.dbname
        assert config["database.user"] == role_name(settings, Role.CAPTURE)
        assert config["database.password"] == f"${{env:OFISYNC_{side.upper()}_PASSWORD}}"
        assert config["slot.name"] == settings.slot_name(side)


# --- the worker ------------------------------------------------------------------------------


def variables_read_by(path: Path) -> set[str]:
    return set(re.findall(r'"(OFISYNC_[A-Z_]+)"', path.read_text()))


def test_the_worker_gets_every_variable_the_settings_read() -> None:
    env = environment("worker")
    needed = variables_read_by(REPO / "streams" / "settings.py") | {"OFISYNC_CONFLICT_POLICY"}
    needed |= {f"OFISYNC_{side.upper()}_SINK_PASSWORD_FILE" for side in ("erp", "crm")}
    assert needed <= env.keys(), sorted(needed - env.keys())
    for side in ("erp", "crm"):
        secret = env[f"OFISYNC_{side.upper()}_SINK_PASSWORD_FILE"].removeprefix("/run/secrets/")
        assert secret in service("worker")["secrets"]
        assert compose()["secrets"][secret]["file"] == f"./secrets/{secret}"
    settings = production_settings()
    assert (settings.kafka.host, settings.kafka.port) == ("kafka", 9092)
    assert settings.connect_url == "http://connect:8083"
    assert settings.web.host == "0.0.0.0"
    assert settings.tenant == example_env()["OFISYNC_TENANT"]
    assert settings.erp.dbname == "ofiviaje" and settings.crm.dbname == "oficrm"
    assert settings.erp.password is None and settings.crm.password is None


def test_the_worker_image_is_this_repository_running_ofisync_worker() -> None:
    dockerfile = PRODUCTION / "worker" / "Dockerfile"
    text = dockerfile.read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, flags=re.M)
    assert re.search(r"^RUN pip install (--editable )?\.", text, flags=re.M)
    assert 'ENTRYPOINT ["ofisync"]' in text and 'CMD ["worker"]' in text
    assert service("worker")["build"] == {
        "context": "../..",
        "dockerfile": "deploy/production/worker/Dockerfile",
    }
    # Every file the image copies gets past the allow-list ignore file beside the Dockerfile.
    allowed = {
        line[1:].rstrip("/")
        for line in Path(f"{dockerfile}.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for sources in re.findall(r"^COPY (?!--)(.+) \S+$", text, flags=re.M):
        for source in sources.split():
            assert source.rstrip("/") in allowed, source
            assert (REPO / source).exists(), source
    assert service("worker")["stop_grace_period"] == "40s"  # the worker drains up to 20 s


def test_the_ops_commands_get_the_role_passwords_database_preparation_needs() -> None:
    prepare = script("prepare_databases")
    env = resolved_environment("ops")
    assert prepare.missing_role_secrets(["erp", "crm"], env) == []
    assert prepare.missing_role_secrets(["erp"], {}) == [
        "OFISYNC_ERP_SINK_PASSWORD_FILE",
        "OFISYNC_ERP_CAPTURE_PASSWORD_FILE",
    ]
    for key, value in env.items():
        if value.startswith("/run/secrets/"):
            assert value.removeprefix("/run/secrets/") in service("ops")["secrets"], key
    settings = Settings.from_env(env)
    admin = prepare.as_admin(settings, "crm", "postgres", "typed-at-the-prompt")
    assert admin.crm.user == "postgres" and admin.crm.endpoint == settings.crm.endpoint
    assert admin.erp == settings.erp
    assert service("ops")["profiles"] == ["ops"], "never started by `up`"


# --- monitoring ------------------------------------------------------------------------------


def test_prometheus_uses_the_monitoring_config_and_finds_every_worker() -> None:
    local = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    prod = yaml.safe_load((PRODUCTION / "prometheus.yml").read_text())
    targets = {"static_configs", "dns_sd_configs"}
    assert {k: v for k, v in prod.items() if k != "scrape_configs"} == {
        k: v for k, v in local.items() if k not in {"scrape_configs", "alerting"}
    }
    assert [{k: v for k, v in j.items() if k not in targets} for j in prod["scrape_configs"]] == [
        {k: v for k, v in j.items() if k not in targets} for j in local["scrape_configs"]
    ]
    [job] = prod["scrape_configs"]
    [dns] = job["dns_sd_configs"]
    assert dns["names"] == ["worker"] and dns["type"] == "A"
    assert dns["port"] == production_settings().web.port
    files = mounts("prometheus")
    config = next(a for a in service("prometheus")["command"] if a.startswith("--config.file="))
    config_path = config.split("=", 1)[1]
    assert files[config_path] == str(PRODUCTION / "prometheus.yml")
    for rule_file in prod["rule_files"]:
        assert files[str(Path(config_path).parent / rule_file)] == str(MONITORING / rule_file)


def test_grafana_shows_the_monitoring_dashboard_from_the_provisioned_prometheus() -> None:
    files = mounts("grafana")
    provisioning = PRODUCTION / "grafana" / "provisioning"
    assert files["/etc/grafana/provisioning"] == str(provisioning)
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090"
    assert "127.0.0.1:9090:9090" in service("prometheus")["ports"]
    [provider] = yaml.safe_load((provisioning / "dashboards" / "ofisync.yaml").read_text())[
        "providers"
    ]
    folder = provider["options"]["path"]
    dashboards = {t: s for t, s in files.items() if str(Path(t).parent) == folder}
    assert list(dashboards.values()) == [str(MONITORING / "grafana-dashboard.json")]
    assert environment("grafana")["GF_SECURITY_ADMIN_PASSWORD__FILE"] == (
        "/run/secrets/grafana_admin_password"
    )


# --- secrets ---------------------------------------------------------------------------------

_ASSIGNED = re.compile(
    r"(?i)(?:password|passwd|pwd|secret|clave)[\"']?\s*[:=]\s*[\"']?(?P<value>[^\s\"',;)]*)"
)
# In Python a name is no secret (`password: str | None`); a string literal may be one.
_ASSIGNED_LITERAL = re.compile(
    r"(?i)(?:password|passwd|pwd|secret|clave)\w*[\"']?\s*[:=]\s*(?P<q>[\"'])(?P<value>[^\"']*)(?P=q)"
)
_URL_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@")
_SQL_PASSWORD = re.compile(r"(?i)\bpassword\s+'[^']+'")
_REFERENCE = re.compile(r"^(?:\$|/run/secrets/|<|…|$)")


def deployment_files() -> list[Path]:
    """Every file under deploy/production but the operator's own secrets/."""
    return [
        p
        for p in sorted(PRODUCTION.rglob("*"))
        if p.is_file()
        and "secrets" not in p.relative_to(PRODUCTION).parts[:1]
        and "__pycache__" not in p.parts
    ]


def test_no_password_is_written_in_any_file_of_the_deployment() -> None:
    files = deployment_files()
    assert PRODUCTION / "compose.yaml" in files and PRODUCTION / "RUNBOOK.md" in files
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            where = f"{path.relative_to(REPO)}:{number}: {line.strip()}"
            for m in (_ASSIGNED_LITERAL if path.suffix == ".py" else _ASSIGNED).finditer(line):
                assert _REFERENCE.match(m["value"]), where
            assert not _URL_CREDENTIALS.search(line), where
            assert not _SQL_PASSWORD.search(line), where


def test_the_secret_checks_catch_a_written_password() -> None:
    for line in (
        "OFISYNC_ERP_SINK_PASSWORD=hunter2",
        '"database.password": "hunter2"',
        "OFISYNC_ERP_DSN=postgresql://ofisync_ops:hunter2@erp-db:5432/ofiviaje",
        "ALTER ROLE ofisync_sink PASSWORD 'hunter2';",
        'password = "hunter2"',
    ):
        caught = (
            any(not _REFERENCE.match(m["value"]) for m in _ASSIGNED.finditer(line))
            or any(not _REFERENCE.match(m["value"]) for m in _ASSIGNED_LITERAL.finditer(line))
            or _URL_CREDENTIALS.search(line)
            or _SQL_PASSWORD.search(line)
        )
        assert caught, line


def test_secrets_come_only_from_files_git_ignores() -> None:
    declared = compose()["secrets"]
    for name, secret in declared.items():
        assert secret == {"file": f"./secrets/{name}"}, name
    for name, spec in compose()["services"].items():
        assert set(spec.get("secrets", [])) <= declared.keys(), name
        assert "env_file" not in spec, name
    ignored = (PRODUCTION / ".gitignore").read_text().splitlines()
    assert "/secrets/" in ignored and "/.env" in ignored
