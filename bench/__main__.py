"""`make bench` = `.venv/bin/python -m bench`; see bench/__init__.py and docs/BENCHMARKS.md."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.plan import FULL, QUICK, SECTIONS  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "BENCHMARKS.md"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer trials (< 3 min)")
    parser.add_argument("--only", default="", help=f"comma-separated sections: {','.join(SECTIONS)}")
    parser.add_argument("--fs", default="", help="comma-separated filesystems: disk,tmpfs (default both)")
    parser.add_argument("--trials", type=int, default=0, help="interleaved rounds per table (default 5, quick 3)")
    parser.add_argument(
        "--disk-dir",
        default=os.environ.get("FT_BENCH_DISK_DIR", "/var/tmp"),
        help="directory on the disk under test (default /var/tmp)",
    )
    parser.add_argument("--tmpfs-dir", default=os.environ.get("FT_BENCH_TMPFS_DIR", "/dev/shm"))
    parser.add_argument(
        "--render",
        default="",
        metavar="JSON",
        help="only re-render the report from a saved bench/results/*.json (e.g. after editing"
        " bench/findings.md); writes --out or docs/BENCHMARKS.md",
    )
    parser.add_argument(
        "--out",
        default="",
        help="report path (default: docs/BENCHMARKS.md for a full run, bench/results/BENCHMARKS-<kind>.md otherwise)",
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.render:
        from bench.report import Report

        out = Path(args.out) if args.out else DOC
        out.write_text(Report(json.loads(Path(args.render).read_text())).render())
        log(f"wrote {out} from {args.render}")
        return 0
    plan = dataclasses.replace(QUICK if args.quick else FULL)
    if args.only:
        wanted = {s.strip() for s in args.only.split(",") if s.strip()}
        unknown = wanted - set(SECTIONS)
        if unknown:
            sys.exit(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
        plan.sections = wanted
    if args.fs:
        plan.filesystems = tuple(f.strip() for f in args.fs.split(",") if f.strip())
    if args.trials:
        plan.trials = max(1, args.trials)
        plan.download_trials = max(1, args.trials)
    partial = args.quick or bool(args.only) or bool(args.fs) or bool(args.trials)
    out = (
        Path(args.out)
        if args.out
        else (RESULTS / f"BENCHMARKS-{'quick' if args.quick else 'partial'}.md" if partial else DOC)
    )
    dirs = {"disk": args.disk_dir, "tmpfs": args.tmpfs_dir}

    from bench.client import MiB, Payload
    from bench.machine import describe
    from bench.procs import loadavg, quiet_spent, set_quiet_budget
    from bench.refs import tus_install

    started = time.monotonic()
    set_quiet_budget(plan.quiet_budget)
    load_start = loadavg()
    skipped: list[str] = []
    upload_sections = plan.sections & {"upload", "parallel", "big", "concurrent", "sweep", "fsync"}
    tus_version = None
    if plan.sections & {"upload", "sweep"}:
        tus_version = tus_install(log)
        if tus_version is None:
            skipped.append("@tus/server comparison: npm/node missing or `npm install` failed (see the log)")
    if not shutil.which("nginx"):
        sys.exit("nginx is not installed: the reference server of most tables (apt-get install nginx)")
    log(f"plan {plan.name}: sections {sorted(plan.sections)}, filesystems {plan.filesystems}, trials {plan.trials}")
    log("generating 256 MiB of random payload ...")
    payload = Payload(256 * MiB)
    results: dict = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "argv": " ".join(argv) or "(no flags)",
        "plan": {k: (sorted(v) if isinstance(v, set) else v) for k, v in dataclasses.asdict(plan).items()},
        "machine": describe(dirs["disk"], dirs["tmpfs"], tus_version),
        "upload": {},
        "skipped": skipped,
    }

    from bench.upload import UploadBench

    sweep_fs = "tmpfs" if "tmpfs" in plan.filesystems else plan.filesystems[-1]
    for fs in plan.filesystems:
        wanted = [s for s in ("upload", "parallel", "big", "concurrent", "sweep", "fsync") if s in upload_sections]
        if fs != sweep_fs and "sweep" in wanted:
            wanted.remove("sweep")
        if not wanted:
            continue
        log(f"== uploads on {fs} ({dirs[fs]}): {', '.join(wanted)}")
        tables = results["upload"].setdefault(fs, {})
        try:
            with UploadBench(plan, fs, dirs[fs], payload, tus_version, log) as bench:
                for section in wanted:
                    method = {
                        "upload": bench.single,
                        "parallel": bench.parallel,
                        "big": bench.big,
                        "concurrent": bench.concurrent,
                        "sweep": bench.sweep,
                        "fsync": bench.fsync,
                    }[section]
                    key = "single" if section == "upload" else section
                    try:
                        tables[key] = method()
                    except Exception as exc:
                        log(f"!! {fs} {section} failed: {exc!r}\n{traceback.format_exc()}")
                        skipped.append(f"{fs} {section}: failed with {exc!r}")
        except Exception as exc:
            log(f"!! could not start the servers on {fs}: {exc!r}\n{traceback.format_exc()}")
            skipped.append(f"uploads on {fs}: servers did not start ({exc!r})")

    if "download" in plan.sections:
        from bench.download import DownloadBench

        log(f"== downloads ({dirs['disk']})")
        try:
            with DownloadBench(plan, dirs["disk"], payload, log) as bench:
                results["download_checks"] = bench.checks
                results["download"] = bench.run(have_curl=bool(shutil.which("curl")))
        except Exception as exc:
            log(f"!! downloads failed: {exc!r}\n{traceback.format_exc()}")
            skipped.append(f"downloads: failed with {exc!r}")

    if "devices" in plan.sections:
        from bench.devices import bench_devices

        fs = "tmpfs" if "tmpfs" in plan.filesystems else plan.filesystems[-1]
        log(f"== {', '.join(map(str, plan.devices))} devices at once on {fs} ({dirs[fs]})")
        try:
            results["devices"] = bench_devices(
                plan.devices, ("ours", "ours-tus", "tus"), dirs[fs], log, plan.devices_deadline
            )
            results["devices_fs"] = fs
        except Exception as exc:
            log(f"!! devices failed: {exc!r}\n{traceback.format_exc()}")
            skipped.append(f"devices: failed with {exc!r}")

    if "client" in plan.sections:
        from bench import client_links

        try:
            results["client"] = client_links.run(
                dirs["disk"], log, plan.client_wire_size, plan.client_resume_size, plan.client_rounds
            )
        except Exception as exc:
            log(f"!! client benchmarks failed: {exc!r}\n{traceback.format_exc()}")
            skipped.append(f"client: failed with {exc!r}")

    if "tus" in plan.sections:
        from bench import tus

        try:
            results["tus"] = tus.run(plan.tus_size, plan.tus_patch, plan.trials, dirs["disk"], log)
        except Exception as exc:
            log(f"!! tus benchmarks failed: {exc!r}\n{traceback.format_exc()}")
            skipped.append(f"tus: failed with {exc!r}")

    results["duration_s"] = time.monotonic() - started
    results["quiet_wait_s"] = quiet_spent()
    foreign = [
        v
        for fs in results["upload"].values()
        for table in fs.values()
        if isinstance(table, dict)
        for row in table.values()
        if isinstance(row, dict)
        for v in row.get("foreign_cores", [])
    ]
    foreign += [
        v
        for table in results.get("download", {}).values()
        for row in table.values()
        for v in row.get("foreign_cores", [])
    ]
    if foreign:
        foreign.sort()
        results["load_note"] = (
            f"load average {load_start} at the start, {loadavg()} at the end; other processes used"
            f" median {foreign[len(foreign) // 2]:.2f}, max {foreign[-1]:.2f} cores during timed runs;"
            f" {results['quiet_wait_s']:.0f} s spent waiting for quiet"
        )
    else:
        results["load_note"] = f"load average {load_start} at the start, {loadavg()} at the end"

    from bench.report import Report

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"{stamp}-{plan.name}.json").write_text(json.dumps(results, indent=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(Report(results).render())
    log(f"wrote {out} and bench/results/{stamp}-{plan.name}.json in {results['duration_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
