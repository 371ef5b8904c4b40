# The two commands of the README: `make run` and `make test` (`make test-fast`: the quick layer).
# The venv (runtime and development requirements: requirements-dev.txt includes requirements.txt)
# is rebuilt only when either file changes (stamp file). The Docker image installs requirements.txt only.
# `make run ARGS=--verbose` also shows the children's output (always in FT_DATA_DIR/logs).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements.stamp

.PHONY: run test test-fast test-slow bench venv clean web-assets lint

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=...)")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $(STAMP)

run: $(STAMP)
	@exec $(PY) -m launcher $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The in-process layer (app on fakeredis, no redis-server, uvicorn or Celery) and the pure unit
# tests: the developer's loop. `make test` runs these too, and everything else. (The schemathesis
# plugin only serves tests/e2e/test_schema_fuzz.py; not loading it saves a second of start-up.)
test-fast: $(STAMP)
	HYPOTHESIS_PROFILE=dev $(PY) -m pytest -q -p no:schemathesis -m "not real_redis" tests/fast tests/unit $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow --run-slow $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench

# What the code must pass before a commit: ruff's lint rules and format, mypy strict on core/ and
# api/ (configuration in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The web page's browser assets (Uppy, Swagger UI): pinned in web/package-lock.json, copied into
# api/static/vendor/ and committed there, so `make run` needs neither Node nor a network.
web-assets:
	cd web && npm ci --no-audit --no-fund --loglevel=error
	while read -r source target; do cp "web/node_modules/$$source" "api/static/vendor/$$target"; done < web/vendor-files.txt

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
