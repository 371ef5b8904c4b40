"""The reference servers: nginx (request-body sink, static files) and @tus/server (+ @tus/file-store).

nginx sink: `return 204` alone would not do, because nginx answers first and then discards the
body through a 4 KiB stack buffer while the connection lingers (its access log shows
`$request_length` without the body). The `mirror` module with `mirror_request_body on` makes
nginx read the whole body into `client_body_buffer_size` (16 MiB: an 8 MiB chunk stays in memory,
no temp file) before the content phase; the content phase finds no file and `error_page 404 =204`
answers 204 (from the named location, which is where the request is logged). The subrequest goes
to an internal `return 204` location. Every sink request is logged with `$request_length`, and
the benchmark checks that each one includes the whole body.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from ops.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
TUS_SRC = Path(__file__).resolve().parent / "tus_peer"
TUS_DIR = Path(__file__).resolve().parent / ".cache" / "tus"


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {port}")


class Nginx:
    """nginx with `/sink/` (reads and drops request bodies) and `/static/` (files under `static_root`)."""

    def __init__(self, root: Path, static_root: Path | None = None, workers: str = "auto") -> None:
        self.root = root
        self.static_root = static_root or root / "www"
        self.workers = workers

    def __enter__(self) -> Nginx:
        root = self.root
        (root / "tmp").mkdir(parents=True, exist_ok=True)
        (root / "empty").mkdir(exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.access_log = root / "access.log"
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = root / "nginx.conf"
        conf.write_text(f"""{user}daemon off; worker_processes {self.workers}; pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 256; }}
http {{
  sendfile on; tcp_nopush on; keepalive_requests 100000; keepalive_timeout 300s;
  default_type application/octet-stream;
  log_format sink '$request_length $content_length $status';
  access_log off;
  client_body_temp_path {root}/tmp/c; proxy_temp_path {root}/tmp/p; fastcgi_temp_path {root}/tmp/f;
  uwsgi_temp_path {root}/tmp/u; scgi_temp_path {root}/tmp/s;
  server {{
    listen 127.0.0.1:{self.port} backlog=512;
    location /sink/ {{
      client_max_body_size 0;
      client_body_buffer_size 16m;
      mirror /_mirror;
      mirror_request_body on;
      root {root}/empty;
      log_not_found off;
      error_page 404 =204 @done;
    }}
    location = /_mirror {{ internal; return 204; }}
    location @done {{ access_log {self.access_log} sink; return 204; }}
    location /static/ {{ alias {self.static_root}/; }}
  }}
}}
""")
        self.proc = subprocess.Popen(
            [shutil.which("nginx"), "-p", str(root), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc)
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(10)

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid]

    def sink_requests(self) -> list[tuple[int, int]]:
        """(request_length, content_length) of every sink request so far."""
        if not self.access_log.exists():
            return []
        rows = []
        for line in self.access_log.read_text().splitlines():
            length, content_length, _status = line.split()
            rows.append((int(length), int(content_length)))
        return rows

    def check_sink_read_bodies(self) -> int:
        """Every sink request's $request_length includes its body; returns how many were checked."""
        rows = self.sink_requests()
        short = [r for r in rows if r[0] < r[1]]
        if short:
            raise RuntimeError(f"nginx answered {len(short)} sink requests without reading the body: {short[:3]}")
        return len(rows)


