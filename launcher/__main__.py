"""`make run`: the whole service in the foreground (`python -m launcher [--verbose]`).

Locks FT_DATA_DIR, picks a Redis (FT_REDIS_URL, else an embedded redis-server with its
data under FT_DATA_DIR), makes sure a JWT secret and Flower credentials exist, then runs
and supervises the API, one Celery worker, Celery beat and Flower: a child that dies is
restarted; Ctrl-C / SIGTERM stops them all.
"""

import sys

from launcher.run import main

raise SystemExit(main(sys.argv[1:]))
