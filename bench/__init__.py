"""`make bench`: throughput and memory of the File Transfer API against reference servers.

    .venv/bin/python -m bench [--quick] [--only upload,download,...] [--trials N] [--out PATH]

Starts everything itself (own redis-server on a free port, the API under uvicorn, a Celery
worker, nginx, @tus/server) on fresh temporary data directories, runs interleaved trials and
rewrites docs/BENCHMARKS.md (a full run) or bench/results/*.md (a partial or quick run).
"""
