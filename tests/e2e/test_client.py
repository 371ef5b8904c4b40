"""The client (CONTRACT 8) against the real stack: the library, and `python -m client` as a process.

A small TCP proxy (tests/tcp_proxy.py) sits between the client and the API where a test needs
to slow the transfer down (to kill the client mid-way), count the bytes the client really put
on the wire, or cut connections every ~1 MiB.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from client import ApiError, Client, LocalFileChanged
from client.progress import Reporter
from tests.support import PYTHON, ROOT, Proc, bearer, login, new_id, send_chunk, wait_for_state, wait_until
from tests.tcp_proxy import TcpProxy

MiB = 1024 * 1024
KiB = 1024


# --- helpers -----------------------------------------------------------------------------
@pytest.fixture
def user(stack):
    return stack.add_user()


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def env(stack, user, cache_dir) -> dict[str, str]:
    name, password = user
    env = {k: v for k, v in os.environ.items() if not k.startswith("FT_")}
    env.update(
        FT_URL=stack.url,
        FT_USERNAME=name,
        FT_PASSWORD=password,
        FT_CLIENT_CACHE_DIR=str(cache_dir),
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def sdk(stack, user, cache_dir):
    with Client(stack.url, *user, cache_dir=cache_dir, backoff_base=0.05) as client:
        yield client


def run_cli(env: dict[str, str], *args: str, timeout: float = 180, **overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "client", *args],
        env={**env, **overrides},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def start_cli(env: dict[str, str], log: Path, *args: str, **overrides: str) -> Proc:
    return Proc([PYTHON, "-m", "client", *args], {**env, **overrides}, log).start()


def write_random(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def age(path: Path, seconds: float = 60) -> None:
    """Make the file's mtime older: the hash journal does not trust files hashed as they were written."""
    past = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(past, past))


def stored(stack, file_id: str) -> bytes:
    return (stack.data_dir / "files" / file_id / "data").read_bytes()


def sent_bytes(stdout: str) -> int:
    return int(re.search(r"sent (\d+) bytes", stdout).group(1))


def server_had(stdout: str) -> int:
    return int(re.search(r"server had (\d+) bytes", stdout).group(1))


def received_bytes(stack, token: str, file_id: str) -> int:
    response = httpx.get(f"{stack.url}/status/{file_id}", headers=bearer(token), timeout=5)
    return response.json()["received_bytes"] if response.status_code == 200 else 0


# --- upload and download ------------------------------------------------------------------
def test_library_upload_and_download_roundtrip(stack, sdk, tmp_path):
    src = tmp_path / "random.bin"
    data = write_random(src, 3 * MiB + 4321)
    sha = hashlib.sha256(data).hexdigest()

    result = sdk.upload(src, chunk_size=256 * KiB)
    assert result.sha256 == sha and result.size == len(data)
    assert result.bytes_sent == len(data) and result.chunks_sent == 13 and result.resumed_from == 0
    assert re.fullmatch(r"random\.bin-[0-9a-f]{12}", result.file_id)
    status = sdk.status(result.file_id)
    assert status["state"] == "complete" and status["sha256"] == sha and status["file_name"] == "random.bin"
    assert stored(stack, result.file_id) == data

    out = tmp_path / "out" / "copy.bin"
    down = sdk.download(result.file_id, out)
    assert down.path == out and down.sha256 == sha and down.bytes_received == len(data)
    assert out.read_bytes() == data
    assert sorted(p.name for p in out.parent.iterdir()) == ["copy.bin"]  # no .part left behind


