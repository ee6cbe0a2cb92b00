"""What an annotator gets for a request the page cannot serve: the page's own error page saying what
went wrong, never the framework's JSON."""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy as sa
from fastapi.testclient import TestClient

from curation.review.app import create_app
from curation.review.auth import add_user

PASSWORD = "correct horse battery"


def test_unknown_pages_bad_paths_and_oversized_forms_get_the_error_page(tmp_path: Path) -> None:
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    app = create_app(state_url)
    add_user(sa.create_engine(state_url), "rita", "reviewer", PASSWORD)
    client = TestClient(app, base_url="https://testserver")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    client.post("/login", data={"username": "rita", "password": PASSWORD, "csrf_token": csrf})
    for method, path, data, status, said in (
        ("GET", "/nothing-here", None, 404, "Not Found"),
        ("GET", "/items/abc", None, 404, "/items/abc: item_id: Input should be a valid integer"),
        ("GET", "/datasets/support/vx", None, 404, "version: Input should be a valid integer"),
        ("GET", "/logout", None, 405, "Method Not Allowed"),
        # An edit over the page's limit for a form (4 MiB), refused before it is read.
        ("POST", "/items/1/decide", {"csrf_token": csrf, "value": "x" * 5 * 2**20}, 413, "too large to take"),
    ):
        response = client.request(method, path, data=data)
        assert response.status_code == status, path
        assert response.headers["content-type"].startswith("text/html"), path
        assert said in response.text and "rita" in response.text, path  # the page, signed in
