"""The web page (GET /) and the docs (GET /docs) in a real browser: Debian's Chromium driven by
Playwright, against the real stack. Every request the browser makes is recorded, and none may
leave the test server: the page and the docs work with no network but ours.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.faults import claims_key, stack_redis
from tests.support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    bearer,
    login,
    new_id,
    require_tool,
    send_chunk,
    wait_for_state,
    wait_until,
)
from tests.tus_support import offset, upload_id

TIMEOUT_MS = 60_000

require_tool("chromium", module_level=True)  # Debian's; .ci/run installs it (a failure in CI, else a skip)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Visit:
    """A fresh browser context on the stack: records every request and every console error."""

    def __init__(self, browser, stack, tmp_path: Path) -> None:
        self.origin = urlsplit(stack.url).netloc
        self.context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
        self.context.set_default_timeout(TIMEOUT_MS)
        self.requests: list[str] = []
        self.problems: list[str] = []
        self.context.on("request", lambda request: self.requests.append(request.url))
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.problems.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.problems.append(str(exc)))
        self.tmp_path = tmp_path

    def foreign_requests(self) -> list[str]:
        return [
            url
            for url in self.requests
            if not url.startswith(("data:", "blob:")) and urlsplit(url).netloc != self.origin
        ]

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visit(browser, stack, tmp_path):
    opened: list[Visit] = []

    def make() -> Visit:
        opened.append(Visit(browser, stack, tmp_path))
        return opened[-1]

    yield make
    for v in opened:
        v.close()


def sign_in(page, url: str, name: str, password: str) -> None:
    page.goto(url + "/")
    page.get_by_label("Username").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def file_row(page, file_id: str):
    return page.locator(f'tr[data-file-id="{file_id}"]')


def upload_complete(client, stack, token: str, data: bytes, name: str) -> str:
    file_id = new_id("web")
    r = send_chunk(client, stack.url, token, file_id, data, 0, len(data) - 1, X_File_Name=name)
    assert r.status_code == 200, r.text
    assert wait_for_state(client, stack.url, token, file_id)["state"] == "complete"
    return file_id


def test_sign_in_list_download_delete_reload_and_sign_out(stack, client, visit):
    name, password = stack.add_user()
    token = login(stack.url, name, password)
    first, second = os.urandom(700_000), os.urandom(123_456)
    first_id = upload_complete(client, stack, token, first, "holiday%20photos.zip")
    second_id = upload_complete(client, stack, token, second, "notes.txt")
    partial_id = new_id("web-partial")
    assert (
        send_chunk(client, stack.url, token, partial_id, b"xy" * 5000, 0, 4999, X_File_Name="draft.iso").status_code
        == 200
    )

    v = visit()
    page = v.page
    sign_in(page, stack.url, name, password)
    page.get_by_role("button", name="Sign out").wait_for()
    for file_id in (first_id, second_id):
        file_row(page, file_id).get_by_text("complete").wait_for()
    assert "holiday photos.zip" in file_row(page, first_id).inner_text()
    assert "uploading" in file_row(page, partial_id).inner_text()
    assert file_row(page, partial_id).get_by_role("link", name="Download").count() == 0
    # The table follows the server by itself: the rest of the draft arrives, a worker
    # assembles it, and its row turns complete with a Download link, no click needed.
    assert send_chunk(client, stack.url, token, partial_id, b"xy" * 5000, 5000, 9999).status_code == 200
    file_row(page, partial_id).get_by_text("complete").wait_for()
    file_row(page, partial_id).get_by_role("link", name="Download").wait_for()
    ids = page.locator("#files-body tr").evaluate_all("rows => rows.map(r => r.dataset.fileId)")
    assert ids == [partial_id, second_id, first_id]  # newest first

    # The token lives in sessionStorage and never in a URL.
    stored = page.evaluate("() => sessionStorage.getItem('ft.token')")
    assert stored and stored.count(".") == 2
    page.screenshot(path=str(v.tmp_path / "files.png"), full_page=True)

    # Download: a signed link, a plain browser download, no Authorization header.
    with page.expect_download() as info:
        file_row(page, first_id).get_by_role("link", name="Download").click()
    download = info.value
    assert download.suggested_filename == "holiday photos.zip"
    assert hashlib.sha256(Path(download.path()).read_bytes()).digest() == hashlib.sha256(first).digest()
    assert all(stored not in url for url in v.requests)

    # Delete, after confirming in the dialog; cancelling first keeps the file.
    file_row(page, second_id).get_by_role("button", name="Delete").click()
    dialog = page.get_by_role("dialog")
    assert "notes.txt" in dialog.inner_text()
    dialog.get_by_role("button", name="Cancel").click()
    assert file_row(page, second_id).count() == 1
    file_row(page, second_id).get_by_role("button", name="Delete").click()
    dialog.get_by_role("button", name="Delete").click()
    file_row(page, second_id).wait_for(state="detached")
    assert client.get(f"{stack.url}/status/{second_id}", headers=bearer(token)).status_code == 404

    # A reload keeps the session (same tab) and shows the list as the server has it.
    page.reload()
    file_row(page, first_id).get_by_text("complete").wait_for()
    assert file_row(page, second_id).count() == 0

    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Sign in").wait_for()
    assert page.evaluate("() => sessionStorage.getItem('ft.token')") is None
    assert page.locator("#files-body tr").count() == 0

    assert v.foreign_requests() == []
    assert v.problems == []


def test_a_wrong_password_shows_an_error_on_the_page(stack, visit):
    name, _ = stack.add_user()
    v = visit()
    sign_in(v.page, stack.url, name, "not the password")
    alert = v.page.get_by_role("alert")
    alert.wait_for()
    assert "Wrong username or password" in alert.inner_text()
    assert v.page.get_by_role("button", name="Sign out").is_hidden()
    assert v.page.evaluate("() => sessionStorage.getItem('ft.token')") is None
    assert v.foreign_requests() == []
    # The failed login is the only error the browser reports (its console logs the 401).
    assert all("401" in p for p in v.problems), v.problems


def test_an_admin_sees_everybodys_files_with_owners(stack, client, visit):
    user, user_password = stack.add_user()
    file_id = upload_complete(client, stack, login(stack.url, user, user_password), b"theirs", "theirs.txt")
    admin, admin_password = stack.add_user("admin")
    v = visit()
    page = v.page
    sign_in(page, stack.url, admin, admin_password)
    page.get_by_role("button", name="Run cleanup").wait_for()
    page.get_by_label("All users").check()
    row = file_row(page, file_id)
    row.wait_for()
    assert user in row.inner_text()
    assert page.get_by_role("columnheader", name="Owner").is_visible()
    page.get_by_role("button", name="Run cleanup").click()
    page.get_by_text("Cleanup removed").wait_for()
    assert v.foreign_requests() == []
    assert v.problems == []


def test_the_docs_load_offline_and_explain_the_chunk_header(stack, visit):
    v = visit()
    page = v.page
    page.goto(stack.url + "/docs")
    page.get_by_text("POST /upload/{file_id}", exact=False).first.wait_for()
    page.locator(".opblock-summary-path", has_text="/upload/{file_id}").first.click()
    page.get_by_text("12-byte", exact=False).first.wait_for()
    # The Authorize dialog asks only for a user name and a password.
    page.get_by_role("button", name="Authorize").first.click()
    page.locator(".auth-container input[type=password]").first.wait_for()
    assert page.locator("label", has_text="client_id").is_hidden()
    assert page.locator("label", has_text="client_secret").is_hidden()
    page.screenshot(path=str(v.tmp_path / "docs.png"), full_page=False)
    assert v.foreign_requests() == []
    assert v.problems == []


def test_uppy_uploads_several_files_through_tus(stack, client, visit):
    name, password = stack.add_user()
    token = login(stack.url, name, password)
    files = {"alpha.bin": os.urandom(3 * 1024 * 1024 + 17), "beta.txt": b"hello from the browser\n" * 999}
    paths = []
    v = visit()
    for file_name, data in files.items():
        path = v.tmp_path / file_name
        path.write_bytes(data)
        paths.append(str(path))
    page = v.page
    sign_in(page, stack.url, name, password)
    page.get_by_role("button", name="Sign out").wait_for()
    page.locator(".uppy-Dashboard-input").first.set_input_files(paths)
    page.get_by_role("button", name="Upload 2 files").click()

    def listed() -> dict:
        items = client.get(f"{stack.url}/files", headers=bearer(token)).json()["items"]
        return {i["file_name"]: i for i in items}

    for file_name in files:
        page.locator("#files-body tr", has_text=file_name).get_by_text("complete").wait_for(timeout=120_000)
    by_name = listed()
    for file_name, data in files.items():
        item = by_name[file_name]
        assert item["state"] == "complete" and item["sha256"] == hashlib.sha256(data).hexdigest()
        with page.expect_download() as info:
            file_row(page, item["file_id"]).get_by_role("link", name="Download").click()
        assert Path(info.value.path()).read_bytes() == data
    page.screenshot(path=str(v.tmp_path / "uppy.png"), full_page=True)
    assert v.foreign_requests() == []


def test_page_and_docs_send_strict_headers(stack):
    for path in ("/", "/docs", "/static/app.js", "/static/vendor/uppy.min.js", "/openapi.json"):
        r = httpx.get(stack.url + path)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        script_src = next(d for d in csp.split(";") if d.strip().startswith("script-src"))
        assert "'unsafe-inline'" not in script_src and "'unsafe-eval'" not in script_src
        assert "frame-ancestors 'none'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
    assert httpx.get(stack.url + "/redoc").status_code == 404


# --- pause, resume, and resume after a reload ---------------------------------------------------
MiB = 1024 * 1024
BIG = 40 * MiB  # over Golden Retriever's 10 MiB: after a reload the user picks the file again
THROTTLE = 5 * MiB  # bytes a second the browser may send: the one PATCH takes ~8 s, and the server
# records it every FT_TUS_COMMIT_BYTES (8 MiB), so its offset moves a few times on the way


class TusTraffic:
    """The browser's tus requests: the uploads it creates, and where each PATCH starts."""

    def __init__(self, v: Visit) -> None:
        self.page = v.page
        self.created: list[str] = []
        self.patch_offsets: list[int] = []
        v.context.on("request", self._sent)
        v.context.on("response", self._answered)

    def _sent(self, request) -> None:
        if request.method == "PATCH" and urlsplit(request.url).path.startswith("/files/"):
            self.patch_offsets.append(int(request.headers["upload-offset"]))

    def _answered(self, response) -> None:
        if response.request.method == "POST" and urlsplit(response.url).path == "/files/" and response.status == 201:
            self.created.append(response.headers["location"])

    def wait(self, predicate, what: str, timeout: float = 60):
        """wait_until, letting Playwright deliver the browser's events between polls."""

        def pumped():
            self.page.evaluate("0")
            return predicate()

        return wait_until(pumped, timeout=timeout, what=what)


