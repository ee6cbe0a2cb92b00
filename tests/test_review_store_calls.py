"""What the review page asks the state store per request: its tables are made once, when the app opens
the store, not checked again on every page and decision."""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy as sa
from fastapi.testclient import TestClient

from curation.review import decisions as dec
from curation.review.app import create_app
from curation.review.auth import add_user
from tests.test_review_queue_page import queue_of

PASSWORD = "correct horse battery"


def _table_checks(statements: list[str]) -> list[str]:
    # SQLAlchemy's checkfirst: a PRAGMA per table on SQLite, then CREATE TABLE for those missing.
    return [s for s in statements if "table_info" in s.lower() or s.lstrip().upper().startswith("CREATE")]


def test_pages_and_decisions_do_not_check_the_tables_again(tmp_path: Path) -> None:
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    queue_of(state_url, "support", 3)
    add_user(sa.create_engine(state_url), "rita", "reviewer", PASSWORD)
    app = create_app(state_url)
    client = TestClient(app, base_url="https://testserver")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    client.post("/login", data={"username": "rita", "password": PASSWORD, "csrf_token": csrf})

    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/").text).group(1)  # the session's own

    engine: sa.Engine = app.state.engine
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    assert client.get("/items/1").status_code == 200
    assert statements and _table_checks(statements) == []
    statements.clear()
    decided = client.post("/items/1/decide", data={"action": "reject", "csrf_token": csrf}, follow_redirects=False)
    assert decided.status_code == 303, decided.text
    assert statements and _table_checks(statements) == []
    statements.clear()
    assert client.get("/").status_code == 200
    assert _table_checks(statements) == []
    # A store call on its own: one query, no check of the tables before it.
    statements.clear()
    assert dec.get_item(engine, 2)["record_id"] == "support-1"
    assert len(statements) == 1, statements
