"""GET /files latency with many files for one user, and the web page's load size and time.

    .venv/bin/python -m bench.files_list [--files 100000] [--requests 200]

Runs its own stack (redis-server, API, worker; bench/stack.py). The index entries are made
fast, straight through the repository (the restore script: the same keys a real upload gets),
as complete files of the bench user. Then, over HTTP with a keep-alive connection:
  - the first page (limit 100), repeated;
  - a walk over every page with limit 1000 (each page fetched once, cursor to cursor);
  - an admin's everybody view (all=true) first page;
and, in Chromium (Playwright), the page's load: bytes transferred and time until the signed-in
files table shows. Prints a small report; nothing is asserted (figures, not tests).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402

from bench.stack import ADMIN, PASSWORD, OurStack  # noqa: E402
from core.state import UploadRepository  # noqa: E402
from core.users import UserStore  # noqa: E402

BATCH = 64  # concurrent restores (connections in the pool)


async def fill(redis_url: str, owner_id: str, count: int) -> float:
    """`count` complete files of `owner_id` in Redis, created a millisecond apart; seconds taken."""
    client = aioredis.Redis.from_url(redis_url)
    repo = UploadRepository(client)
    started = time.perf_counter()
    base = time.time() - count / 1000
    try:
        for first in range(0, count, BATCH):
            await asyncio.gather(
                *(
                    repo.restore(f"bench-{i:07d}", _complete_fields(owner_id, base + i / 1000, i), [])
                    for i in range(first, min(first + BATCH, count))
                )
            )
    finally:
        await client.aclose()
    return time.perf_counter() - started


def _complete_fields(owner_id: str, created: float, i: int) -> dict[str, str]:
    size = 1024 * (i % 977 + 1)
    return {
        "owner": owner_id,
        "total": str(size),
        "state": "complete",
        "received": str(size),
        "next": str(size),
        "name": f"file-{i}.bin",
        "sha256": f"{i:064x}",
        "created_at": repr(created),
        "updated_at": repr(created + 1),
        "completed_at": repr(created + 1),
        "provisional": "0",
    }


def timed_get(client, path: str, **params) -> tuple[float, dict]:
    started = time.perf_counter()
    response = client.get(path, params=params)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, response.json()


def summary(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[max(0, math.ceil(len(ms) * 0.95) - 1)]
    return (
        f"{name:<44} n={len(ms):<5} median {statistics.median(ms):7.2f} ms   p95 {p95:7.2f} ms   max {ms[-1]:7.2f} ms"
    )


def page_load(url: str) -> list[str]:
    """Bytes and time of the page in Chromium: cold load of the sign-in view, then signed in."""
    from playwright.sync_api import sync_playwright

    from tests.support import CHROMIUM, CHROMIUM_ARGS

    lines = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for path, ready, what in (
                ("/", "#files-body tr", "signed in, list shown"),
                ("/docs", ".opblock", "operations shown"),
            ):
                context = browser.new_context()
                page = context.new_page()
                sizes: list[int] = []
                page.on("requestfinished", lambda r, sizes=sizes: sizes.append(r.sizes()["responseBodySize"]))
                started = time.perf_counter()
                page.goto(url + path)
                if path == "/":
                    page.get_by_label("Username").fill(ADMIN)
                    page.get_by_label("Password").fill(PASSWORD)
                    page.get_by_role("button", name="Sign in").click()
                page.locator(ready).first.wait_for(timeout=60_000)
                elapsed = time.perf_counter() - started
                timing = page.evaluate("() => performance.getEntriesByType('navigation')[0].toJSON()")
                lines.append(
                    f"{path:<6} {len(sizes)} requests, {sum(sizes) / 1024:,.0f} KiB uncompressed; "
                    f"load event {timing['loadEventEnd']:.0f} ms; ready ({what}) {elapsed * 1000:.0f} ms"
                )
                context.close()
        finally:
            browser.close()
    return lines


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.files_list", description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ft-bench-list-") as tmp, OurStack(Path(tmp)) as stack:
        owner_id = UserStore(stack.data_dir / "users.sqlite3").get(ADMIN).owner_id
        fill_seconds = asyncio.run(fill(stack.redis_url, owner_id, args.files))
        client = stack.client
        timed_get(client, "/files")  # warm-up (and the index marker)
        first = [timed_get(client, "/files", limit=100)[0] for _ in range(args.requests)]
        full = [timed_get(client, "/files", limit=1000)[0] for _ in range(args.requests // 4)]
        everybody = [timed_get(client, "/files", limit=100, all="true")[0] for _ in range(args.requests)]
        walk, cursor, seen = [], None, 0
        while True:
            elapsed, body = timed_get(client, "/files", limit=1000, **({"cursor": cursor} if cursor else {}))
            walk.append(elapsed)
            seen += len(body["items"])
            cursor = body["next"]
            if cursor is None:
                break
        print(f"{args.files:,} files of one user in Redis (made in {fill_seconds:.1f} s through the repository)")
        print(summary("GET /files?limit=100 (first page)", first))
        print(summary("GET /files?limit=1000 (first page)", full))
        print(summary("GET /files?limit=100&all=true (admin)", everybody))
        print(summary(f"walk of all {seen:,} with limit=1000, per page", walk))
        print(f"{'walk total':<44} {sum(walk):.2f} s for {len(walk)} pages")
        for line in page_load(stack.url):
            print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
