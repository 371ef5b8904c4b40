"""The machine and software a run measured: CPU, cores, RAM, disks, kernel, versions."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata


def _run(*args: str) -> str:
    try:
        out = subprocess.run(list(args), capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ram_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return 0.0


def filesystem(path: str) -> str:
    """'ext4 on /dev/vda (virtio, 252G)' and the like."""
    out = _run("findmnt", "-n", "-o", "FSTYPE,SOURCE,SIZE", "--target", path)
    if not out:
        return "unknown"
    fstype, source, size = [*out.split(), "", "", ""][:3]
    text = f"{fstype} on {source} ({size})"
    if source.startswith("/dev/"):
        name = os.path.basename(source)
        rota = _run("cat", f"/sys/block/{re.sub(r'p?[0-9]+$', '', name)}/queue/rotational")
        model = _run("lsblk", "-dn", "-o", "MODEL", source).strip()
        text += f", /sys rotational={rota or '?'}" + (f", {model}" if model else "")
    return text


def hypervisor() -> str:
    out = _run("lscpu")
    match = re.search(r"Hypervisor vendor:\s*(\S+)", out)
    return f"VM ({match.group(1)})" if match else "bare metal or unknown"


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


def describe(disk_dir: str, tmpfs_dir: str, tus_version: str | None) -> dict:
    from bench.refs import nginx_version, node_version
    from ops.redis_server import find_redis_server

    redis_server = find_redis_server()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "hypervisor": hypervisor(),
        "ram_gib": round(ram_gib(), 1),
        "kernel": platform.release(),
        "os": _run("sh", "-c", ". /etc/os-release && echo $PRETTY_NAME") or platform.platform(),
        "disk": f"{disk_dir}: {filesystem(disk_dir)}",
        "tmpfs": f"{tmpfs_dir}: {filesystem(tmpfs_dir)}",
        "dirty": _run(
            "sh", "-c", "echo $(cat /proc/sys/vm/dirty_background_ratio)% / $(cat /proc/sys/vm/dirty_ratio)%"
        ),
        "versions": {
            "python": sys.version.split()[0],
            "uvicorn": package_version("uvicorn"),
            "uvloop": package_version("uvloop"),
            "httptools": package_version("httptools"),
            "starlette": package_version("starlette"),
            "fastapi": package_version("fastapi"),
            "redis-server": (
                _run(redis_server, "--version").split("v=")[1].split()[0]
                if "v=" in _run(redis_server, "--version")
                else "?"
            ),
            "nginx": nginx_version() or "-",
            "node": node_version() or "-",
            "@tus/server": tus_version or "not installed",
            "curl": _run("curl", "--version").split()[1] if shutil.which("curl") else "-",
        },
    }