def test_cli_upload_then_download_by_original_name(stack, env, tmp_path):
    src = tmp_path / "données été.bin"
    data = write_random(src, 2 * MiB + 17)
    sha = hashlib.sha256(data).hexdigest()
    up = run_cli(env, "upload", str(src), "--file-id", (file_id := new_id()), "--chunk-size", "512KiB")
    assert up.returncode == 0, up.stderr
    assert f"sha256 {sha} verified" in up.stdout
    assert sent_bytes(up.stdout) == len(data)
    assert stored(stack, file_id) == data

    out_dir = tmp_path / "downloads"
    out_dir.mkdir()
    down = run_cli(env, "download", file_id, "-o", str(out_dir))
    assert down.returncode == 0, down.stderr
    assert f"sha256 {sha} verified" in down.stdout
    assert (out_dir / "données été.bin").read_bytes() == data

    status = run_cli(env, "status", file_id, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["sha256"] == sha


def test_cli_parallel_upload(stack, env, tmp_path):
    src = tmp_path / "par.bin"
    data = write_random(src, 5 * MiB + 99)
    up = run_cli(env, "upload", str(src), "--parallel", "4", "--chunk-size", "256KiB", "--file-id", (fid := new_id()))
    assert up.returncode == 0, up.stderr
    assert "in 21 chunks" in up.stdout
    assert stored(stack, fid) == data


def test_running_a_complete_upload_again_sends_nothing(stack, env, tmp_path):
    src = tmp_path / "again.bin"
    write_random(src, 1 * MiB)
    first = run_cli(env, "upload", str(src), "--chunk-size", "256KiB")
    assert first.returncode == 0, first.stderr
    again = run_cli(env, "upload", str(src), "--chunk-size", "256KiB")
    assert again.returncode == 0, again.stderr
    assert sent_bytes(again.stdout) == 0 and server_had(again.stdout) == 1 * MiB


# --- resuming after the client was killed --------------------------------------------------
def test_upload_resumes_after_sigkill_without_resending(stack, env, user, tmp_path):
    size = 8 * MiB
    src = tmp_path / "big.bin"
    data = write_random(src, size)
    age(src)
    token = login(stack.url, *user)
    file_id = new_id()
    args = ("upload", str(src), "--file-id", file_id, "--chunk-size", "256KiB")

    with TcpProxy(stack.url, rate=1 * MiB) as slow:
        proc = start_cli(env, tmp_path / "first.log", *args, FT_URL=slow.url)
        try:
            wait_until(
                lambda: received_bytes(stack, token, file_id) >= 1 * MiB,
                timeout=60,
                what="the first run to store 1 MiB",
            )
        finally:
            proc.kill(signal.SIGKILL)
            proc.popen.wait(10)
    had = received_bytes(stack, token, file_id)
    assert 0 < had < size

    with TcpProxy(stack.url) as counting:
        second = run_cli(env, *args, FT_URL=counting.url)
    assert second.returncode == 0, second.stderr + (tmp_path / "first.log").read_text()
    assert "resuming" in second.stderr
    assert "sha256 big.bin" in (tmp_path / "first.log").read_text()
    assert "sha256 big.bin" not in second.stderr  # the journal knew the unchanged file's SHA-256
    assert server_had(second.stdout) >= had
    assert sent_bytes(second.stdout) == size - server_had(second.stdout)  # no byte the server had
    assert slow.up + counting.up < 1.1 * size, (slow.up, counting.up)
    assert stored(stack, file_id) == data


def test_download_resumes_after_sigkill(stack, env, sdk, tmp_path):
    size = 8 * MiB
    src = tmp_path / "dl.bin"
    data = write_random(src, size)
    file_id = sdk.upload(src, chunk_size=4 * MiB).file_id
    out = tmp_path / "out.bin"
    part = tmp_path / "out.bin.part"

    with TcpProxy(stack.url, rate=1 * MiB) as slow:
        proc = start_cli(env, tmp_path / "first.log", "download", file_id, "-o", str(out), FT_URL=slow.url)
        try:
            wait_until(
                lambda: part.exists() and part.stat().st_size >= 1 * MiB,
                timeout=60,
                what="the first run to write 1 MiB",
            )
        finally:
            proc.kill(signal.SIGKILL)
            proc.popen.wait(10)
    assert not out.exists()
    partial = part.stat().st_size
    assert 0 < partial < size

    with TcpProxy(stack.url) as counting:
        second = run_cli(env, "download", file_id, "-o", str(out), FT_URL=counting.url)
    assert second.returncode == 0, second.stderr
    assert f"resumed at {partial}" in second.stdout
    assert counting.down < size - partial + 64 * KiB  # only the rest (and headers) came again
    assert slow.down + counting.down < 1.1 * size
    assert out.read_bytes() == data
    assert not part.exists() and not (tmp_path / "out.bin.part.json").exists()


def test_download_starts_over_when_the_partial_file_is_of_another_version(stack, sdk, tmp_path):
    src = tmp_path / "v.bin"
    data = write_random(src, 1 * MiB + 5)
    file_id = sdk.upload(src, chunk_size=512 * KiB).file_id
    out = tmp_path / "v-out.bin"
    (tmp_path / "v-out.bin.part").write_bytes(b"x" * 1000)
    (tmp_path / "v-out.bin.part.json").write_text(
        json.dumps({"url": sdk.url, "file_id": file_id, "etag": '"' + "0" * 64 + '"', "size": len(data)})
    )
    result = sdk.download(file_id, out)
    assert result.resumed_from == 1000 and result.bytes_received == len(data)  # If-Range did not match: 200
    assert out.read_bytes() == data


# --- retries through a proxy that cuts connections ---------------------------------------------
def test_upload_completes_through_connection_cuts(stack, env, tmp_path):
    src = tmp_path / "cut.bin"
    data = write_random(src, 6 * MiB + 1234)
    fid = new_id()
    with TcpProxy(stack.url, cut_after=1 * MiB) as proxy:
        up = run_cli(
            env, "upload", str(src), "--file-id", fid, "--chunk-size", "256KiB", "--parallel", "2", FT_URL=proxy.url
        )
    assert up.returncode == 0, up.stderr
    assert proxy.cuts >= 5
    assert stored(stack, fid) == data


def test_download_completes_through_connection_cuts(stack, env, sdk, tmp_path):
    src = tmp_path / "cutdl.bin"
    data = write_random(src, 5 * MiB + 3)
    file_id = sdk.upload(src, chunk_size=8 * MiB).file_id
    out = tmp_path / "cutdl-out.bin"
    with TcpProxy(stack.url, cut_after=1 * MiB) as proxy:
        down = run_cli(env, "download", file_id, "-o", str(out), FT_URL=proxy.url)
    assert down.returncode == 0, down.stderr
    assert proxy.cuts >= 4
    assert out.read_bytes() == data


# --- the local file changing ------------------------------------------------------------------
def test_local_file_changed_since_the_upload_began(stack, env, user, tmp_path):
    size = 4 * MiB
    src = tmp_path / "changing.bin"
    write_random(src, size)
    token = login(stack.url, *user)
    file_id = new_id()
    args = ("upload", str(src), "--file-id", file_id, "--chunk-size", "128KiB")
    with TcpProxy(stack.url, rate=512 * KiB) as slow:
        proc = start_cli(env, tmp_path / "first.log", *args, FT_URL=slow.url)
        try:
            wait_until(lambda: received_bytes(stack, token, file_id) > 0, timeout=60, what="some bytes stored")
        finally:
            proc.kill(signal.SIGKILL)
            proc.popen.wait(10)
    write_random(src, size)  # same size, other bytes
    again = run_cli(env, *args)
    assert again.returncode == 6, again.stdout + again.stderr
    assert "changed since the upload" in again.stderr

    write_random(src, size + 1)  # another size: the server's total says so too
    again = run_cli(env, *args)
    assert again.returncode == 6 and "changed" in again.stderr


def test_library_refuses_a_different_file_under_an_id_in_progress(stack, sdk, user, tmp_path):
    token = login(stack.url, *user)
    file_id = new_id()
    with httpx.Client(timeout=30) as http:
        r = send_chunk(http, stack.url, token, file_id, b"a" * 2000, 0, 999)
        assert r.status_code == 200, r.text
    src = tmp_path / "other.bin"
    write_random(src, 3000)
    with pytest.raises(Exception) as info:
        sdk.upload(src, file_id=file_id)
    assert "2000 bytes" in str(info.value) and "3000 bytes" in str(info.value)
    assert not isinstance(info.value, LocalFileChanged)


# --- errors -----------------------------------------------------------------------------------
def test_wrong_password_is_invalid_credentials(env):
    result = run_cli(env, "status", "anything", FT_PASSWORD="wrong password")
    assert result.returncode == 4
    assert "invalid credentials" in result.stderr


def test_too_many_failed_logins_says_when_to_retry(stack, env, cache_dir):
    name, _ = stack.add_user()
    for _ in range(10):
        try:
            with Client(stack.url, name, "wrong", cache_dir=cache_dir, retries=0) as client:
                client.login()
        except ApiError as exc:
            if exc.code == "too_many_attempts":
                break
    result = run_cli(env, "login", FT_USERNAME=name, FT_PASSWORD="wrong")
    assert result.returncode == 4
    assert re.search(r"too many failed logins.*retry after \d+ s", result.stderr), result.stderr


def test_status_of_unknown_or_foreign_file_is_not_found(stack, env, tmp_path):
    missing = run_cli(env, "status", new_id())
    assert missing.returncode == 5 and "not found" in missing.stderr
    other = stack.add_user()
    theirs = new_id()
    with httpx.Client(timeout=30) as http:
        assert send_chunk(http, stack.url, login(stack.url, *other), theirs, b"z" * 10, 0, 4).status_code == 200
    foreign = run_cli(env, "status", theirs)
    assert foreign.returncode == 5 and "not found" in foreign.stderr
    src = tmp_path / "z.bin"
    src.write_bytes(b"z" * 10)
    taken = run_cli(env, "upload", str(src), "--file-id", theirs)
    assert taken.returncode == 5 and "another user" in taken.stderr


def test_invalid_file_id_and_bad_sizes_are_usage_errors(env, tmp_path):
    src = tmp_path / "f.bin"
    src.write_bytes(b"1")
    assert run_cli(env, "upload", str(src), "--file-id", ".hidden").returncode == 2
    bad = run_cli(env, "upload", str(src), "--chunk-size", "8XB")
    assert bad.returncode == 2 and "unknown unit" in bad.stderr
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    result = run_cli(env, "upload", str(empty))
    assert result.returncode == 2 and "empty" in result.stderr


def test_status_and_download_of_an_incomplete_upload(stack, env, user, tmp_path):
    token = login(stack.url, *user)
    file_id = new_id()
    with httpx.Client(timeout=30) as http:
        assert send_chunk(http, stack.url, token, file_id, b"q" * 100, 0, 49).status_code == 200
    status = run_cli(env, "status", file_id)
    assert status.returncode == 3
    assert "state:     uploading" in status.stdout and "missing:   1 range(s): 50-99" in status.stdout
    down = run_cli(env, "download", file_id, "-o", str(tmp_path / "x"))
    assert down.returncode == 3 and "not complete" in down.stderr


def test_a_failed_upload_is_reported(stack, env, user, tmp_path):
    token = login(stack.url, *user)
    file_id = new_id()
    data = os.urandom(4096)
    with httpx.Client(timeout=30) as http:
        r = send_chunk(http, stack.url, token, file_id, data, 0, len(data) - 1, X_File_SHA256="0" * 64)
        assert r.status_code == 200, r.text
        assert wait_for_state(http, stack.url, token, file_id)["state"] == "failed"
    status = run_cli(env, "status", file_id)
    assert status.returncode == 1 and "error:" in status.stdout
    src = tmp_path / "failing.bin"
    src.write_bytes(data)
    up = run_cli(env, "upload", str(src), "--file-id", file_id)
    assert up.returncode == 1 and "failed on the server" in up.stderr


def test_insufficient_storage_is_explained(make_stack, tmp_path):
    full = make_stack(FT_MIN_FREE_BYTES=str(2**60))
    name, password = full.add_user()
    src = tmp_path / "nospace.bin"
    write_random(src, 100 * KiB)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FT_")}
    env.update(FT_URL=full.url, FT_USERNAME=name, FT_PASSWORD=password, FT_CLIENT_CACHE_DIR=str(tmp_path / "c"))
    result = run_cli(env, "upload", str(src))
    assert result.returncode == 7
    assert "out of storage" in result.stderr and "resume" in result.stderr


# --- tokens --------------------------------------------------------------------------------------
def test_token_is_cached_privately_and_renewed(stack, env, cache_dir, tmp_path):
    result = run_cli(env, "login")
    assert result.returncode == 0, result.stderr
    [cached] = list((cache_dir / "tokens").iterdir())
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600
    assert stat.S_IMODE(cached.parent.stat().st_mode) == 0o700

    fid = new_id()
    # The cached token is used: a wrong password does not matter while it is valid.
    assert run_cli(env, "status", fid, FT_PASSWORD="wrong").returncode == 5

    # A token the server refuses (401) is replaced by a fresh login.
    body = json.loads(cached.read_text())
    cached.write_text(json.dumps({**body, "access_token": "garbage.token.value"}))
    assert run_cli(env, "status", fid).returncode == 5
    assert json.loads(cached.read_text())["access_token"] != "garbage.token.value"

    # An expired one is not even sent.
    body = json.loads(cached.read_text())
    cached.write_text(json.dumps({**body, "expires_at": time.time() - 1}))
    assert run_cli(env, "status", fid, FT_PASSWORD="wrong").returncode == 4
    assert run_cli(env, "status", fid).returncode == 5
    assert json.loads(cached.read_text())["expires_at"] > time.time() + 60


# --- output ---------------------------------------------------------------------------------------
def test_plain_progress_lines_when_not_a_tty_and_silence_with_quiet(env, tmp_path):
    src = tmp_path / "p.bin"
    write_random(src, 1 * MiB)
    noisy = run_cli(env, "upload", str(src), "--chunk-size", "256KiB", "--file-id", new_id())
    assert noisy.returncode == 0, noisy.stderr
    assert re.search(r"upload p\.bin: 1\.0 MiB / 1\.0 MiB \(100%\), .*/s, ETA .* - done in", noisy.stderr)
    quiet = run_cli(env, "--quiet", "upload", str(src), "--chunk-size", "256KiB", "--file-id", new_id())
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert "verified" in quiet.stdout


def test_token_expiring_mid_upload_is_renewed(make_stack, tmp_path):
    short = make_stack(FT_TOKEN_TTL="3")
    name, password = short.add_user()
    cache = tmp_path / "short-cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FT_")}
    env.update(FT_URL=short.url, FT_USERNAME=name, FT_PASSWORD=password, FT_CLIENT_CACHE_DIR=str(cache))
    src = tmp_path / "slow.bin"
    data = write_random(src, 3 * MiB)
    with TcpProxy(short.url, rate=512 * KiB) as slow:  # about 6 s: the 3 s token expires on the way
        assert run_cli(env, "login", FT_URL=slow.url).returncode == 0
        [cached] = list((cache / "tokens").iterdir())
        first = json.loads(cached.read_text())["access_token"]
        up = run_cli(env, "upload", str(src), "--chunk-size", "128KiB", "--file-id", (fid := new_id()), FT_URL=slow.url)
    assert up.returncode == 0, up.stderr
    assert stored(short, fid) == data
    assert json.loads(cached.read_text())["access_token"] != first


