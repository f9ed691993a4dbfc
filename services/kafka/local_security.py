"""What a secured local cluster needs, made once under its state directory and reused:
a CA and the brokers' certificate (trustme, on cryptography), and a SCRAM-SHA-512 password
for the brokers, the admin and every Lanes principal (``principals.json``, mode 0600).

The brokers: SASL_SSL with SCRAM for clients and between brokers, the KRaft controller
listener on mutual TLS (controllers cannot use SCRAM among themselves), StandardAuthorizer
with ``allow.everyone.if.no.acl.found=false``; only the brokers and ``admin`` are super users.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LocalSecurity", "ADMIN", "BROKER"]

ADMIN = "admin"
BROKER = "broker"


@dataclass
class LocalSecurity:
    folder: Path

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def broker_pem(self) -> Path:
        return self.folder / "broker.pem"

    @property
    def principals_file(self) -> Path:
        return self.folder / "principals.json"

    def ensure(self, principals: Iterable[str]) -> dict[str, str]:
        """The CA, the broker's key and certificate, and a password for the brokers, the
        admin and each of ``principals`` (new ones added); returns name -> password."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.ca_file.exists() or not self.broker_pem.exists():
            self._certificates()
        passwords = self.passwords()
        for name in (BROKER, ADMIN, *principals):
            passwords.setdefault(name, secrets.token_urlsafe(24))
        fd = os.open(self.principals_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(passwords, f, indent=1, sort_keys=True)
        return passwords

    def passwords(self) -> dict[str, str]:
        if not self.principals_file.exists():
            return {}
        return dict(json.loads(self.principals_file.read_text()))

    def _certificates(self) -> None:
        import trustme
        from cryptography.hazmat.primitives import serialization

        ca = trustme.CA(organization_name="Lanes local CA")
        ca.cert_pem.write_to_path(str(self.ca_file))
        # CN=broker: the controller listener maps a peer's certificate to User:broker.
        cert = ca.issue_cert("127.0.0.1", "localhost", common_name=BROKER)
        key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), None)
        pkcs8 = key.private_bytes(  # Kafka's PEM keystore reads PKCS#8 keys only
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(self.broker_pem, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pkcs8 + b"".join(blob.bytes() for blob in cert.cert_chain_pems))

    def scram_args(self) -> list[str]:
        """``kafka-storage format`` arguments that create every SCRAM user."""
        out: list[str] = []
        for name, password in sorted(self.passwords().items()):
            out += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
        return out

    def broker_properties(self, port: int, controller_port: int) -> str:
        """Appended to a node's server.properties (later keys win)."""
        password = self.passwords()[BROKER]
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{BROKER}" password="{password}";'
        )
        return "\n".join(
            [
                "# --- secured: SASL_SSL (SCRAM-SHA-512) for clients and brokers, mTLS controllers",
                f"listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
                f"advertised.listeners=SASL_SSL://127.0.0.1:{port}",
                "inter.broker.listener.name=SASL_SSL",
                "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SSL",
                "sasl.enabled.mechanisms=SCRAM-SHA-512",
                "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
                f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas}",
                "ssl.keystore.type=PEM",
                f"ssl.keystore.location={self.broker_pem}",
                "ssl.truststore.type=PEM",
                f"ssl.truststore.location={self.ca_file}",
                "ssl.enabled.protocols=TLSv1.3,TLSv1.2",
                "listener.name.controller.ssl.client.auth=required",
                "ssl.principal.mapping.rules=RULE:^CN=([^,]*).*$/$1/,DEFAULT",
                "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                "allow.everyone.if.no.acl.found=false",
                f"super.users=User:{BROKER};User:{ADMIN}",
                "",
            ]
        )

    def client_env(self, bootstrap: str, principal: str = ADMIN) -> dict[str, str]:
        """The LANES_* variables that connect as ``principal``."""
        return {
            "LANES_KAFKA_BOOTSTRAP": bootstrap,
            "LANES_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "LANES_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "LANES_KAFKA_CA_FILE": str(self.ca_file),
            "LANES_KAFKA_USERNAME": principal,
            "LANES_KAFKA_PASSWORD": self.passwords()[principal],
            "LANES_KAFKA_PRINCIPALS_FILE": str(self.principals_file),
        }
