"""Moved to service/scheduling/ (batcher.py, queue.py, submit.py): these names stay importable
until their last users (service/middleware.py's `arrived`) import them from there."""

from service.scheduling.batcher import BatchScheduler as Batcher
from service.scheduling.queue import QueueFull, TooBig
from service.scheduling.queue import SchedulerStopped as BatcherStopped
from service.scheduling.submit import arrived

__all__ = ["Batcher", "BatcherStopped", "QueueFull", "TooBig", "arrived"]