def throttle(v: Visit, bytes_per_second: int) -> None:
    """DevTools network emulation: the browser sends at most `bytes_per_second` (survives reloads)."""
    cdp = v.context.new_cdp_session(v.page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": bytes_per_second},
    )


def start_upload(stack, visit, name: str, size: int = BIG, bytes_per_second: int = THROTTLE, v: Visit | None = None):
    """A user signs in and Uppy starts sending one file of `size` random bytes, throttled."""
    user, password = stack.add_user()
    token = login(stack.url, user, password)
    v = v or visit()
    data = os.urandom(size)
    path = v.tmp_path / name
    path.write_bytes(data)
    traffic = TusTraffic(v)
    throttle(v, bytes_per_second)
    sign_in(v.page, stack.url, user, password)
    v.page.get_by_role("button", name="Sign out").wait_for()
    v.page.locator(".uppy-Dashboard-input").first.set_input_files(str(path))
    v.page.get_by_role("button", name="Upload 1 file").click()
    traffic.wait(lambda: traffic.created, "the browser to create the tus upload")
    return v, token, data, path, traffic, (user, password)


def settled_offset(stack, client, token: str, url: str) -> int:
    """The server's offset once no PATCH is being written (a cut one records what arrived)."""
    wait_until(
        lambda: stack_redis(stack).hlen(claims_key(upload_id(url))) == 0,
        timeout=30,
        what="the cut PATCH to end on the server",
    )
    return offset(client, url, token)


