"""The local broker's start-up aid, on real JVMs: a class-data-sharing archive of Kafka's
classes beside the jars, written by one node at a time when it exits cleanly (`make install`
runs a throwaway one), then loaded by every later node; a node killed with -9 leaves nothing
half-written behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.kafka import local_broker
from services.kafka.local_broker import KafkaProcess, ensure_class_archive, free_port

pytestmark = pytest.mark.kafka


def test_a_clean_exit_writes_the_class_archive_and_later_nodes_use_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "cache" / "classes.jsa"
    archive.parent.mkdir()
    monkeypatch.setattr(local_broker, "class_archive", lambda libs, java: archive)

    # The first node claims the archive; a node beside it neither writes nor reads one;
    # killed with -9, they leave no archive and no partial file.
    claimant = KafkaProcess(tmp_path / "claimant", port=free_port())
    claimant.launch()
    beside = KafkaProcess(tmp_path / "beside", port=free_port())
    beside.launch()
    assert claimant.proc is not None and beside.proc is not None
    assert f"-XX:ArchiveClassesAtExit={archive}.partial" in claimant.proc.args
    assert not any("Archive" in str(arg) for arg in beside.proc.args)
    claimant.kill()
    beside.kill()
    assert list(archive.parent.iterdir()) == []

    # `make install` writes it with a throwaway node, started and stopped cleanly.
    assert ensure_class_archive() == archive
    assert archive.stat().st_size > 1_000_000
    assert list(archive.parent.iterdir()) == [archive]

    later = KafkaProcess(tmp_path / "later", port=free_port())
    later.start()
    try:
        assert later.proc is not None
        assert f"-XX:SharedArchiveFile={archive}" in later.proc.args
        assert later.running
    finally:
        later.stop()
