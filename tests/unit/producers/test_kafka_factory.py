"""One factory builds every aiokafka client, with the connection's security."""

from __future__ import annotations

import ast
import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from producers.kafka import connection_options, make_admin, make_producer, make_raw_consumer
from producers.settings import ClientSettings, parse_bootstrap

ROOT = Path(__file__).parents[3]
FACTORY = ROOT / "producers" / "kafka.py"
CLIENTS = {"AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaAdminClient"}


def test_no_module_but_the_factory_constructs_an_aiokafka_client() -> None:
    offenders = []
    for folder in ("schemas", "producers", "services", "consumers", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == FACTORY:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call):
                    name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                    if name in CLIENTS:
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == [], f"build clients with producers.kafka instead: {offenders}"


def test_bootstrap_lists_are_parsed_once() -> None:
    assert parse_bootstrap("127.0.0.1:9092, b-1.kafka:9094,[::1]:9096") == [
        ("127.0.0.1", 9092),
        ("b-1.kafka", 9094),
        ("::1", 9096),
    ]
    for bad in ("", "kafka", "kafka:port", "kafka:0", ":9092"):
        with pytest.raises(ValueError):
            parse_bootstrap(bad)
    with pytest.raises(ValidationError, match="not host:port"):
        ClientSettings(kafka_bootstrap="127.0.0.1:9092,127.0.0.1")
    settings = ClientSettings(kafka_bootstrap="127.0.0.1:9092,127.0.0.1:9094")
    assert connection_options(settings)["bootstrap_servers"] == ["127.0.0.1:9092", "127.0.0.1:9094"]


async def test_sasl_ssl_reaches_every_kind_of_client(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    settings = ClientSettings(
        kafka_bootstrap="kafka.example:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_username="gateway",
        kafka_password="s3cret-pw",
        kafka_ca_file=ca_file,
    )
    options = connection_options(settings)
    context = options["ssl_context"]
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert "s3cret-pw" not in repr(settings) and "s3cret-pw" not in str(settings.model_dump())
    producer, consumer = make_producer(settings), make_raw_consumer(settings)
    admin = make_admin(settings)
    for inner in (producer.client, consumer._client, admin._client):
        assert inner._security_protocol == "SASL_SSL"
        assert inner._sasl_mechanism == "SCRAM-SHA-512" and inner._ssl_context.check_hostname
    await producer.stop()
    await consumer.stop()
    await admin.close()


def test_sasl_needs_credentials_and_mtls_needs_both_files(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="LANES_KAFKA_USERNAME"):
        ClientSettings(kafka_security_protocol="SASL_SSL")
    with pytest.raises(ValidationError, match="go together"):
        ClientSettings(kafka_security_protocol="SSL", kafka_cert_file=tmp_path / "c.pem")
