"""What the review page asks the state store per request: its tables are made once, when the app opens
the store, not checked again on every page and decision."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import sqlalchemy as sa
from fastapi.testclient import TestClient

from curation.review import decisions as dec
from curation.review.app import create_app
from curation.review.auth import add_user
from curation.review.queue import add_items
from schemas.records import FLAG_SCHEMA
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
    page = client.get("/items/1")
    assert page.status_code == 200
    assert statements and _table_checks(statements) == []
    statements.clear()
    seen = re.search(r'name="seen" value="([^"]+)"', page.text).group(1)
    form = {"action": "reject", "csrf_token": csrf, "seen": seen}
    decided = client.post("/items/1/decide", data=form, follow_redirects=False)
    assert decided.status_code == 303, decided.text
    assert statements and _table_checks(statements) == []
    statements.clear()
    assert client.get("/").status_code == 200
    assert _table_checks(statements) == []
    # A store call on its own: one query, no check of the tables before it.
    statements.clear()
    assert dec.get_item(engine, 2)["record_id"] == "support-1"
    assert len(statements) == 1, statements


def _in_force_reads(statements: list[str]) -> list[str]:
    # What an in-force read asks (``_in_force_per_item``): the decisions not undone. The page's other
    # reads of decisions (its revision, the item's history) count undone ones too.
    return [s for s in statements if re.search(r"review_decisions\.undone_at IS NULL", s)]


def test_an_item_page_reads_the_decisions_in_force_on_its_record_once(tmp_path: Path) -> None:
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = sa.create_engine(state_url)
    original = "Ask Dana about it."
    spans = [{"start": 4, "end": 8, "entity": "PERSON", "score": 0.5, "placeholder": "<PERSON>"}]
    payload = {"field": "completion", "original": original, "redacted": "Ask <PERSON> about it."}
    payload.update(spans=spans, redactions=[{k: spans[0][k] for k in ("start", "end", "placeholder")}])
    source = {"connector": "files", "uri": "in.jsonl", "line": 1, "page": None}
    flags = [
        {"id": "r", "source": source, "stage": "pii", "kind": kind, "detail": "d", "payload": body}
        for kind, body in (("pii", json.dumps(payload)), ("near_duplicate", "{}"))
    ]
    add_items(engine, "support", 1, "run", pa.Table.from_pylist(flags, schema=FLAG_SCHEMA))
    dec.decide(engine, 1, "pia", "edit", dec.Edit(fields={"prompt": "fixed"}, not_pii=[("completion", 4, 8)]))
    dec.decide(engine, 2, "pia", "edit", dec.Edit(fields={"prompt": "fixed again"}))
    add_user(engine, "pia", "pii-reviewer", PASSWORD)
    app = create_app(state_url)
    client = TestClient(app, base_url="https://testserver")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    client.post("/login", data={"username": "pia", "password": PASSWORD, "csrf_token": csrf})

    statements: list[str] = []
    sa.event.listen(app.state.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    # Each item's page shows the record as the decisions in force leave it: the PII item's, as those
    # through both its items do (the later edit of the prompt, made on the other item).
    for item_id, shown in ((1, 'data-value="fixed again"'), (2, 'data-value="fixed again"')):
        statements.clear()
        page = client.get(f"/items/{item_id}")
        assert page.status_code == 200 and shown in page.text
        assert len(_in_force_reads(statements)) == 1, _in_force_reads(statements)