class NginxAccel:
    """deploy/nginx.conf as shipped, in front of an API run with FT_ACCEL_REDIRECT=1.

    Rewritten as tests/integration/test_range_response.py does it: the listen port, the
    upstream's port (`api_port`) and the `/_ft_files/` alias (`data_dir`/files/); plus this
    run's own pid, error log, temp paths, `access_log off` (as the static nginx) and
    `daemon off`, everything under `root`. The `mime.types` include points at the system's."""

    DEPLOY = ROOT / "deploy" / "nginx.conf"

    def __init__(self, root: Path, api_port: int, data_dir: Path) -> None:
        self.root, self.api_port, self.data_dir = root, api_port, data_dir

    def __enter__(self) -> NginxAccel:
        import re

        root = self.root
        (root / "tmp").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        mime = Path("/etc/nginx/mime.types")  # Debian's; left out where there is none (no effect here)
        conf = self.DEPLOY.read_text()
        for old, new in (
            (r"listen 127\.0\.0\.1:8080;", f"listen 127.0.0.1:{self.port};"),
            (r"server 127\.0\.0\.1:8000;", f"server 127.0.0.1:{self.api_port};"),
            (r"alias /\S+/files/;", f"alias {self.data_dir}/files/;"),
            (r"include mime\.types;", f"include {mime};" if mime.exists() else ""),
            (
                r"http \{\n",
                "http {\n"
                + "".join(
                    f"    {kind}_temp_path {root}/tmp/{kind};\n"
                    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
                )
                + "    access_log off;\n",
            ),
        ):
            conf, n = re.subn(old, lambda _m, new=new: new, conf)
            if n != 1:
                raise RuntimeError(f"deploy/nginx.conf no longer has {old!r}: update bench/refs.py")
        self.conf = root / "nginx.conf"
        self.conf.write_text(conf)
        globals_ = f"daemon off; pid {root}/nginx.pid;" + (" user root;" if os.geteuid() == 0 else "")
        with open(root / "nginx.out", "ab") as out:
            self.proc = subprocess.Popen(
                [
                    shutil.which("nginx"),
                    "-p",
                    str(root),
                    "-e",
                    str(root / "error.log"),
                    "-c",
                    str(self.conf),
                    "-g",
                    globals_,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            wait_port(self.port, self.proc)
        except BaseException as exc:
            self.__exit__()
            logs = "".join(
                p.read_text(errors="replace") for p in (root / "error.log", root / "nginx.out") if p.exists()
            )
            raise RuntimeError(f"nginx (deploy/nginx.conf, accel) did not start: {exc!r}\n{logs[-2000:]}") from exc
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid]


def nginx_version() -> str | None:
    exe = shutil.which("nginx")
    if not exe:
        return None
    out = subprocess.run([exe, "-v"], capture_output=True, text=True)
    return (out.stderr or out.stdout).strip().split("/")[-1]


# --- @tus/server -------------------------------------------------------------------------


def tus_install(log) -> str | None:
    """Install the pinned @tus packages into bench/.cache/tus once; None (and why) when impossible."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if not npm or not node:
        log("SKIP tus: npm/node not found on PATH; the @tus/server comparison is left out")
        return None
    TUS_DIR.mkdir(parents=True, exist_ok=True)
    wanted = (TUS_SRC / "package.json").read_text()
    stamp = TUS_DIR / ".installed-package.json"
    if not (stamp.exists() and stamp.read_text() == wanted and (TUS_DIR / "node_modules" / "@tus" / "server").exists()):
        (TUS_DIR / "package.json").write_text(wanted)
        log("installing @tus/server into bench/.cache/tus (npm, first run only) ...")
        result = subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(TUS_DIR),
                "--no-audit",
                "--no-fund",
                "--no-save",
                "--cache",
                str(TUS_DIR.parent / "npm"),
            ],
            capture_output=True,
            text=True,
            cwd=TUS_DIR,
        )
        if result.returncode != 0:
            log(f"SKIP tus: npm install failed ({result.returncode}):\n{result.stderr[-2000:]}")
            return None
        stamp.write_text(wanted)
    # ESM resolves packages from the importing file's directory: the script lives beside node_modules.
    shutil.copyfile(TUS_SRC / "server.mjs", TUS_DIR / "server.mjs")
    version = json.loads((TUS_DIR / "node_modules" / "@tus" / "server" / "package.json").read_text())["version"]
    return version


def node_version() -> str | None:
    node = shutil.which("node")
    if not node:
        return None
    return subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()


class TusServer:
    def __init__(self, store_dir: Path, log_path: Path) -> None:
        self.store_dir = store_dir
        self.log_path = log_path

    def __enter__(self) -> TusServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [shutil.which("node"), str(TUS_DIR / "server.mjs"), str(self.port), str(self.store_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=TUS_DIR,
        )
        log.close()
        wait_port(self.port, self.proc)
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid]

    def clear(self) -> None:
        for entry in self.store_dir.iterdir():
            entry.unlink()
