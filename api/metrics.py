"""GET /metrics: Prometheus text format, for an admin token or FT_METRICS_TOKEN.

Counters and histograms of the API live in each API process (prometheus-client; with
FT_API_WORKERS > 1 in multiprocess mode, PROMETHEUS_MULTIPROC_DIR set by `python -m api`, and
summed over the processes at scrape time). What only Redis knows is read at scrape time: uploads
not complete and assembling, the Celery queue's depth, and the assembly durations that the
workers add there (workers/observability.py), so one scrape covers every worker on every node.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from redis.exceptions import RedisError

from api.deps import BearerToken, user_for_token
from api.errors import documented_errors
from core.errors import Forbidden
from core.jobs import queue_key
from core.state import OperatorSnapshot, operator_snapshot

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

REQUESTS = Counter(
    "ft_http_requests", "HTTP requests answered, by route template and status", ["method", "route", "status"]
)
LATENCY = Histogram(
    "ft_http_request_duration_seconds",
    "Time from request to the end of the answer",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
RECEIVED_BYTES = Counter("ft_received_bytes", "Request body bytes received (chunks, tus PATCHes, ...)", ["route"])
SERVED_BYTES = Counter("ft_served_bytes", "Response body bytes sent (downloads, ...)", ["route"])
CHUNKS = Counter("ft_chunks", "Chunks of POST /upload by result: stored, retransmit, or the error code", ["result"])
LOGIN_FAILURES = Counter("ft_login_failures", "Refused logins: invalid_credentials or too_many_attempts", ["reason"])

router = APIRouter(tags=["admin"])  # admin-only, like POST /cleanup


def count_chunk(result: str) -> None:
    """UploadService's `on_chunk` (api/main.py): the one place chunks are counted."""
    CHUNKS.labels(result).inc()


async def metrics_reader(request: Request, token: BearerToken) -> None:
    """An admin's bearer token, or FT_METRICS_TOKEN (a scraper's, which does not expire)."""
    secret = request.app.state.settings.metrics_token
    if secret is not None and token and hmac.compare_digest(token.strip().encode(), secret.get_secret_value().encode()):
        return
    user = await user_for_token(request, token)
    if not user.is_admin:
        raise Forbidden("metrics are for admins")


class _Snapshot:
    """A collector of what Redis said at this scrape."""

    def __init__(self, snapshot: OperatorSnapshot | None) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        yield GaugeMetricFamily("ft_redis_up", "1 when Redis answered this scrape", value=int(s is not None))
        if s is None:
            return
        yield GaugeMetricFamily(
            "ft_uploads_incomplete",
            "Uploads not complete (uploading, assembling or failed)",
            value=s.incomplete_uploads,
        )
        yield GaugeMetricFamily(
            "ft_uploads_assembling", "Uploads waiting for or in assembly", value=s.assembling_uploads
        )
        yield GaugeMetricFamily("ft_queue_depth", "Celery tasks waiting for a worker", value=s.queue_depth)
        assembly = HistogramMetricFamily(
            "ft_assembly_duration_seconds",
            "Assembly (verify and publish) time in the workers, by outcome",
            labels=["outcome"],
        )
        for histogram in s.assembly:
            assembly.add_metric([histogram.outcome], histogram.buckets, histogram.total_seconds)
        yield assembly


def _process_metrics() -> bytes:
    """This process's counters, or every API process's when there are several."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path)
    return generate_latest(registry)


@router.get(
    "/metrics",
    summary="Metrics for Prometheus",
    description="Prometheus text format (README: Metrics and logs). Needs an admin's bearer token or "
    "`FT_METRICS_TOKEN`; a user's token gets 403.",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
        **documented_errors({403: "forbidden: not an admin"}),
    },
    dependencies=[Depends(metrics_reader)],
)
async def metrics(request: Request) -> Response:
    try:
        snapshot = await operator_snapshot(request.app.state.redis, queue_key())
    except RedisError:  # the API's own counters still matter most while Redis is away
        snapshot = None
    shared = CollectorRegistry(auto_describe=False)
    shared.register(_Snapshot(snapshot))
    return Response(_process_metrics() + generate_latest(shared), media_type=CONTENT_TYPE_LATEST)
