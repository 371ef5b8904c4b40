"""Celery beat's scheduler: RedBeat that rides out a Redis outage instead of exiting.

RedBeat retries its own Redis calls, but not the renewal of its lock nor the pipelined
schedule read, so a Redis that restarts or stalls for a few seconds used to end beat.
Here a tick that meets a connection error waits and tries again, and a lock that expired
while Redis was away is taken again (blocking, as at start, if another beat took it).
"""

from __future__ import annotations

from types import SimpleNamespace

import redis
from celery.utils.log import get_logger
from redbeat.schedulers import RedBeatScheduler, acquire_distributed_beat_lock
from redis.exceptions import LockError

logger = get_logger("celery.beat")
RETRY_SECONDS = 2.0


class SteadyRedBeatScheduler(RedBeatScheduler):
    def tick(self, *args, **kwargs):
        try:
            if self.lock_key and self.lock is None:
                logger.warning("beat: taking the schedule lock")
                acquire_distributed_beat_lock(sender=SimpleNamespace(scheduler=self))
            return super().tick(*args, **kwargs)
        except LockError:
            logger.warning(
                "beat: lost the schedule lock (Redis was away longer than %ss); taking it again", self.lock_timeout
            )
            self.lock = None
            return 0.0
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            logger.warning("beat: Redis unavailable (%s); trying again in %ss", exc, RETRY_SECONDS)
            return RETRY_SECONDS
