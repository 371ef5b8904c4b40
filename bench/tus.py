"""tus figures: our `/files/` against @tus/server (+ @tus/file-store), the same client loop.

    .venv/bin/python -m bench.tus [--size 256MiB] [--patch 8MiB] [--trials 5] [--dir /var/tmp]

Tables (one keep-alive connection, interleaved trials, the machine quiet first):
- throughput: the whole file as one PATCH, and as PATCHes of `--patch` bytes, on each server
  (ours also waits, untimed, for the worker's verification, and checks the SHA-256);
- resume cost: a single-PATCH upload whose connection is closed after half the body; a new
  connection asks HEAD for the offset and sends the rest (after a 409, HEAD again, as
  tus-js-client does). Bytes re-sent = size - offset; the less, the better (ideal: size / 2).
Writes bench/results/tus-<time>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.client import Http, MiB, Payload, TusTarget, upload  # noqa: E402
from bench.procs import loadavg, set_quiet_budget  # noqa: E402
from bench.refs import TusServer, node_version, tus_install  # noqa: E402
from bench.runner import Contender, run_interleaved  # noqa: E402
from bench.stack import OurStack  # noqa: E402
from client.units import parse_size  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class AuthTusTarget(TusTarget):
    """TusTarget with our bearer token; remembers the last upload's path."""

    def __init__(self, token: str | None) -> None:
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.last_path = ""

    def begin(self, http, file_id, total):
        status, headers, body = http.request(
            "POST", "/files/", {"Tus-Resumable": "1.0.0", "Upload-Length": str(total), **self.headers}
        )
        if status != 201:
            raise RuntimeError(f"tus creation answered {status}: {body[:300]!r}")
        self.last_path = urlsplit(headers["location"]).path
        return self.last_path

    def send(self, http, ctx, file_id, start, end, total, payload):
        status, headers, body = http.request(
            "PATCH",
            ctx,
            {
                "Tus-Resumable": "1.0.0",
                "Upload-Offset": str(start),
                "Content-Type": "application/offset+octet-stream",
                **self.headers,
            },
            (payload.piece(start, end - start + 1),),
        )
        if status != 204 or int(headers["upload-offset"]) != end + 1:
            raise RuntimeError(f"tus PATCH at {start} answered {status} {headers}: {body[:300]!r}")
        return body


class TusBench:
    def __init__(self, size: int, patch: int, base_dir: str, payload: Payload) -> None:
        self.size, self.patch, self.payload = size, patch, payload
        self.root = Path(tempfile.mkdtemp(prefix="ft-bench-tus-", dir=base_dir))

    def __enter__(self) -> TusBench:
        self.ours = OurStack(self.root / "ours").__enter__()
        try:
            self.peer = TusServer(self.root / "tus-store", self.root / "tus.log").__enter__()
        except BaseException:
            self.ours.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.peer.__exit__()
        self.ours.__exit__()
        shutil.rmtree(self.root, ignore_errors=True)

    def all_pids(self) -> list[int]:
        return self.ours.pids + self.peer.pids

    def _finish_ours(self, path: str) -> None:
        """Untimed: the worker verified it, with the right SHA-256; then drop the bytes."""
        file_id = path.rsplit("/", 1)[1]
        status, _ = self.ours.wait_complete(file_id)
        expected = self.expected_sha256()
        if status["sha256"] != expected:
            raise RuntimeError(f"{file_id}: sha256 {status['sha256']} != {expected}")
        self.ours.remove(file_id)

    def expected_sha256(self) -> str:
        if not hasattr(self, "_sha"):
            digest = hashlib.sha256()
            for start in range(0, self.size, self.payload.size):
                digest.update(self.payload.piece(start, min(self.payload.size, self.size - start)))
            self._sha = digest.hexdigest()
        return self._sha

    # --- throughput ------------------------------------------------------------------------
    def contender(self, name: str, server: str, patch: int) -> Contender:
        ours = server == "ours"
        url = self.ours.url if ours else self.peer.url
        target = AuthTusTarget(self.ours.token if ours else None)

        def run() -> dict:
            result = upload(url, target, "unused", self.size, patch, self.payload)
            return {"mbps": result.mbps, "seconds": result.seconds}

        def after(metrics: dict) -> None:
            if ours:
                self._finish_ours(target.last_path)
            else:
                self.peer.clear()

        pids = (lambda: [self.ours.api.pid]) if ours else (lambda: self.peer.pids)
        return Contender(name, run, pids, after)

    def throughput(self, trials: int) -> dict:
        size_label = f"{self.size // MiB} MiB"
        contenders = []
        for patch, label in ((self.size, f"one {size_label} PATCH"), (self.patch, f"{self.patch // MiB} MiB PATCHes")):
            contenders.append(self.contender(f"ours {label}", "ours", patch))
            contenders.append(self.contender(f"@tus/server {label}", "peer", patch))
        series = run_interleaved(contenders, trials, self.all_pids, log, "tus throughput")
        return {name: s.values for name, s in series.items()}

    # --- resume cost ---------------------------------------------------------------------
    def resume_cost(self, server: str) -> dict:
        ours = server == "ours"
        url = self.ours.url if ours else self.peer.url
        target = AuthTusTarget(self.ours.token if ours else None)
        http = Http(url)
        path = target.begin(http, "unused", self.size)
        http.close()
        half = self.size // 2
        _cut_patch(url, path, target.headers, self.payload, self.size, half)
        started = time.perf_counter()
        http = Http(url)
        heads = 0
        while True:
            heads += 1
            status, headers, _ = http.request("HEAD", path, {"Tus-Resumable": "1.0.0", **target.headers})
            offset = int(headers["upload-offset"])
            status, headers, body = http.request(
                "PATCH",
                path,
                {
                    "Tus-Resumable": "1.0.0",
                    "Upload-Offset": str(offset),
                    "Content-Type": "application/offset+octet-stream",
                    **target.headers,
                },
                (self.payload.piece(offset, self.size - offset),),
            )
            if status == 204:
                break
            if status != 409 or heads > 200:
                raise RuntimeError(f"resume PATCH answered {status}: {body[:300]!r}")
            time.sleep(0.05)  # the server has not yet noticed the cut; ask again, as a client would
        seconds = time.perf_counter() - started
        http.close()
        if ours:
            self._finish_ours(path)
        else:
            self.peer.clear()
        return {
            "sent_before_cut": half,
            "offset_after_cut": offset,
            "resent_bytes": self.size - offset,
            "resent_fraction": (self.size - offset) / self.size,
            "heads": heads,
            "resume_seconds": seconds,
        }


