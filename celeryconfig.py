"""Celery configuration, derived from the one Settings object (env prefix FT_).

Reliability: a task is acknowledged only after it finished (acks_late), is given back
when its worker dies (reject_on_worker_lost), and a worker takes one task at a time
(prefetch 1). The Redis transport redelivers an unacknowledged task after
`visibility_timeout`, which is longer than any task may run (task_time_limit), so a
running task is never delivered twice while it is still alive. Every task is idempotent.
"""

from __future__ import annotations

from core.config import Settings

_settings = Settings()

broker_url = _settings.redis_url
result_backend = _settings.redis_url
broker_connection_retry_on_startup = True
broker_transport_options = {
    "visibility_timeout": _settings.task_visibility_timeout,
    # Redelivery of unacked tasks after a crash happens at most this often (seconds).
    "unacked_restore_throttle": 10,
}
result_backend_transport_options = {"retry_policy": {"timeout": 5.0}}
result_expires = 86400

task_acks_late = True
task_reject_on_worker_lost = True
task_track_started = True
task_time_limit = _settings.task_visibility_timeout - 600
task_soft_time_limit = _settings.task_visibility_timeout - 900
worker_prefetch_multiplier = 1
worker_send_task_events = True
task_send_sent_event = True

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True

# Periodic jobs. RedBeat keeps the schedule in Redis and holds a lock so that only one
# beat process schedules at a time; each task also takes its own Redis lock while it runs.
beat_scheduler = "redbeat.RedBeatScheduler"
redbeat_redis_url = _settings.redis_url
redbeat_key_prefix = "ft:redbeat"
redbeat_lock_timeout = 5 * 60
beat_max_loop_interval = 5
beat_schedule = {
    "cleanup": {"task": "uploads.cleanup", "schedule": float(_settings.cleanup_interval)},
    "persist": {"task": "uploads.persist", "schedule": float(_settings.persist_interval)},
}
