"""followup.backoff.retry_delay: exponential, jitter only lengthens (by up to 25 %), capped, never shrinking."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from followup.backoff import retry_delay
from followup.config import load_settings


def make_settings(delay: str = "5000", cap: str = "10m", attempts: str = "5"):
    return load_settings(
        {"KEY_WEBHOOK_MAPPING": "k=|c", "BACKOFF_DELAY": delay, "BACKOFF_MAX": cap, "MAX_ATTEMPTS": attempts}.get
    )


class FixedJitter(random.Random):
    """An rng whose uniform(a, b) returns a (fraction=0) or b (fraction=1), or in between."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return a + (b - a) * self.fraction


def test_no_jitter_is_exactly_exponential():
    s = make_settings(delay="5s", cap="1h")
    assert [retry_delay(s, n, FixedJitter(0)) for n in range(1, 6)] == [5.0, 10.0, 20.0, 40.0, 80.0]


def test_full_jitter_lengthens_by_a_quarter():
    s = make_settings(delay="5s", cap="1h")
    assert [retry_delay(s, n, FixedJitter(1)) for n in range(1, 5)] == pytest.approx([6.25, 12.5, 25.0, 50.0])


def test_jitter_is_drawn_between_zero_and_a_quarter():
    rng = FixedJitter(0.5)
    retry_delay(make_settings(), 1, rng)
    assert rng.calls == [(0, 0.25)]


def test_cap():
    s = make_settings(delay="5s", cap="30s")
    assert [retry_delay(s, n, FixedJitter(0)) for n in range(1, 7)] == [5.0, 10.0, 20.0, 30.0, 30.0, 30.0]
    # Jitter never pushes a delay past the cap either.
    assert retry_delay(s, 3, FixedJitter(1)) == 25.0
    assert retry_delay(s, 4, FixedJitter(1)) == 30.0


def test_bare_milliseconds_base():
    s = make_settings(delay="200", cap="1m")
    assert retry_delay(s, 1, FixedJitter(0)) == pytest.approx(0.2)
    assert retry_delay(s, 3, FixedJitter(0)) == pytest.approx(0.8)


def test_default_rng_stays_in_bounds():
    s = make_settings(delay="1s", cap="1h")
    for n in range(1, 8):
        for _ in range(50):
            assert 2 ** (n - 1) <= retry_delay(s, n) <= 1.25 * 2 ** (n - 1)


def test_default_rng_varies():
    s = make_settings(delay="1s", cap="1h")
    assert len({retry_delay(s, 3) for _ in range(20)}) > 1


def test_late_attempts_stay_capped():
    s = make_settings(delay="5s", cap="10m")
    assert retry_delay(s, 1000, random.Random(1)) == 600.0
    assert retry_delay(s, 1999, random.Random(1)) == 600.0  # 2 ** 1998 does not fit a float


# --- properties -------------------------------------------------------------------------------

BASE_MS = st.integers(min_value=1, max_value=120_000)
CAP_MS = st.integers(min_value=1, max_value=3_600_000)


@settings(max_examples=300, deadline=None)
@given(BASE_MS, CAP_MS, st.integers(min_value=1, max_value=40), st.randoms(use_true_random=False))
def test_delay_within_jitter_bounds_and_capped(base_ms, cap_ms, attempt, rng):
    s = make_settings(delay=str(base_ms), cap=str(cap_ms))
    base, cap = s.backoff_delay, s.backoff_max
    assert (base, cap) == (pytest.approx(base_ms / 1000), pytest.approx(cap_ms / 1000))
    delay = retry_delay(s, attempt, rng)
    low = base * 2 ** (attempt - 1)
    assert delay <= cap
    assert min(low, cap) <= delay <= min(1.25 * low, cap) + 1e-9


@settings(max_examples=300, deadline=None)
@given(BASE_MS, CAP_MS, st.integers(min_value=0, max_value=2**32 - 1))
def test_no_delay_shorter_than_the_one_before(base_ms, cap_ms, seed):
    s = make_settings(delay=str(base_ms), cap=str(cap_ms))
    rng = random.Random(seed)
    for _ in range(20):  # many independent draws of a whole retry sequence
        delays = [retry_delay(s, n, rng) for n in range(1, 16)]
        assert delays == sorted(delays), delays
        capped = [d for d in delays if d == s.backoff_max]
        # Once a delay reaches the cap, every later one stays there.
        if capped:
            first = delays.index(s.backoff_max)
            assert all(d == s.backoff_max for d in delays[first:])
