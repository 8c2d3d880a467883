"""followup: Redis key expirations turned into reliable webhook and channel jobs on Celery."""

from followup.scheduling import cancel, schedule

__version__ = "0.1.0"
__all__ = ["cancel", "schedule"]
