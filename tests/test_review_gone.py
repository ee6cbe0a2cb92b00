"""An item whose record a later run did not find (its line removed or edited in an input read again):
the queue and the item page say a decision on it has no effect, and a decision is still taken."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from xml.etree import ElementTree

import pyarrow as pa
import sqlalchemy as sa
from fastapi.testclient import TestClient

from curation.review import decisions as dec
from curation.review.app import create_app
from curation.review.auth import add_user
from curation.review.labelstudio import LABEL_CONFIGS, export_tasks, import_annotations, label_config
from curation.review.queue import add_items, gone_records, note_read, review_items
from schemas.config import load_recipe
from schemas.records import FLAG_SCHEMA
from tests.helpers import lineage_rows, run, set_aside, write_jsonl
from tests.test_carry import notes, recipe
from tests.test_review_cli import review

PASSWORD = "correct horse battery"


def flag_records(state_url: str, version: Path, questions: list[str]) -> dict[str, int]:
    """Queue the published records asking ``questions`` for review, as a stage flags them; their items."""
    lineage = lineage_rows(version)
    lines = {row["shard"]: (version / row["shard"]).read_text().splitlines() for row in lineage}
    rows = {row["id"]: row for row in lineage}
    by_question = {lines[row["shard"]][row["line"] - 1]: record for record, row in rows.items()}
    records = {q: next(record for line, record in by_question.items() if q in line) for q in questions}
    flags = [
        {"id": record, "source": rows[record]["source"], "stage": "s", "kind": "pii", "detail": q, "payload": "{}"}
        for q, record in records.items()
    ]
    engine = sa.create_engine(state_url)
    add_items(engine, "notes", 1, "flagging", pa.Table.from_pylist(flags, schema=FLAG_SCHEMA))
    with engine.connect() as db:
        items = {row.record_id: row.item_id for row in db.execute(sa.select(review_items))}
    return {q: items[record] for q, record in records.items()}


def test_a_record_gone_from_its_input_is_shown_and_a_decision_on_it_still_taken(workdir: Path) -> None:
    rows = notes(0, 10)
    write_jsonl(workdir / "in" / "a.jsonl", rows)
    write_jsonl(workdir / "in" / "b.jsonl", notes(10, 3))
    one = Path(run(workdir, recipe("out")).version_uri)
    state_url = load_recipe(workdir / "recipe.yaml").state
    engine = sa.create_engine(state_url)
    dropped, kept, elsewhere = (rows[3]["q"], rows[5]["q"], notes(10, 1)[0]["q"])
    items = flag_records(state_url, one, [dropped, kept, elsewhere])

    # a.jsonl changes (line 4 removed), so the next run reads it whole; b.jsonl is carried as it was.
    write_jsonl(workdir / "in" / "a.jsonl", [row for row in rows if row["q"] != dropped])
    run(workdir, recipe("out"))
    records = {q: dec.get_item(engine, item)["record_id"] for q, item in items.items()}
    assert gone_records(engine, "notes", list(records.values())) == {records[dropped]}

    add_user(engine, "rita", "pii-reviewer", PASSWORD)
    client = TestClient(create_app(state_url), base_url="https://testserver")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    client.post("/login", data={"username": "rita", "password": PASSWORD, "csrf_token": csrf})
    page = client.get(f"/items/{items[dropped]}").text
    assert 'id="gone"' in page and "this record is no longer in the input" in page and "no effect" in page
    assert 'id="gone"' not in client.get(f"/items/{items[kept]}").text
    assert 'id="gone"' not in client.get(f"/items/{items[elsewhere]}").text
    queue = client.get("/").text
    listed = dict(re.findall(r'<td><a href="/items/(\d+)">\d+</a></td>.*?<td class="status">(.*?)</td>', queue, re.S))
    assert "no longer in the input" in listed[str(items[dropped])]
    assert "no longer in the input" not in listed[str(items[kept])] + listed[str(items[elsewhere])]

    # A decision is taken all the same, and the annotator told it has no effect.
    seen = re.search(r'name="seen" value="([^"]+)"', page).group(1)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # the session's, since signing in
    form = {"action": "reject", "csrf_token": csrf, "seen": seen}
    answer = client.post(f"/items/{items[dropped]}/decide", data=form)
    assert answer.status_code == 200 and "no longer in the input" in answer.text
    assert dec.get_item(engine, items[dropped])["status"] == "rejected"

    # The line put back as it was: the record is found again, and the rejection applies to it.
    write_jsonl(workdir / "in" / "a.jsonl", rows)
    three = Path(run(workdir, recipe("out")).version_uri)
    assert gone_records(engine, "notes", list(records.values())) == set()
    assert [row["id"] for row in set_aside(three) if row["reason"] == "review"] == [records[dropped]]
    assert 'id="gone"' not in client.get(f"/items/{items[dropped]}").text


def test_a_full_refresh_that_no_longer_finds_a_removed_inputs_records_says_so(workdir: Path) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 4))
    write_jsonl(workdir / "in" / "b.jsonl", notes(4, 4))
    one = Path(run(workdir, recipe("out")).version_uri)
    state_url = load_recipe(workdir / "recipe.yaml").state
    engine = sa.create_engine(state_url)
    items = flag_records(state_url, one, [notes(0, 1)[0]["q"], notes(4, 1)[0]["q"]])
    records = {q: dec.get_item(engine, item)["record_id"] for q, item in items.items()}
    # Removed, b.jsonl's records stay carried (decisions reach carried records); a full refresh drops them.
    (workdir / "in" / "b.jsonl").unlink()
    write_jsonl(workdir / "in" / "c.jsonl", notes(8, 1))
    run(workdir, recipe("out"))
    assert gone_records(engine, "notes", list(records.values())) == set()
    run(workdir, recipe("out"), full_refresh=True)
    assert gone_records(engine, "notes", list(records.values())) == {records[notes(4, 1)[0]["q"]]}


def queue_with_one_gone(state_url: str) -> sa.Engine:
    """Items 1-3 (pii, open, of records r1-r3 of a.jsonl), r2 no longer in the input."""
    engine = sa.create_engine(state_url)
    source = {"connector": "files", "uri": "a.jsonl", "line": 1, "page": None}
    flags = [
        {"id": f"r{n}", "source": source, "stage": "pii", "kind": "pii", "detail": f"row {n}", "payload": "{}"}
        for n in (1, 2, 3)
    ]
    add_items(engine, "notes", 1, "one", pa.Table.from_pylist(flags, schema=FLAG_SCHEMA))
    note_read(engine, "notes", "two", {"r1", "r3"}, {"a.jsonl"})  # a.jsonl read whole again, without r2
    return engine


def test_items_no_longer_in_the_input_are_counted_apart_from_those_left_to_do(tmp_path: Path) -> None:
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = queue_with_one_gone(state_url)
    add_user(engine, "rita", "reviewer", PASSWORD)
    client = TestClient(create_app(state_url), base_url="https://testserver")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    client.post("/login", data={"username": "rita", "password": PASSWORD, "csrf_token": csrf})

    def counts() -> tuple[str, str | None]:
        queue = client.get("/").text
        left = re.search(r'data-kind="pii">\s*<strong>(\d+)</strong>', queue).group(1)
        gone = re.search(r'data-kind="pii">[^<]*<strong>\d+</strong>[^<]*<span class="gone" data-gone="(\d+)"', queue)
        return left, gone and gone.group(1)

    def decide(item: int) -> str:
        page = client.get(f"/items/{item}").text
        seen = re.search(r'name="seen" value="([^"]+)"', page).group(1)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # the session's, since signing in
        form = {"action": "approve", "csrf_token": csrf, "seen": seen}
        return client.post(f"/items/{item}/decide", data=form, follow_redirects=False).headers["location"]

    # Item 2's record is gone: a decision on it has no effect, so it is not left to do, but counted apart.
    assert counts() == ("2", "1")
    assert decide(1) == "/items/3"  # the next open item left to do: not item 2
    assert decide(3) == "/"
    assert counts() == ("0", "1")  # the work is done; item 2 stays open, and said to be so
    version = client.get("/datasets/notes/v1").text
    assert "0 pii" in version and 'id="gone-items">1</span> open, no longer in the input' in version
    # Its link lists what the counts beside it count: the open items left, not item 2.
    link = html.unescape(re.search(r'<a href="([^"]+)" id="version-queue">', version).group(1))
    assert '<tr class="status-' not in client.get(link).text
    dec.undo_last(engine, "rita")  # item 3 open again: listed, and counted
    version = client.get("/datasets/notes/v1").text
    assert "1 pii" in version
    listed = re.findall(r'<td><a href="/items/(\d+)[^"]*">\d+</a>', client.get(link).text)
    assert listed == ["3"], listed


def test_label_studio_tasks_say_which_records_are_no_longer_in_the_input(tmp_path: Path) -> None:
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = queue_with_one_gone(state_url)
    add_user(engine, "rita", "reviewer", PASSWORD)
    tasks = export_tasks(engine, {"status": "open"})
    assert {task["data"]["item_id"]: task["data"]["gone"] for task in tasks} == {1: False, 2: True, 3: False}

    # As on the page, a decision on item 2 is taken, and the import names it: it has no effect for now.
    reject = [{"from_name": "decision", "type": "choices", "value": {"choices": ["reject"]}}]
    for task in tasks:
        task["annotations"] = [{"id": task["data"]["item_id"], "result": reject}]
    exported = tmp_path / "ls-export.json"
    exported.write_text(json.dumps(tasks))
    done = review("import", str(exported), "--user", "rita", "--state", state_url, cwd=tmp_path)
    assert done.returncode == 0 and "3 reject" in done.stderr, done.stderr
    assert "taken, but no longer in the input (no effect unless the record comes back): item(s) 2" in done.stderr
    assert [dec.get_item(engine, item)["status"] for item in (1, 2, 3)] == ["rejected"] * 3
    out = tmp_path / "tasks.json"
    done = review("export", str(out), "--state", state_url, cwd=tmp_path)
    assert done.returncode == 0 and "3 task(s) written" in done.stderr
    assert "1 of them (data.gone) no longer in the input" in done.stderr


def test_the_left_links_hide_items_no_longer_in_the_input_and_next_and_previous_skip_them(tmp_path: Path) -> None:
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    queue_with_one_gone(state_url)  # items 1-3, item 2's record gone
    add_user(sa.create_engine(state_url), "rita", "reviewer", PASSWORD)
    client = TestClient(create_app(state_url), base_url="https://testserver")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    client.post("/login", data={"username": "rita", "password": PASSWORD, "csrf_token": csrf})

    def listed(query: str) -> list[int]:
        page = client.get(f"/?{query}").text
        return [int(n) for n in re.findall(r'<tr class="status-\w+">\s*<td><a href="/items/(\d+)', page)]

    queue = client.get("/").text
    left = html.unescape(re.search(r'<a class="count" href="([^"]+)" data-kind="pii">', queue).group(1))
    assert listed(left.removeprefix("/?")) == [1, 3]  # "2 pii left" lists those two
    assert listed("gone=only") == [2] and listed("") == listed("gone=show") == [1, 2, 3]
    # Not a value of the filter: refused, saying which are (tests/test_review_errors.py); empty is the default.
    assert client.get("/?gone=hidden").status_code == 400 and listed("gone=") == [1, 2, 3]
    # The counts stay the same whatever the list shows: 2 left, and 1 open no longer in the input.
    for query in ("", "gone=hide", "gone=only"):
        page = client.get(f"/?{query}").text
        assert re.search(r'data-kind="pii">\s*<strong>2</strong>[^<]*<span class="gone" data-gone="1"', page)

    # An item page from that list steps over item 2, and counts its place without it.
    query = "kind=pii&status=open&gone=hide"
    first = client.get(f"/items/1?{query}").text
    assert "<span>1 of 2</span>" in first
    assert 'id="next" href="/items/3?kind=pii&amp;status=open&amp;gone=hide"' in first
    last = client.get(f"/items/3?{query}").text
    assert "<span>2 of 2</span>" in last and 'id="previous" href="/items/1?' in last and 'id="next"' not in last
    assert 'id="not-listed">not among the 2 item(s)' in client.get(f"/items/2?{query}").text
    # Shown, they are stepped onto as before.
    assert 'id="next" href="/items/2' in client.get("/items/1?kind=pii&status=open").text


def test_an_import_asks_which_records_are_gone_once_not_once_per_decision(tmp_path: Path) -> None:
    engine = queue_with_one_gone(f"sqlite:///{tmp_path / 'state.db'}")
    add_user(engine, "rita", "reviewer", PASSWORD)
    tasks = export_tasks(engine)
    reject = [{"from_name": "decision", "type": "choices", "value": {"choices": ["reject"]}}]
    for task in tasks:
        task["annotations"] = [{"id": task["data"]["item_id"], "result": reject}]
    asked: list[str] = []

    def note(conn, cursor, statement, *args) -> None:
        if "FROM review_gone" in statement:
            asked.append(statement)

    sa.event.listen(engine, "before_cursor_execute", note)
    gone: list[int] = []
    assert import_annotations(engine, tasks, "rita", gone=gone)["reject"] == 3
    assert gone == [2] and len(asked) == 1, asked


def test_label_studios_labeling_interface_says_an_item_is_no_longer_in_the_input(tmp_path: Path) -> None:
    engine = queue_with_one_gone(f"sqlite:///{tmp_path / 'state.db'}")
    tasks = export_tasks(engine)
    notes = {task["data"]["item_id"]: task["data"]["gone_note"] for task in tasks}
    assert notes[1] == notes[3] == "" and "no longer in the input: a decision has no effect" in notes[2]
    for kind in LABEL_CONFIGS:
        config = ElementTree.fromstring(label_config(kind, tasks))
        assert (config[0].tag, config[0].get("value")) == ("Header", "$gone_note"), kind  # above the item
