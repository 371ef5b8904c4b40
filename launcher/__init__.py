"""`make run`: the whole service in the foreground (`python -m launcher`).

Picks a Redis (FT_REDIS_URL, else the default one, else an embedded redis-server with its
data under FT_DATA_DIR), makes sure a JWT secret and Flower credentials exist, then runs
the API, one Celery worker, Celery beat and Flower as children, and stops them all on
Ctrl-C / SIGTERM or when one of them dies.
"""