def _cut_patch(url: str, path: str, headers: dict, payload: Payload, size: int, sent: int) -> None:
    """A single PATCH of `size` bytes whose connection closes after `sent` bytes of body."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    head = [
        f"PATCH {path} HTTP/1.1",
        f"Host: {parts.hostname}:{parts.port}",
        "Tus-Resumable: 1.0.0",
        "Upload-Offset: 0",
        "Content-Type: application/offset+octet-stream",
        f"Content-Length: {size}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    sock.sendall(payload.piece(0, sent))
    sock.close()


def render(results: dict) -> str:
    lines = [
        f"tus, {results['size_mib']} MiB, one connection, {results['trials']} interleaved trials;"
        f" {results['date']}; load {results['load']}",
        "",
        "| contender | MB/s median (min-max) | server cores |",
        "|---|---|---|",
    ]
    for name, values in results["throughput"].items():
        mbps = values["mbps"]
        lines.append(
            f"| {name} | {statistics.median(mbps):.0f} ({min(mbps):.0f}-{max(mbps):.0f}) |"
            f" {statistics.median(values['server_cores']):.2f} |"
        )
    lines += [
        "",
        "| resume after a cut at 50% | offset kept | bytes re-sent | HEADs | resume s |",
        "|---|---|---|---|---|",
    ]
    for name, row in results["resume"].items():
        lines.append(
            f"| {name} | {row['offset_after_cut'] / MiB:.1f} MiB | {row['resent_bytes'] / MiB:.1f} MiB"
            f" ({row['resent_fraction']:.0%}) | {row['heads']} | {row['resume_seconds']:.2f} |"
        )
    return "\n".join(lines)


def run(size: int, patch: int, trials: int, directory: str, say=log) -> dict:
    """Both tables for `make bench` (section `tus`) and `python -m bench.tus`."""
    if tus_install(say) is None:
        raise RuntimeError("@tus/server could not be installed (needs node and npm)")
    payload = Payload(size)
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "size_mib": size // MiB,
        "patch_mib": patch // MiB,
        "trials": trials,
        "node": node_version(),
        "load": loadavg(),
    }
    with TusBench(size, patch, directory, payload) as bench:
        results["throughput"] = bench.throughput(trials)
        results["resume"] = {"ours": bench.resume_cost("ours"), "@tus/server": bench.resume_cost("peer")}
    results["load"] += f" -> {loadavg()}"
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.tus", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="256MiB", help="file size (default 256MiB)")
    parser.add_argument("--patch", default="8MiB", help="PATCH size of the chunked rows (default 8MiB)")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--dir", default="/var/tmp", help="directory on the filesystem under test")
    args = parser.parse_args(argv)
    size, patch = parse_size(args.size), parse_size(args.patch)
    if size % patch:
        sys.exit("--size must be a multiple of --patch")
    set_quiet_budget(120.0)
    results = run(size, patch, args.trials, args.dir)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"tus-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=1))
    print(render(results))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
