"""Every atomic Redis step of followup, one named Lua script each (loaded by followup.scripts)."""

from __future__ import annotations

from importlib.resources import files

import redis
from redis.commands.core import Script


def load(client: redis.Redis, name: str) -> Script:
    """The script `name`.lua bound to `client` (EVALSHA, loading it on first use)."""
    source = files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return client.register_script(source)
