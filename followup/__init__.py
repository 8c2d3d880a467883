"""followup: Redis key expirations turned into reliable webhook and channel jobs on Celery."""

__version__ = "0.1.0"
