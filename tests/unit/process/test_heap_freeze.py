"""A member's start-up freeze: what is alive stays out of later collections, garbage made
before it is freed (never frozen for good), at every member a process starts."""

from __future__ import annotations

import gc
import weakref

from services.process.tuning import freeze_startup_heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def _garbage_cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a  # only the cyclic collector can free these
    return weakref.ref(a)


def test_each_freeze_frees_earlier_garbage_and_freezes_what_is_alive() -> None:
    for _ in range(3):  # a process hosting several members freezes once per member
        dead = _garbage_cycle()
        alive = Node()
        alive.other = alive
        before = gc.get_freeze_count()
        freeze_startup_heap()
        assert dead() is None  # collected, not kept for good
        assert gc.get_freeze_count() > before
        assert not any(o is alive for o in gc.get_objects())  # out of the collector's scans
