"""core/jobs.py task_message: the assembly task as the workers read it (Celery's task protocol 2
in kombu's Redis envelope). tests/integration/test_assembly_queue.py holds it to what Celery
itself sends, and a real worker runs it."""

from __future__ import annotations

import base64
import json

from core.jobs import ASSEMBLE, EMBED, QUEUE, task_message
from core.request_context import TASK_HEADER


def decoded(raw: str) -> tuple[dict, list]:
    message = json.loads(raw)
    return message, json.loads(base64.b64decode(message["body"]))


def test_the_body_carries_the_arguments_and_the_headers_name_the_task():
    message, body = decoded(task_message(ASSEMBLE, ["file-1"], "task-1", origin="gen1@host"))
    assert body == [["file-1"], {}, EMBED]
    headers, properties = message["headers"], message["properties"]
    assert (headers["task"], headers["id"], headers["root_id"]) == (ASSEMBLE, "task-1", "task-1")
    assert (headers["argsrepr"], headers["origin"], headers["ignore_result"]) == ("['file-1']", "gen1@host", True)
    assert properties["correlation_id"] == "task-1"
    assert properties["delivery_info"] == {"exchange": "", "routing_key": QUEUE}
    assert (properties["body_encoding"], message["content-type"]) == ("base64", "application/json")


def test_the_request_id_goes_in_the_headers_only_when_there_is_one():
    with_id, _ = decoded(task_message(ASSEMBLE, ["f"], "t", origin="o", request="req-7"))
    without, _ = decoded(task_message(ASSEMBLE, ["f"], "t", origin="o"))
    assert with_id["headers"][TASK_HEADER] == "req-7"
    assert TASK_HEADER not in without["headers"]


def test_every_message_has_a_delivery_tag_of_its_own():
    """kombu's Redis transport keys its unacknowledged messages by delivery tag."""
    messages = [decoded(task_message(ASSEMBLE, ["f"], "t", origin="o"))[0] for _ in range(100)]
    assert len({m["properties"]["delivery_tag"] for m in messages}) == 100


def test_file_ids_of_every_allowed_shape_survive_the_round_trip():
    for file_id in ("a", "Z" * 128, "with.dots-and_underscores", "-9.x"):  # core/file_ids.py
        _, body = decoded(task_message(ASSEMBLE, [file_id], "t", origin="o"))
        assert body[0] == [file_id]
