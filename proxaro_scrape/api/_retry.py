"""The retry policy of the REST clients, written once: when to retry, how long to wait, and the
tenacity arguments both clients run with (tenacity is imported at the first retry)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx

from proxaro_scrape.api._base import (
    _NOT_SENT,
    RETRY_ANY_METHOD,
    RETRY_IDEMPOTENT,
    ClientConfig,
    RequestSpec,
    RetryPolicy,
)
from proxaro_scrape.errors import APIConnectionError, APIError, APITimeoutError

if TYPE_CHECKING:
    import tenacity

__all__ = ["retry_wait", "retrying_kwargs", "should_retry", "worth_retrying"]

logger = logging.getLogger("proxaro_scrape.api")


def retry_wait(
    attempt: int, retry_after: float | None, *, policy: RetryPolicy, jitter: float
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).  Pure.

    ``retry_after`` is what the server asked for (seconds, already parsed); ``jitter`` is a
    random number in ``[0, 1)`` supplied by the caller so that this function stays pure.
    """
    if retry_after is not None:
        return min(max(retry_after, 0.0), policy.max_retry_after)
    backoff = min(policy.max_backoff, policy.initial_backoff * 2 ** max(attempt - 1, 0))
    return backoff * (1.0 - policy.jitter * min(max(jitter, 0.0), 1.0))


def should_retry(exc: BaseException, *, idempotent: bool) -> bool:
    """Is this failure worth another attempt?  Pure; the one place that decides.

    429 and 503 (the server did not act) and failures before the request left (connect
    errors and connect timeouts) are retried for every method.  500/502/504 and failures after
    the request may have arrived (read timeouts, dropped connections) are ambiguous: retried
    only for idempotent methods, never for a POST such as ``credentials.rotate()``.
    """
    if isinstance(exc, APIError):
        if exc.status in RETRY_ANY_METHOD:
            return True
        return idempotent and exc.status in RETRY_IDEMPOTENT
    if isinstance(exc, APITimeoutError) and exc.__cause__ is None:
        return False  # the call's own deadline (deadline_error): no time is left to retry in
    if isinstance(exc, APIConnectionError):
        cause = exc.__cause__
        if isinstance(cause, httpx.UnsupportedProtocol):
            return False  # a bad URL stays bad
        if isinstance(cause, _NOT_SENT):
            return True
        return idempotent
    return False


def worth_retrying(config: ClientConfig, spec: RequestSpec[Any], exc: BaseException) -> bool:
    """Whether a first attempt's failure calls for the retrying at all.

    The clients make a call's first attempt themselves and hand over to tenacity (imported
    then: most calls never need it, and it costs a process 6 ms to import) only when this
    says so; tenacity then replays that failure as its attempt 1 and decides, with
    :func:`retrying_kwargs`, exactly as if it had made it.
    """
    return config.max_retries > 0 and should_retry(exc, idempotent=spec.idempotent)


def retrying_kwargs(
    config: ClientConfig,
    spec: RequestSpec[Any],
    rng: Callable[[], float] = random.random,
    *,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """tenacity arguments for one call: the same policy object for ``Retrying`` and
    ``AsyncRetrying``.

    ``deadline`` (a ``clock()`` value) is when the call must end: a wait that would not fit in
    what is left stops the retrying at once, and a ``Retry-After`` that is the cause says so in
    the error, with the time asked and the time left.
    """
    import tenacity
    import tenacity.stop

    policy = config.retry_policy
    idempotent = spec.idempotent
    attempts = config.max_retries + 1

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        return retry_wait(
            state.attempt_number,
            getattr(exc, "retry_after", None),
            policy=policy,
            jitter=rng(),
        )

    class OutOfTime(tenacity.stop.stop_base):
        def __call__(self, state: tenacity.RetryCallState) -> bool:
            if deadline is None:
                return False
            exc = state.outcome.exception() if state.outcome is not None else None
            # Retrying before the time the server asked for is wasted, even where the policy
            # caps the wait (max_retry_after): the whole Retry-After must fit.
            asked = getattr(exc, "retry_after", None) or 0.0
            need = max(getattr(state, "upcoming_sleep", 0.0), asked)
            return bool(need >= deadline - clock())

    def give_up(state: tenacity.RetryCallState) -> Any:
        exc = state.outcome.exception() if state.outcome is not None else None
        assert exc is not None  # retrying only follows failures
        if state.attempt_number < attempts and deadline is not None and config.deadline:
            _note_deadline(exc, clock_left=deadline - clock(), total=config.deadline)
        raise exc

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        sleep = state.next_action.sleep if state.next_action is not None else 0.0
        logger.info(
            "retrying %s %s in %.2fs after %s (attempt %d of %d)",
            spec.method,
            spec.path,
            sleep,
            type(exc).__name__,
            state.attempt_number,
            attempts,
        )

    return {
        "stop": tenacity.stop_after_attempt(attempts) | OutOfTime(),
        "wait": wait,
        "retry": tenacity.retry_if_exception(lambda e: should_retry(e, idempotent=idempotent)),
        "before_sleep": before_sleep,
        "retry_error_callback": give_up,
    }


def _note_deadline(exc: BaseException, *, clock_left: float, total: float) -> None:
    """Say in ``exc`` why it was not retried: the wait did not fit in the call's deadline."""
    if not isinstance(exc, APIError):
        return  # a timeout already says it timed out
    left = max(clock_left, 0.0)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        note = (
            f"; the API asked to retry in {retry_after:g} s, more than the {left:.1f} s left of "
            f"this call's {total:g} s timeout, so it was not retried"
        )
    else:
        note = f"; not retried: {left:.1f} s left of this call's {total:g} s timeout"
    exc.message += note
    exc.args = (exc._text(),)
