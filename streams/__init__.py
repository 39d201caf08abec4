"""ofisync: OfiViaje ⇄ OfiCrmTravel sync.

Flow: capture (Debezium) → decode → rules → command (Avro topics) → apply (sinks).
`streams.stack` runs the local engines; `streams.cli` is the `ofisync` command.
"""
