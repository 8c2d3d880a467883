"""The delay before each retry: exponential, lengthened by jitter, capped."""

from __future__ import annotations

import random

from followup.config import JITTER, Settings, doubling


def retry_delay(settings: Settings, failed_attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after attempt `failed_attempt` (1-based) before the next one.

    BACKOFF_DELAY doubles each attempt and jitter only lengthens it, by up to 25 %, so no delay is
    shorter than the one before it until BACKOFF_MAX caps them. (Celery's own `retry_jitter`
    draws the whole delay at random and can shorten it, which the contract rules out.)
    """
    base = settings.backoff_delay * doubling(failed_attempt - 1)
    jitter = (rng or random).uniform(0, JITTER)
    return min(base * (1 + jitter), settings.backoff_max)