def test_cli_delete_frees_the_id(stack, env, tmp_path):
    data = write_random(tmp_path / "gone.bin", 300_000)
    file_id = new_id()
    assert run_cli(env, "upload", str(tmp_path / "gone.bin"), "--file-id", file_id, "--quiet").returncode == 0
    deleted = run_cli(env, "delete", file_id)
    assert deleted.returncode == 0, deleted.stderr
    assert not (stack.data_dir / "files" / file_id).exists()
    again = run_cli(env, "delete", file_id)
    assert again.returncode == 5 and "not found" in again.stderr
    # The id can take the same bytes again.
    assert run_cli(env, "upload", str(tmp_path / "gone.bin"), "--file-id", file_id, "--quiet").returncode == 0
    assert stored(stack, file_id) == data


def test_cli_names_the_file_id_at_once_and_how_to_resume_after_ctrl_c(stack, env, user, tmp_path):
    size = 8 * MiB
    src = tmp_path / "interrupted.bin"
    data = write_random(src, size)
    token = login(stack.url, *user)
    log = tmp_path / "first.log"
    with TcpProxy(stack.url, rate=1 * MiB) as slow:
        proc = start_cli(env, log, "upload", str(src), "--chunk-size", "256KiB", FT_URL=slow.url)
        try:
            started = wait_until(
                lambda: re.search(r"uploading .* as (\S+)\n", log.read_text()),
                timeout=30,
                what="the file id on the first line",
            )
            file_id = started.group(1)
            wait_until(
                lambda: received_bytes(stack, token, file_id) >= 1 * MiB,
                timeout=60,
                what="the first run to store 1 MiB",
            )
            proc.kill(signal.SIGINT)
            assert proc.popen.wait(20) == 130
        finally:
            proc.stop()
    output = log.read_text()
    assert output.splitlines()[0] == f"uploading {src} as {file_id}"
    hint = re.search(
        rf"interrupted; upload {re.escape(file_id)} resumes where it stopped: (.*--file-id "
        rf"{re.escape(file_id)})$",
        output.rstrip(),
    )
    assert hint, output
    again = subprocess.run(
        ["bash", "-c", hint.group(1)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    assert again.returncode == 0, again.stderr
    assert server_had(again.stdout) >= 1 * MiB
    assert stored(stack, file_id) == data


def run_on_terminal(env: dict[str, str], *args: str, timeout: float = 120) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a pseudo-terminal (as a user sees it): exit status, output."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [PYTHON, "-m", "client", *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env={**env, "TERM": "xterm-256color", "COLUMNS": "120"},
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                block = os.read(master, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not block:
                break
            chunks.append(block)
        return proc.wait(timeout), b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_on_a_terminal_the_result_line_comes_after_the_finished_bars(env, tmp_path):
    src = tmp_path / "tty.bin"
    write_random(src, 3 * MiB)
    code, output = run_on_terminal(env, "upload", str(src), "--chunk-size", "256KiB")
    assert code == 0, output
    assert "━" in output  # rich drew its bars
    result = output.index("uploaded ")
    assert output.rindex("━") < result, output[-2000:]
    assert output.index(" as tty.bin-") < result


class Recorder(Reporter):
    """Remembers what the client reported doing."""

    def __init__(self) -> None:
        self.tasks: list[str] = []

    def task(self, description: str, total: int, completed: int = 0):
        self.tasks.append(description)
        return super().task(description, total, completed)


def test_the_hash_journal_skips_unchanged_files_and_rehashes_changed_ones(stack, user, cache_dir, tmp_path):
    src = tmp_path / "journal.bin"
    data = write_random(src, 1 * MiB + 11)
    age(src)
    file_id = new_id()

    def upload() -> list[str]:
        recorder = Recorder()
        with Client(stack.url, *user, cache_dir=cache_dir, reporter=recorder) as client:
            assert client.upload(src, file_id, chunk_size=256 * KiB).sha256 == hashlib.sha256(data).hexdigest()
        return recorder.tasks

    assert "sha256 journal.bin" in upload()
    [entry] = list((cache_dir / "hashes").iterdir())
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert json.loads(entry.read_text())["file_id"] == file_id
    assert "sha256 journal.bin" not in upload()  # unchanged: not read again
    age(src, 30)  # another mtime, same bytes
    assert "sha256 journal.bin" in upload()
    os.utime(src)  # touched just now: too recent to trust, hashed every time
    assert "sha256 journal.bin" in upload()
    assert "sha256 journal.bin" in upload()