def check_uploaded(stack, client, token: str, url: str, data: bytes, name: str) -> None:
    item = wait_for_state(client, stack.url, token, upload_id(url), timeout=120)
    assert item["state"] == "complete", item
    items = client.get(f"{stack.url}/files", headers=bearer(token)).json()["items"]
    assert [(i["file_id"], i["file_name"], i["sha256"]) for i in items] == [
        (upload_id(url), name, hashlib.sha256(data).hexdigest())
    ]


def test_uppy_pauses_and_resumes_from_the_servers_offset(stack, client, visit):
    v, token, data, _path, traffic, _ = start_upload(stack, visit, "paused.bin")
    url = traffic.created[0]
    traffic.wait(lambda: offset(client, url, token) > 0, "the server to record part of the PATCH")
    v.page.screenshot(path=str(v.tmp_path / "uploading.png"), full_page=True)
    v.page.get_by_role("button", name="Pause").first.click()
    paused_at = settled_offset(stack, client, token, url)
    assert 0 < paused_at < len(data)
    v.page.screenshot(path=str(v.tmp_path / "paused.png"), full_page=True)
    # Paused: while the page polls the files list twice (every 1.5 s), no byte arrives.
    for _ in range(2):
        v.page.wait_for_event("requestfinished", lambda r: urlsplit(r.url).path == "/files")
    assert offset(client, url, token) == paused_at
    assert stack_redis(stack).hlen(claims_key(upload_id(url))) == 0
    bar = file_row(v.page, upload_id(url)).locator("progress")  # the files table shows the server's
    assert bar.get_attribute("value") == str(100 * paused_at // len(data))
    v.page.get_by_role("button", name="Resume").first.click()
    traffic.wait(lambda: v.page.get_by_text("1 file uploaded").count(), "Uppy to finish", timeout=120)
    check_uploaded(stack, client, token, url, data, "paused.bin")
    assert len(traffic.created) == 1
    assert traffic.patch_offsets == [0, paused_at]  # the second PATCH starts where the server stopped
    assert v.foreign_requests() == []
    assert v.problems == []


def test_uppy_resumes_after_a_reload_once_the_file_is_picked_again(stack, client, visit):
    v, token, data, path, traffic, _ = start_upload(stack, visit, "reloaded.bin")
    page = v.page
    url = traffic.created[0]
    traffic.wait(lambda: offset(client, url, token) > 0, "the server to record part of the PATCH")
    page.screenshot(path=str(v.tmp_path / "before-reload.png"), full_page=True)
    page.reload()
    kept = settled_offset(stack, client, token, url)
    assert 0 < kept < len(data)
    page.get_by_role("button", name="Sign out").wait_for()  # still signed in (sessionStorage)
    # Golden Retriever remembers the selection, but not a file this big (over 10 MiB): the
    # user picks it again, and Uppy matches it to the interrupted upload.
    page.get_by_text("Please re-select it and resume the upload").wait_for()
    page.screenshot(path=str(v.tmp_path / "after-reload.png"), full_page=True)
    page.get_by_role("button", name="Re-select").click()
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="browse files").click()
    chooser.value.set_files(str(path))
    traffic.wait(lambda: page.get_by_text("1 file uploaded").count(), "Uppy to finish", timeout=120)
    check_uploaded(stack, client, token, url, data, "reloaded.bin")
    assert len(traffic.created) == 1  # no new upload after the reload
    assert traffic.patch_offsets == [0, kept]  # the bytes the server kept were not sent again
    assert v.foreign_requests() == []
    assert v.problems == []


