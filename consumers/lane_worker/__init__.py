"""Lane worker [group lanes-lane-<lane>]: renders routed jobs, one process per GPU.

``run(settings, lane)`` starts one (``worker.py``); the rest of this package is what it is
built from: micro-batching, the GPU's turns between host and guests, the lane's models
and versions, and its metrics.
"""

from consumers.lane_worker.process import run
from consumers.lane_worker.worker import LaneWorker

__all__ = ["run", "LaneWorker"]
