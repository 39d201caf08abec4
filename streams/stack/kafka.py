"""The local Apache Kafka broker: one KRaft node acting as broker and controller.

Storage and config live in OFISYNC_HOME/kafka; jars come from `install.ensure_jars`.
"""

from __future__ import annotations

import base64
import uuid

from streams.settings import Settings
from streams.stack.install import REPO, java
from streams.stack.procs import port_open, read_pid, run, spawn, terminate, wait_until

MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
JVM_OPTS = ["-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true"]


def classpath(settings: Settings) -> str:
    return str(settings.lib / "kafka" / "*")


def jvm(settings: Settings, main: str, *args: str) -> list[str]:
    return [
        java(),
        *JVM_OPTS,
        f"-Dlog4j2.configurationFile={REPO / 'deploy' / 'local' / 'log4j2.properties'}",
        "-cp",
        classpath(settings),
        main,
        *args,
    ]


class Broker:
    name = "kafka"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = settings.home / "kafka"
        self.config = self.dir / "server.properties"
        self.pid_file = settings.run / "kafka.pid"
        self.log = settings.logs / "kafka.log"

    def properties(self) -> str:
        s = self.settings
        return "\n".join(
            [
                "# written by `ofisync up`; edits are overwritten",
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@{s.kafka_controller}",
                f"listeners=PLAINTEXT://{s.kafka},CONTROLLER://{s.kafka_controller}",
                f"advertised.listeners=PLAINTEXT://{s.kafka}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                f"log.dirs={self.dir / 'data'}",
                "num.partitions=4",
                "default.replication.factor=1",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=8",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                # One node: nobody else will join, so do not wait for them.
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=true",
                "log.retention.hours=168",
                "log.segment.bytes=268435456",
                "",
            ]
        )

    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def healthy(self) -> bool:
        return self.pid() is not None and port_open(
            self.settings.kafka.host, self.settings.kafka.port
        )

    def start(self) -> None:
        if self.pid():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self.properties())
        if not (self.dir / "data" / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            run(
                # `=` form: a base64url id may start with "-", which would read as an option.
                jvm(
                    self.settings,
                    STORAGE_TOOL,
                    "format",
                    f"--cluster-id={cluster_id}",
                    f"--config={self.config}",
                ),
                "formatting Kafka storage",
            )
        spawn(jvm(self.settings, MAIN_CLASS, str(self.config)), self.log, self.pid_file)
        wait_until(
            self.ready,
            120,
            f"Kafka broker on {self.settings.kafka} (log: {self.log})",
            alive=lambda: self.pid() is not None,
        )

    def ready(self) -> bool:
        if not port_open(self.settings.kafka.host, self.settings.kafka.port):
            return False
        from kafka import KafkaAdminClient  # local import: heavy, and only needed here
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(
                bootstrap_servers=str(self.settings.kafka),
                request_timeout_ms=3000,
                client_id="ofisync-up",
            )
        except (KafkaError, OSError, ValueError):
            return False
        try:
            return bool(admin.describe_cluster().get("brokers"))
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()

    def stop(self) -> bool:
        return terminate(self.pid_file, grace=60)
