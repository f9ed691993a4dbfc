"""What a publisher into Lanes needs to know: where the cluster is and the topic prefix.

Read from ``LANES_*`` variables like the server's settings (which extend this class), so
one environment serves both; the SDK needs nothing else.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ClientSettings"]


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LANES_", frozen=True, extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:9092"
    # Every topic name is prefixed with this; tests use a uuid prefix per test.
    topic_prefix: str = ""
