"""Celery configuration: `build(settings)` returns the options for one Settings object.

Nothing here reads the environment: the caller (workers/celery_app.py `create_app`, core/jobs.py
`celery_client`) builds Settings once at start and passes it in.

Reliability: a task is acknowledged only after it finished (acks_late), is given back
when its worker process dies (reject_on_worker_lost), and a worker takes one task at a
time (prefetch 1). The Redis transport redelivers an unacknowledged task after
`visibility_timeout`, which is longer than any task may run (task_time_limit), so a
live task is never delivered twice. Every task is idempotent. A worker that dies whole
(SIGKILL of its main process) is covered by the `persist` sweep, which re-enqueues
assemblies whose lease has lapsed, rather than by waiting for the visibility timeout.
"""

from __future__ import annotations

from core.config import Settings
from core.redis_url import SentinelTarget, is_sentinel_url, netloc, parse_sentinel_url

# Every key Celery writes (queues, unacked messages, bindings, task results) starts with this,
# as ours start with `ft:`, so that a Redis shared by choice holds nothing unprefixed of ours.
CELERY_KEY_PREFIX = "ft:celery:"
BEAT_LOOP_SECONDS = 2
# A beat renews its lock every loop; one that dies lets the next take over within this.
BEAT_LOCK_SECONDS = 10


SENTINEL_SOCKET_TIMEOUT = 5  # seconds: a sentinel answers at once or is down


def build(settings: Settings) -> dict:
    """Celery's options for these settings: `app.conf.update(build(settings))`."""
    config = _build(settings)
    if is_sentinel_url(settings.redis_url):
        _use_sentinel(config, parse_sentinel_url(settings.redis_url))
    return config


def _use_sentinel(config: dict, target: SentinelTarget) -> None:
    """FT_REDIS_URL's one Sentinel form (core/redis_url.py) as kombu, Celery's result backend and
    RedBeat each spell it: `;`-joined sentinel:// URLs plus the master name in transport options
    for the first two, a `redis-sentinel://` URL plus a list of sentinels in options for RedBeat."""
    sentinel_kwargs = {"socket_timeout": SENTINEL_SOCKET_TIMEOUT, "socket_connect_timeout": SENTINEL_SOCKET_TIMEOUT}
    if target.sentinel_password is not None:
        sentinel_kwargs["password"] = target.sentinel_password
    sentinel_options = {"master_name": target.master_name, "sentinel_kwargs": sentinel_kwargs}
    config["broker_url"] = config["result_backend"] = target.kombu_url()
    config["broker_transport_options"].update(sentinel_options)
    config["result_backend_transport_options"].update(sentinel_options)
    # RedBeat only checks the scheme, and prints the URL: no password in it.
    config["redbeat_redis_url"] = f"redis-sentinel://{netloc(*target.sentinels[0])}/{target.db}"
    config["redbeat_redis_options"].update(
        sentinels=list(target.sentinels),
        service_name=target.master_name,
        db=target.db,
        password=target.password,
        sentinel_kwargs=sentinel_kwargs,
        **({"username": target.username} if target.username else {}),
    )


def _build(settings: Settings) -> dict:
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        # Ride out a Redis that is restarting or stalled: retry the broker connection forever
        # (at start-up too) instead of exiting after Celery's default 100 attempts.
        "broker_connection_retry": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_transport_options": {
            "visibility_timeout": settings.task_visibility_timeout,
            # Restore unacked tasks of dead workers at most this often (seconds).
            "unacked_restore_throttle": 10,
            "global_keyprefix": CELERY_KEY_PREFIX,
        },
        "result_backend_transport_options": {"retry_policy": {"timeout": 5.0}, "global_keyprefix": CELERY_KEY_PREFIX},
        "result_expires": 86400,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # When the broker connection drops, running late-ack tasks cannot be acknowledged any
        # more and will be redelivered: cancel them rather than finish work that runs again
        # (Celery 6's default; set explicitly, which also ends its deprecation warning).
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_track_started": True,
        "task_time_limit": settings.task_visibility_timeout - 600,
        "task_soft_time_limit": settings.task_visibility_timeout - 900,
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        # Periodic jobs. RedBeat keeps the schedule in Redis and holds a lock so that only
        # one beat process schedules at a time; each task also takes its own Redis lock.
        "beat_scheduler": "workers.beat:SteadyRedBeatScheduler",
        "redbeat_redis_url": settings.redis_url,
        "redbeat_key_prefix": "ft:redbeat",
        "redbeat_lock_timeout": BEAT_LOCK_SECONDS,
        # RedBeat retries its own Redis calls (not the lock's) for ever on connection errors.
        "redbeat_redis_options": {"retry_period": -1, "socket_timeout": 5, "socket_connect_timeout": 5},
        "beat_max_loop_interval": BEAT_LOOP_SECONDS,
        "beat_schedule": {
            "cleanup": {"task": "uploads.cleanup", "schedule": float(settings.cleanup_interval)},
            "persist": {"task": "uploads.persist", "schedule": float(settings.persist_interval)},
        },
    }
