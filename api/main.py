"""The FastAPI application, built per process by `python -m api` (uvicorn factory
`api.main:create_served_app`, which is `create_app` and a frozen heap)."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from api import metrics
from api.admission import Admission, AdmissionMiddleware
from api.errors import install_error_handlers
from api.fast_lane import FastLane, Lane
from api.observability import RequestObserver
from api.routers import admin, auth, downloads, files, health, tus, uploads, web
from api.security_headers import SECURITY_HEADERS
from core.config import Settings
from core.jobs import Jobs
from core.links import DownloadLinks
from core.login_throttle import LoginThrottle
from core.redis_clients import async_redis
from core.redis_mux import SharedConnection
from core.state import UploadRepository
from core.storage import ByteStore, open_store
from core.tus import TusService
from core.uploads import UploadService
from core.users import RecentUsers, UserStore

log = logging.getLogger("ft.api")

# What waits for an admission slot: a chunk, a tus PATCH, a tus creation (it may carry bytes).
ADMITTED = (("POST", r"/upload/[^/]+"), ("PATCH", r"/files/[^/]+"), ("POST", r"/files/?"))

API_DESCRIPTION = """
Moves large files between devices and this server over unreliable networks without losing or
corrupting a byte. People use the web page at [`/`](/); programs use these endpoints.

**Sign in:** `POST /token` with a user name and password (the **Authorize** button does it
for you), then send `Authorization: Bearer <access_token>` on every other request.

**Upload** in chunks with `POST /upload/{file_id}` (each body starts with a 12-byte chunk
header, explained there with an example), in any order, in parallel, resuming after any
interruption: `GET /status/{file_id}` lists the `missing_ranges`. Or use any tus client
(Uppy, tus-js-client, tuspy) on `/files/`. When the last byte arrives a worker verifies every
chunk and the SHA-256, then the file is `complete`.

**Find and fetch:** `GET /files` lists your files, newest first; `GET /download/{file_id}`
serves whole files and byte ranges; `POST /files/{file_id}/link` makes a short-lived link that
needs no header (for browsers).

**Errors** are JSON: `{"code": "snake_case", "detail": "human text", ...}`.
"""


def bootstrap_admin(settings: Settings, users: UserStore) -> None:
    """Create the admin named by FT_ADMIN_USERNAME, or reset its password.

    Left alone when it already is an admin with that password: a reset revokes its tokens,
    which every restart (or every process of a multi-process API) would otherwise do."""
    if settings.admin_username and settings.admin_password:
        name, password = settings.admin_username, settings.admin_password.get_secret_value()
        current = users.authenticate(name, password)
        if current is None or not current.is_admin:
            users.set(name, password, role="admin")
        log.info("admin %r is ready", name)


def create_app(
    settings: Settings | None = None,
    *,
    make_redis: Callable[[Settings], aioredis.Redis] = async_redis,
    make_jobs: Callable[[Settings], Jobs] = Jobs,
    make_store: Callable[[Settings], ByteStore] = open_store,
    fast_lane: bool = True,
) -> FastAPI:
    """The app for `settings` (the environment's when None). `make_redis` and `make_jobs` build
    the Redis client and the task sender at start-up, `make_store` the byte store; the
    in-process tests (tests/fast) hand in a fakeredis client, a stand-in that runs the assembly
    in the test process, and (tests/fast/test_store_seam.py) a store without local files.
    `fast_lane=False` serves the chunk and tus PATCH operations through their FastAPI routes
    only (api/fast_lane.py; tests/fast/test_fast_lane.py compares the two)."""
    settings = settings or Settings()
    settings.jwt_key()  # refuse to start with a missing or short secret
    settings.ensure_dirs()
    users = UserStore(settings.users_db)
    bootstrap_admin(settings, users)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.redis = make_redis(settings)  # one bounded pool per process (core/redis_clients.py)
        shared = SharedConnection(app.state.redis)  # and one connection of it for every chunk's scripts
        app.state.login_throttle = LoginThrottle(settings, app.state.redis)
        app.state.jobs = make_jobs(settings)
        app.state.uploads = UploadService(
            settings,
            UploadRepository(app.state.redis, shared),
            make_store(settings),
            app.state.jobs.assemblies(shared.execute).push,  # one LPUSH on the shared connection
            on_chunk=metrics.count_chunk,
        )
        app.state.tus = TusService(app.state.uploads)
        app.state.links = DownloadLinks(app.state.uploads, settings.jwt_key(), settings.link_ttl)
        try:
            yield
        finally:
            await app.state.uploads.settle()
            await shared.aclose()
            await app.state.redis.aclose()

    app = FastAPI(
        title="File Transfer API",
        version="1.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        # Served by api/routers/web.py from local files (no CDN, no inline script); no ReDoc.
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.state.settings = settings
    app.state.users = users
    app.state.recent_users = RecentUsers(users, settings.user_cache_ttl)
    install_error_handlers(app)
    app.include_router(auth.router)
    app.include_router(health.router)
    app.include_router(uploads.router)
    app.include_router(downloads.router)
    app.include_router(admin.router)
    app.include_router(metrics.router)
    app.include_router(tus.router)
    if fast_lane:  # innermost of ours: TusMiddleware, CORS and the observer wrap it as they wrap the routes
        lanes = (Lane("POST", "/upload/", uploads.answer_chunk), Lane("PATCH", "/files/", tus.answer_append))
        app.add_middleware(FastLane, lanes=lanes)
    if settings.chunk_slots:  # the requests that carry upload bytes, in arrival order (api/admission.py)
        admission = Admission(settings.chunk_slots, settings.chunk_slot_lease)
        app.add_middleware(AdmissionMiddleware, admission=admission, routes=ADMITTED)
    app.add_middleware(tus.TusMiddleware)
    if settings.cors_origin_list:
        # Browsers on these origins may call the API (tus-js-client, Uppy); bearer tokens, no cookies.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=[*tus.TUS_HEADERS, "X-Request-ID"],
            max_age=600,
        )
    app.include_router(files.router)
    app.include_router(web.router)
    app.mount("/static", web.static_files(), name="static")
    # Outermost: sees every answer of the app, and gives each the security headers.
    app.add_middleware(RequestObserver, router=app, headers=SECURITY_HEADERS)
    return app


def create_served_app() -> FastAPI:
    """The factory `python -m api` gives uvicorn: `create_app`, then `gc.freeze()`. What exists
    by then (modules, routes, models: most of the process's objects) lives as long as the
    process; frozen, the cyclic collector no longer walks it on every full collection, which
    cost ~6 % of the API's instructions per chunk request (bench/chunk_instr.py) and a pause
    of every request in flight each time. Not in `create_app`: tests build many apps in one
    process, and a frozen app is never collected."""
    app = create_app()
    gc.freeze()
    return app
