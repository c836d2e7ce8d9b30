import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeoutError(AssertionError, TimeoutError):
    """A condition did not hold in time; a test failure, and a TimeoutError for callers."""


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition not met",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll `predicate` until it returns something truthy, and return that.

    Exceptions listed in `ignore` count as "not yet"; the last one is reported on timeout.
    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
        except ignore as exc:
            last_error = exc
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise WaitTimeoutError(f"{message}: still false after {timeout:.1f}s{detail}")
        pause.wait(interval)
