"""Moved to service/scheduling/continuous.py: this name stays importable until its last users
(tests/service/test_startup.py, tests/runtime/test_target_vocab.py) import it from there."""

from service.scheduling.continuous import ContinuousScheduler as ContinuousBatcher

__all__ = ["ContinuousBatcher"]
