"""What a publisher into Lanes needs to know: where the cluster is, how to connect to it
securely, and the topic prefix.

Read from ``LANES_*`` variables like the server's settings (which extend this class), so
one environment serves both; the SDK needs nothing else. The connection settings are one
group (``kafka_connection``), from ``LANES_KAFKA_*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ClientSettings", "KafkaConnection", "parse_bootstrap"]

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


def parse_bootstrap(value: str) -> list[tuple[str, int]]:
    """``host:port[,host:port...]`` (IPv6 as ``[::1]:9092``) as (host, port) pairs; the one
    place a bootstrap list is read. ValueError with the entry at fault."""
    out: list[tuple[str, int]] = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        host, sep, port = entry.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bootstrap address {entry!r} is not host:port")
        out.append((host, int(port)))
    if not out:
        raise ValueError("the bootstrap list is empty")
    return out


@dataclass(frozen=True)
class KafkaConnection:
    """How every client connects: the one group the client factory reads."""

    bootstrap: tuple[str, ...]
    security_protocol: Protocol
    sasl_mechanism: Mechanism
    username: str | None
    password: SecretStr | None
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LANES_", frozen=True, extra="ignore", use_attribute_docstrings=True
    )

    kafka_bootstrap: str = "127.0.0.1:9092"
    """host:port, or a comma-separated list of them (every managed cluster gives several)."""
    kafka_security_protocol: Protocol = "PLAINTEXT"
    """PLAINTEXT (the local broker), SSL (TLS; mutual TLS with a client certificate), SASL_SSL
    (SCRAM or PLAIN over TLS: Confluent Cloud, MSK with SCRAM, Aiven), or SASL_PLAINTEXT.
    The production profile refuses the two in the clear unless allowed.
    """
    kafka_sasl_mechanism: Mechanism = "SCRAM-SHA-512"
    """SASL mechanism with SASL_SSL / SASL_PLAINTEXT: SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN."""
    kafka_username: str | None = None
    """This process's Kafka principal (SASL)."""
    kafka_password: SecretStr | None = None
    """The principal's password (SASL)."""
    kafka_ca_file: Path | None = None
    """The CA that signed the brokers' certificates (None: the system's trust store); hostname
    verification stays on.
    """
    kafka_cert_file: Path | None = None
    """Mutual TLS: this client's certificate and key (PEM)."""
    kafka_key_file: Path | None = None
    """Mutual TLS: this client's private key (PEM), with kafka_cert_file."""
    topic_prefix: str = ""
    """Every topic name is prefixed with this; tests use a uuid prefix per test."""

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        parse_bootstrap(value)
        return value

    @model_validator(mode="after")
    def _connection(self) -> ClientSettings:
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_username and self.kafka_password
        ):
            raise ValueError(
                f"LANES_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "LANES_KAFKA_USERNAME and LANES_KAFKA_PASSWORD"
            )
        if (self.kafka_cert_file is None) != (self.kafka_key_file is None):
            raise ValueError("LANES_KAFKA_CERT_FILE and LANES_KAFKA_KEY_FILE go together")
        return self

    @property
    def kafka_connection(self) -> KafkaConnection:
        return KafkaConnection(
            bootstrap=tuple(f"{h}:{p}" for h, p in parse_bootstrap(self.kafka_bootstrap)),
            security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            username=self.kafka_username,
            password=self.kafka_password,
            ca_file=self.kafka_ca_file,
            cert_file=self.kafka_cert_file,
            key_file=self.kafka_key_file,
        )
