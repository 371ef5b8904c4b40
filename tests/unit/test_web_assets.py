"""The web page's files and the API docs, without a server: vendored assets match the locked
npm packages, the HTML has no inline script and no outside URL, every endpoint is described."""

from __future__ import annotations

import re
import zlib

import pytest

from api.main import create_app
from core.config import Settings
from tests.support import JWT_SECRET, ROOT

STATIC = ROOT / "api" / "static"
NODE_MODULES = ROOT / "web" / "node_modules"


def vendored() -> list[tuple[str, str]]:
    lines = (ROOT / "web" / "vendor-files.txt").read_text().split("\n")
    return [tuple(line.split()) for line in lines if line.strip()]


@pytest.mark.parametrize("source,target", vendored())
def test_committed_vendor_files_equal_the_locked_packages(source, target):
    committed = STATIC / "vendor" / target
    assert committed.is_file(), f"{committed} is missing: run `make web-assets`"
    if not NODE_MODULES.is_dir():
        pytest.skip("web/node_modules is absent (no `npm ci` here): nothing to compare with")
    assert committed.read_bytes() == (NODE_MODULES / source).read_bytes(), (
        f"{target} differs from web/node_modules/{source}: run `make web-assets` and commit"
    )


def test_locked_versions_are_the_ones_in_package_json():
    import json

    manifest = json.loads((ROOT / "web" / "package.json").read_text())
    lock = json.loads((ROOT / "web" / "package-lock.json").read_text())
    for name, version in manifest["dependencies"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} must be pinned exactly"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version


@pytest.mark.parametrize("page", ["index.html", "docs.html"])
def test_pages_load_only_external_local_scripts(page):
    html = (STATIC / page).read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.S)
    assert scripts, "the page has scripts"
    for attributes, body in scripts:
        assert body.strip() == "", "inline scripts are forbidden by the page's CSP"
        assert re.search(r'src="/static/[^"]+"', attributes)
    assert not re.search(r"\bon[a-z]+=", html), "inline event handlers are inline scripts too"
    assert not re.search(r"(?:src|href)=\"(?:https?:)?//", html), "no asset from another host"


def test_every_endpoint_has_a_summary_and_a_description(tmp_path):
    app = create_app(Settings(data_dir=tmp_path, jwt_secret=JWT_SECRET))
    schema = app.openapi()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert operation.get("summary"), f"{method.upper()} {path} has no summary"
            assert len(operation.get("description", "")) >= 80, f"{method.upper()} {path} is not explained"
    upload = schema["paths"]["/upload/{file_id}"]["post"]["description"]
    assert "12-byte chunk header" in upload and "Worked example" in upload
    for payload in (b"hello ", b"world\n"):  # the example's CRCs are the real ones
        assert f"{zlib.crc32(payload):08x}" in upload
    example_rows = [line for line in upload.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert len(example_rows) == 2 and all(row.count("|") == 6 for row in example_rows)
    assert "/docs" not in {route.path for route in app.routes if getattr(route, "include_in_schema", False)}
