"""Ending a process at once, for the one case where waiting is wrong: a worker stopped while
it loads a model it will never use (the loading thread would hold the interpreter's exit)."""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

__all__ = ["exit_now"]


def exit_now(code: int) -> NoReturn:
    """Flush the logs, then end the process without joining its threads."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
