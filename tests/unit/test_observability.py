"""Request ids, log formats, the assembly histogram kept in Redis, the multiprocess metrics dir."""

from __future__ import annotations

import json
import logging
import os

import fakeredis
from prometheus_client import CollectorRegistry, generate_latest

from api.__main__ import prepare_multiprocess_metrics
from api.metrics import _Snapshot
from core.config import Settings
from core.logs import JsonFormatter, TextFormatter, logging_config
from core.request_context import request_id, sane_request_id
from core.state import ASSEMBLY_METRICS_KEY, assembly_histograms, record_assembly
from tests.support import JWT_SECRET


def test_only_short_token_like_request_ids_are_taken_from_clients():
    assert sane_request_id("trace-0f3a.b:c/1") == "trace-0f3a.b:c/1"
    for bad in (None, "", "a b", 'a"b', "x\ny", "é", "a" * 129):
        assert sane_request_id(bad) is None


def _record(message: str, **fields) -> logging.LogRecord:
    record = logging.LogRecord("ft.request", logging.INFO, __file__, 1, message, (), None)
    record.ft = fields
    return record


def test_json_lines_carry_the_fields_and_the_current_request_id():
    token = request_id.set("rid-1")
    try:
        line = json.loads(JsonFormatter().format(_record("GET /x 200", route="/x", status=200)))
    finally:
        request_id.reset(token)
    assert line["message"] == "GET /x 200" and line["route"] == "/x" and line["status"] == 200
    assert line["request_id"] == "rid-1" and line["level"] == "INFO" and line["ts"].endswith("Z")


def test_text_lines_quote_what_a_client_wrote():
    text = TextFormatter().format(_record("POST /upload/x 400", file_id="a b\nc", route="/upload/{file_id}"))
    assert "\n" not in text
    assert 'file_id="a b\\nc"' in text and "route=/upload/{file_id}" in text


def test_the_request_log_is_on_whatever_the_level():
    config = logging_config("json", "warning", request_log=True)
    assert config["loggers"]["ft.request"]["level"] == "INFO" and config["root"]["level"] == "WARNING"
    assert config["formatters"]["ft"]["()"] == "core.logs.JsonFormatter"
    assert logging_config("text", "info", request_log=False)["loggers"]["ft.request"]["level"] == "CRITICAL"


def test_assembly_durations_add_up_into_cumulative_buckets():
    redis = fakeredis.FakeRedis()
    for seconds, outcome in ((0.05, "complete"), (3.0, "complete"), (7200.0, "complete"), (0.2, "failed")):
        record_assembly(redis, seconds, outcome)
    complete, failed = assembly_histograms(redis.hgetall(ASSEMBLY_METRICS_KEY))
    assert (complete.outcome, failed.outcome) == ("complete", "failed")
    buckets = dict(complete.buckets)
    assert (buckets["0.1"], buckets["2.5"], buckets["5.0"], buckets["3600.0"], buckets["+Inf"]) == (1, 1, 2, 2, 3)
    assert complete.total_seconds == 7203.05 and dict(failed.buckets)["0.5"] == 1


def test_a_scrape_while_redis_is_away_says_so():
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(None))
    assert b"ft_redis_up 0.0" in generate_latest(registry)


def test_several_api_processes_get_an_emptied_metrics_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "unset at the end")  # restored (to absent) after the test
    settings = Settings(data_dir=tmp_path, jwt_secret=JWT_SECRET, api_workers=2)
    settings.metrics_dir.mkdir(parents=True)
    (settings.metrics_dir / "counter_123.db").write_bytes(b"old run")
    prepare_multiprocess_metrics(settings)
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(settings.metrics_dir)
    assert list(settings.metrics_dir.iterdir()) == []
    prepare_multiprocess_metrics(Settings(data_dir=tmp_path, jwt_secret=JWT_SECRET, api_workers=1))
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