def test_a_small_file_resumes_after_a_reload_by_itself(stack, client, visit):
    """Up to 10 MiB Golden Retriever keeps the file itself (IndexedDB): nothing to pick again."""
    v, token, data, _path, traffic, _ = start_upload(stack, visit, "small.bin", 6 * MiB, MiB // 2)
    page = v.page
    url = traffic.created[0]
    # The server records this PATCH only when it ends: wait on the browser's own progress.
    page.wait_for_function(
        "() => Number(document.querySelector('.uppy-StatusBar-progress')?.getAttribute('aria-valuenow')) >= 30"
    )
    page.reload()
    # No click: Uppy carries on by itself, from the server's offset (HEAD) of the same upload.
    traffic.wait(lambda: page.get_by_text("1 file uploaded").count(), "Uppy to finish", timeout=120)
    check_uploaded(stack, client, token, url, data, "small.bin")
    assert len(traffic.created) == 1
    assert traffic.patch_offsets[0] == 0 and 0 < traffic.patch_offsets[-1] < len(data)
    assert v.foreign_requests() == []
    assert v.problems == []


def test_another_user_of_the_browser_gets_nothing_restored(stack, client, visit):
    """Golden Retriever keeps its state in localStorage, which every tab of the browser shares:
    a second user signing in, in another tab, while the first one uploads, gets none of it."""
    v, token, data, _path, traffic, _ = start_upload(stack, visit, "left.bin", 6 * MiB, MiB // 2)
    url = traffic.created[0]
    v.page.wait_for_function(
        "() => Number(document.querySelector('.uppy-StatusBar-progress')?.getAttribute('aria-valuenow')) >= 10"
    )
    other, other_password = stack.add_user()
    page = v.context.new_page()  # same browser profile, another tab
    sign_in(page, stack.url, other, other_password)
    own = v.tmp_path / "own.txt"
    own.write_bytes(b"mine\n")
    page.locator(".uppy-Dashboard-input").first.set_input_files(str(own))
    page.get_by_role("button", name="Upload 1 file").click()
    page.get_by_text("1 file uploaded").wait_for()
    assert page.get_by_text("Session restored").count() == 0
    assert "left.bin" not in page.locator("#uploader").inner_text()
    items = client.get(f"{stack.url}/files", headers=bearer(login(stack.url, other, other_password))).json()["items"]
    assert [i["file_name"] for i in items] == ["own.txt"]
    v.page.get_by_text("1 file uploaded").wait_for(timeout=120_000)  # the first user's carries on
    check_uploaded(stack, client, token, url, data, "left.bin")
    assert len(traffic.created) == 2  # left.bin once, own.txt once
    assert v.foreign_requests() == []
    assert v.problems == []
