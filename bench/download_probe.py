"""Download throughput: RangeFileResponse under uvicorn (uvloop + httptools) against nginx.

    .venv/bin/python bench/download_probe.py [--size-mib 256] [--runs 5] [--read-sizes 65536,1048576]

Both serve the same file over loopback to the same client (curl, body to /dev/null); prints
MB/s (10^6 bytes/s), median of the runs, and the ratio to nginx. A throwaway measurement, not a
test: the numbers depend on the machine. It picked RangeFileResponse's 1 MiB default.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: bench/download_probe.py

from bench.refs import wait_port  # noqa: E402
from ops.redis_server import free_port  # noqa: E402


def serve(path: str, port: int, read_size: int) -> None:
    """The child: one route, the file as RangeFileResponse."""
    import uvicorn

    from api.responses import RangeFileResponse

    st = os.stat(path)

    async def app(scope, receive, send):
        if scope["type"] == "http":
            await RangeFileResponse(path, st.st_size, "0" * 64, st.st_mtime, "f.bin", read_size=read_size)(
                scope, receive, send
            )

    uvicorn.run(
        app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning", access_log=False
    )


def start_nginx(root: Path, port: int) -> subprocess.Popen:
    (root / "tmp").mkdir()
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = root / "nginx.conf"
    conf.write_text(f"""{user}daemon off; worker_processes 1; pid {root}/nginx.pid; error_log {root}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off; sendfile on; tcp_nopush on;
  client_body_temp_path {root}/tmp/c; proxy_temp_path {root}/tmp/p; fastcgi_temp_path {root}/tmp/f;
  uwsgi_temp_path {root}/tmp/u; scgi_temp_path {root}/tmp/s;
  server {{ listen 127.0.0.1:{port}; root {root}/www; default_type application/octet-stream; }}
}}
""")
    return subprocess.Popen(
        [shutil.which("nginx"), "-p", str(root), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def curl_mbps(url: str, size: int) -> float:
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{speed_download}", url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert int(out[0]) == size, out
    return float(out[1]) / 1e6


def measure(url: str, size: int, runs: int) -> float:
    curl_mbps(url, size)  # warm-up: page cache, connection code paths
    return statistics.median(curl_mbps(url, size) for _ in range(runs))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        return serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--read-sizes", default="65536,262144,1048576,4194304")
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)
        (root / "www").mkdir()
        data = root / "www" / "f.bin"
        with open(data, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1024 * 1024))
        port = free_port()
        nginx = start_nginx(root, port)
        try:
            wait_port(port, nginx)
            base = measure(f"http://127.0.0.1:{port}/f.bin", size, args.runs)
        finally:
            nginx.terminate()
            nginx.wait(10)
        print(f"nginx sendfile            {base:8.0f} MB/s")
        for read_size in map(int, args.read_sizes.split(",")):
            port = free_port()
            api = subprocess.Popen([sys.executable, __file__, "serve", str(data), str(port), str(read_size)])
            try:
                wait_port(port, api)
                mbps = measure(f"http://127.0.0.1:{port}/", size, args.runs)
            finally:
                api.terminate()
                api.wait(10)
            print(f"uvicorn read_size={read_size // 1024:5d}KiB {mbps:8.0f} MB/s  {mbps / base:.2f}x nginx")


if __name__ == "__main__":
    main()
