"""Partitions sized for the fleet: `lanes kafka topics` creates every topic with the counts
the settings give, raises them where Kafka allows it, and refuses (never remaps) the keyed,
compacted topics."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from services.config.settings import Settings
from services.kafka.clients import partition_ids

pytestmark = [pytest.mark.kafka]


def topics_cli(bootstrap: str, prefix: str, **env: str) -> subprocess.CompletedProcess[str]:
    child = {k: v for k, v in os.environ.items() if not k.startswith("LANES_")}
    child |= {"LANES_KAFKA_BOOTSTRAP": bootstrap, "LANES_TOPIC_PREFIX": prefix, **env}
    return subprocess.run(
        [sys.executable, "-m", "services.apps.cli", "kafka", "topics"],
        env=child,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_topics_take_their_counts_from_settings_and_grow_where_kafka_allows(
    kafka_bootstrap: str,
) -> None:
    prefix = f"p{uuid.uuid4().hex[:8]}."
    settings = Settings(kafka_bootstrap=kafka_bootstrap, topic_prefix=prefix)
    first = topics_cli(
        kafka_bootstrap,
        prefix,
        LANES_TOPIC_PARTITIONS="2",
        LANES_LANE_PARTITIONS="3",
        LANES_LANE_PARTITIONS_BY_LANE='{"final": 5}',
    )
    assert first.returncode == 0, first.stderr
    assert len(await partition_ids(settings, f"{prefix}lanes.requests")) == 2
    assert len(await partition_ids(settings, f"{prefix}lanes.lane.draft")) == 3
    assert len(await partition_ids(settings, f"{prefix}lanes.lane.final")) == 5
    # The same counts again: nothing to do.
    same = topics_cli(
        kafka_bootstrap, prefix, LANES_TOPIC_PARTITIONS="2", LANES_LANE_PARTITIONS="3",
        LANES_LANE_PARTITIONS_BY_LANE='{"final": 5}',
    )  # fmt: skip
    assert same.returncode == 0 and " created" not in same.stdout and " added" not in same.stdout
    # Raised: plain topics grow; the keyed, compacted ones (jobs, deliveries) are refused.
    grown = topics_cli(
        kafka_bootstrap, prefix, LANES_TOPIC_PARTITIONS="4", LANES_LANE_PARTITIONS="8"
    )
    assert grown.returncode == 1
    rows = {line.split()[0]: line.split()[1:] for line in grown.stdout.splitlines()[1:] if line}
    assert rows[f"{prefix}lanes.requests"] == ["2", "4", "added"]
    assert rows[f"{prefix}lanes.lane.draft"] == ["3", "8", "added"]
    assert rows[f"{prefix}lanes.lane.final"] == ["5", "8", "added"]
    assert rows[f"{prefix}lanes.jobs"] == ["2", "4", "refused"]
    assert "key ordering" in grown.stdout or "another partition" in grown.stdout
    assert f"{prefix}lanes.jobs" in grown.stderr and "docs/kafka.md" in grown.stderr
    assert len(await partition_ids(settings, f"{prefix}lanes.requests")) == 4
    assert len(await partition_ids(settings, f"{prefix}lanes.lane.draft")) == 8
    assert len(await partition_ids(settings, f"{prefix}lanes.jobs")) == 2  # never remapped
