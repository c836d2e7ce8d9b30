"""The on-call console: server-rendered pages served by the daemon under ``/console``."""

from spek_sentinel.console.history import SignalHistory
from spek_sentinel.console.routes import ConsoleRoutes

__all__ = ["ConsoleRoutes", "SignalHistory"]
