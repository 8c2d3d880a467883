"""The exceptions followup raises on purpose, so callers can tell them from bugs."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is unusable.

    The message is one line: the variable, the bad part, and what was expected. It never
    carries a secret, because start-up errors are printed as they are.
    """

    def __init__(self, variable: str, bad: str, expected: str) -> None:
        self.variable = variable
        self.bad = bad
        self.expected = expected
        super().__init__(f"{variable}: {bad}: expected {expected}")


class CallbackError(ValueError):
    """A callback message cannot be understood; it is logged and ignored."""


class DispatchError(RuntimeError):
    """One attempt could not hand the follow-up to the flow (webhook or channel).

    `final`: the receiver said never (410 Gone): no more attempts. `retry_after`: it asked for a
    pause (429 / 503 with Retry-After), in seconds.
    """

    def __init__(self, reason: str, *, final: bool = False, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.final = final
        self.retry_after = retry_after
