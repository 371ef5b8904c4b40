"""core/jobs.py BackgroundSender: assemblies leave in the order asked, from a thread of their
own, each with the request id of the request that asked; a failed send is logged and the next
ones still go; close() sends what was asked before it stops."""

from __future__ import annotations

import logging
import threading

from core.jobs import BackgroundSender
from core.request_context import request_id


def test_sends_in_order_from_its_own_thread_with_the_asking_request_id():
    sent: list[tuple[str, str | None, str]] = []

    def send(file_id: str) -> None:
        sent.append((file_id, request_id.get(), threading.current_thread().name))

    sender = BackgroundSender(send)
    for index in range(50):
        token = request_id.set(f"req-{index}")
        try:
            sender.submit(f"file-{index}")
        finally:
            request_id.reset(token)
    sender.close()
    assert [s[0] for s in sent] == [f"file-{i}" for i in range(50)]
    assert [s[1] for s in sent] == [f"req-{i}" for i in range(50)]
    assert {s[2] for s in sent} == {"assembly-sender"}


def test_a_failed_send_is_logged_and_the_next_ones_still_go(caplog):
    sent: list[str] = []

    def send(file_id: str) -> None:
        if file_id == "bad":
            raise ConnectionError("broker down")
        sent.append(file_id)

    sender = BackgroundSender(send)
    with caplog.at_level(logging.WARNING, logger="ft.jobs"):
        for file_id in ("a", "bad", "b"):
            sender.submit(file_id)
        sender.close()
    assert sent == ["a", "b"]
    assert "assembly of bad not queued (broker down); the persist job will queue it" in caplog.text


def test_submit_does_not_wait_for_the_send():
    release = threading.Event()
    sent: list[str] = []

    def slow_send(file_id: str) -> None:
        release.wait(10)
        sent.append(file_id)

    sender = BackgroundSender(slow_send)
    sender.submit("a")
    sender.submit("b")  # returned at once, though the first send is still waiting
    assert sent == []
    release.set()
    sender.close()
    assert sent == ["a", "b"]
