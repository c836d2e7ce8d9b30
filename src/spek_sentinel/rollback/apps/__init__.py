"""Application backends: stop, roll back and start the application (runbook phases 1, 3, 4)."""

from spek_sentinel.rollback.apps.base import (
    AppBackend,
    AppBackendError,
    AppState,
    CommandFailedError,
    DirtyWorkTreeError,
    StepOutput,
    TargetMissingError,
)

__all__ = [
    "AppBackend",
    "AppBackendError",
    "AppState",
    "CommandFailedError",
    "DirtyWorkTreeError",
    "StepOutput",
    "TargetMissingError",
]
