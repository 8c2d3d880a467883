"""Every atomic Redis step of followup, one named Lua script each (loaded by followup.scripts)."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files

import redis
from redis.commands.core import Script


def load(client: redis.Redis, name: str) -> Script:
    """The script `name`.lua bound to `client` (EVALSHA, loading it on first use)."""
    source = files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return client.register_script(source)


def ensure_loaded(client: redis.Redis, *loaded: Script) -> None:
    """Load scripts into Redis now, so that `queue` can put them in pipelines as bare EVALSHAs."""
    for script in loaded:
        client.script_load(script.script)


def queue(pipe: redis.client.Pipeline, script: Script, keys: Sequence[str], args: Sequence[object]) -> None:
    """Add a call of `script` to `pipe` without redis-py's SCRIPT EXISTS round trip before every
    pipeline that holds a script; the caller made sure it is loaded (`ensure_loaded`), and a Redis
    that lost it since (a restart) answers NOSCRIPT, which the caller treats as a reconnect."""
    pipe.evalsha(script.sha, len(keys), *keys, *args)
