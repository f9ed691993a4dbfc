"""A compacted topic materialized into an SQLite file: key -> latest value, plus the
columns its readers query, and the next offset of every partition in the same
transaction as the rows. A restarted process resumes from those offsets instead of
re-reading the topic's history, and its memory holds SQLite's page cache, not the jobs.

The topic stays the source of truth: delete the file and the view rebuilds from it. A
stored offset beyond a partition's end (the topic was recreated) drops that partition's
rows and reads it again; one before its start resumes from the start.

Why SQLite: it ships with Python, one file per process needs no server to run or
secure, and a primary-key read is a B-tree lookup of microseconds. Each process that
needs the view keeps its own file under its state directory (no host reads another's).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.config.settings import Settings
from services.kafka.clients import assign_held, make_follower, partition_ids

__all__ = ["SqliteView", "Columns"]

log = structlog.get_logger("lanes.view")

# value bytes -> the extra columns of its row (a parse error skips the record)
Columns = Callable[[bytes], Mapping[str, Any]]
BATCH_ROWS = 2000  # records applied per transaction while catching up


class SqliteView:
    """``get(key)`` / ``query(sql)`` read the table ``rows`` (key, part, value, *columns*).

    ``catch_up()`` applies what was written since the stored offsets (all partitions or the
    given ones); ``follow()`` does that, sets ``caught_up``, and keeps applying. ``put()`` /
    ``delete()`` write a row without moving the offsets (a state owner's write-through; the
    changelog record it publishes replays to the same row)."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        path: Path,
        *,
        columns: Sequence[str] = (),
        indexes: Sequence[Sequence[str]] = (),
        extract: Columns | None = None,
        cache_mb: int = 16,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.path = Path(path)
        self.columns = tuple(columns)
        self.indexes = tuple(tuple(i) for i in indexes)
        self.extract = extract or (lambda value: {})
        self.cache_mb = cache_mb
        self.caught_up = asyncio.Event()
        self._lock = threading.Lock()  # one writer: the catch-up thread or a write-through
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self.applied = 0  # records applied by this process (catch-up rate, metrics)

    # ---- the file ------------------------------------------------------------------------

    def open(self) -> SqliteView:
        if self._writer is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cols = "".join(f", {c}" for c in self.columns)
        self._writer = self._connect()
        with self._writer:
            self._writer.execute("PRAGMA journal_mode=WAL")
            self._writer.execute(
                f"CREATE TABLE IF NOT EXISTS rows (key TEXT PRIMARY KEY, part INTEGER, "
                f"value BLOB NOT NULL{cols})"
            )
            self._writer.execute(
                "CREATE TABLE IF NOT EXISTS offsets (part INTEGER PRIMARY KEY, next INTEGER)"
            )
            self._writer.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT)")
            for index in self.indexes:
                name = "ix_" + "_".join(index)
                self._writer.execute(
                    f"CREATE INDEX IF NOT EXISTS {name} ON rows ({', '.join(index)})"
                )
            self._writer.execute("CREATE INDEX IF NOT EXISTS ix_part ON rows (part)")
            topic = self._writer.execute("SELECT v FROM meta WHERE k='topic'").fetchone()
            if topic is not None and topic[0] != self.topic:
                raise ValueError(f"{self.path} holds a view of {topic[0]!r}, not {self.topic!r}")
            self._writer.execute("INSERT OR IGNORE INTO meta VALUES ('topic', ?)", (self.topic,))
        self._reader = self._connect()
        return self

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
        db.execute(f"PRAGMA cache_size=-{self.cache_mb * 1024}")
        db.execute("PRAGMA busy_timeout=5000")
        db.isolation_level = "DEFERRED"
        return db

    def close(self) -> None:
        for db in (self._reader, self._writer):
            if db is not None:
                db.close()
        self._reader = self._writer = None

    @property
    def db(self) -> sqlite3.Connection:
        """The read connection (use from the event loop: reads take microseconds)."""
        if self._reader is None:
            self.open()
        assert self._reader is not None
        return self._reader

    # ---- reads ---------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        row = self.db.execute("SELECT value FROM rows WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Any]:
        return self.db.execute(sql, params).fetchall()

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM rows").fetchone()[0])

    def offsets(self) -> dict[int, int]:
        return dict(self.db.execute("SELECT part, next FROM offsets").fetchall())

    # ---- writes --------------------------------------------------------------------------

    def _row(self, key: str, part: int | None, value: bytes) -> tuple[Any, ...] | None:
        try:
            extra = self.extract(value)
        except Exception as exc:  # noqa: BLE001 - a bad record must not stop the view
            log.warning("view_record_skipped", topic=self.topic, key=key, error=str(exc)[:300])
            return None
        return (key, part, value, *(extra.get(c) for c in self.columns))

    def _upsert_sql(self) -> str:
        cols = ("value", *self.columns)
        names = ", ".join(("key", "part", *cols))
        marks = ", ".join("?" * (2 + len(cols)))
        sets = ", ".join(f"{c}=excluded.{c}" for c in cols)
        # A write-through names no partition: it keeps the one a replay recorded.
        return (
            f"INSERT INTO rows ({names}) VALUES ({marks}) ON CONFLICT(key) DO UPDATE SET "
            f"part=COALESCE(excluded.part, rows.part), {sets}"
        )

    def put(self, key: str, value: bytes, part: int | None = None) -> None:
        row = self._row(key, part, value)
        if row is None:
            return
        with self._lock, self._writer_db() as db:
            db.execute(self._upsert_sql(), row)

    def delete(self, key: str) -> None:
        with self._lock, self._writer_db() as db:
            db.execute("DELETE FROM rows WHERE key=?", (key,))

    def delete_where(self, where: str, params: Sequence[Any] = ()) -> int:
        with self._lock, self._writer_db() as db:
            return int(db.execute(f"DELETE FROM rows WHERE {where}", params).rowcount)

    def _writer_db(self) -> sqlite3.Connection:
        if self._writer is None:
            self.open()
        assert self._writer is not None
        return self._writer

    def _apply(self, records: Sequence[tuple[int, int, bytes | None, bytes | None]]) -> None:
        """Apply (partition, offset, key, value) records in order (a tombstone deletes) and
        move the offsets, in one transaction. Runs in a worker thread."""
        sql = self._upsert_sql()
        nexts: dict[int, int] = {}
        with self._lock, self._writer_db() as db:
            for part, offset, key, value in records:
                nexts[part] = offset + 1
                if key is None:
                    continue
                if value is None:
                    db.execute("DELETE FROM rows WHERE key=?", (key.decode(),))
                elif (row := self._row(key.decode(), part, value)) is not None:
                    db.execute(sql, row)
            db.executemany("INSERT OR REPLACE INTO offsets VALUES (?, ?)", list(nexts.items()))

    def _reset(self, parts: Iterable[int]) -> None:
        with self._lock, self._writer_db() as db:
            for p in parts:
                db.execute("DELETE FROM rows WHERE part=?", (p,))
                db.execute("DELETE FROM offsets WHERE part=?", (p,))

    # ---- reading the topic ---------------------------------------------------------------

    async def _assign(
        self, consumer: AIOKafkaConsumer, partitions: Iterable[int] | None
    ) -> dict[TopicPartition, int]:
        self.open()
        if partitions is None:
            partitions = await partition_ids(self.settings, self.topic)
        tps = [TopicPartition(self.topic, p) for p in partitions]
        assign_held(consumer, tps)
        if not tps:
            return {}
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        stored = self.offsets()
        stale = [tp.partition for tp in tps if stored.get(tp.partition, 0) > ends[tp]]
        if stale:  # the topic was recreated under us: this partition's rows are not its
            log.warning("view_partitions_reset", topic=self.topic, partitions=stale)
            self._reset(stale)
            stored = self.offsets()
        for tp in tps:
            consumer.seek(tp, max(stored.get(tp.partition, 0), starts[tp]))
        consumer.resume(*tps)
        return dict(ends)

    async def _read(
        self, consumer: AIOKafkaConsumer, until: dict[TopicPartition, int] | None
    ) -> int:
        """Apply batches until every partition reaches ``until`` (None: forever); return
        how many records were applied."""
        applied = 0
        remaining = None
        if until is not None:
            remaining = {tp for tp, end in until.items() if await consumer.position(tp) < end}
        while remaining is None or remaining:
            batches = await consumer.getmany(timeout_ms=200, max_records=BATCH_ROWS)
            records = [
                (tp.partition, r.offset, r.key, r.value) for tp, rs in batches.items() for r in rs
            ]
            if records:
                await asyncio.to_thread(self._apply, records)
                applied += len(records)
                self.applied += len(records)
            if until is not None:
                remaining = {
                    tp for tp in remaining or () if await consumer.position(tp) < until[tp]
                }
        return applied

    async def catch_up(self, partitions: Iterable[int] | None = None) -> int:
        """Apply what the given partitions (default: all) hold beyond the stored offsets;
        return how many records that was."""
        return await self._consume(partitions, keep_following=False)

    async def follow(self) -> None:
        """Catch up, set ``caught_up``, then keep applying new records until cancelled."""
        await self._consume(None, keep_following=True)

    async def _consume(self, partitions: Iterable[int] | None, *, keep_following: bool) -> int:
        # The follower's bounded read-ahead (make_consumer's) keeps memory flat however long
        # the log.
        consumer = make_follower(self.settings, "lanes-view", one_shot=not keep_following)
        await consumer.start()
        try:
            ends = await self._assign(consumer, partitions)
            applied = await self._read(consumer, ends)
            if keep_following:
                log.info("view_caught_up", topic=self.topic, rows=self.count(), applied=applied)
                self.caught_up.set()
                await self._read(consumer, None)
            return applied
        finally:
            await consumer.stop()
