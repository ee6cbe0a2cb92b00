"""Several annotators on one queue: a decision from a page that no longer shows the item as it is
is refused and the annotator told, never taken over another's decision unseen."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import uuid
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

from curation.review import decisions as dec
from curation.review.app import create_app
from curation.review.auth import add_user, session_secret
from curation.review.labelstudio import LabelStudioError, export_tasks, import_annotations
from curation.review.queue import add_items, review_items
from schemas.records import FLAG_SCHEMA
from tests.review_seed import PASSWORD, Seeded, seed
from tests.test_review_access import signed_in

PII_ITEM, NEAR_DUP_ITEM = 2, 3


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seed(tmp_path_factory.mktemp("review"))


@pytest.fixture
def app(seeded: Seeded):
    return create_app(seeded.state_url, [seeded.recipe])


def form(page: str, form_id: str) -> dict[str, str]:
    """The hidden fields of one form of the page, as the browser posts them."""
    body = page.split(f'id="{form_id}"')[1].split("</form>")[0]
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', body))


def history(seeded: Seeded, item_id: int) -> list[tuple[str, str]]:
    return [(d["user"], d["action"]) for d in dec.history(sa.create_engine(seeded.state_url), item_id)]


def test_a_decision_from_a_page_shown_before_anothers_is_refused_and_says_whose(app, seeded: Seeded) -> None:
    rita, _ = signed_in(app, "rita")
    pia, _ = signed_in(app, "pia")
    # Both open the item; rita rejects it first.
    seen_by_rita = rita.get(f"/items/{NEAR_DUP_ITEM}").text
    seen_by_pia = pia.get(f"/items/{NEAR_DUP_ITEM}").text
    taken = rita.post(f"/items/{NEAR_DUP_ITEM}/decide", data={**form(seen_by_rita, "reject-form"), "action": "reject"})
    assert taken.status_code == 200 and history(seeded, NEAR_DUP_ITEM) == [("rita", "reject")]
    # pia's page still shows it open: her "not a duplicate" would silently set aside rita's rejection.
    stale = {**form(seen_by_pia, "keep-form"), "action": "keep", "query": "dataset=support"}
    refused = pia.post(f"/items/{NEAR_DUP_ITEM}/decide", data=stale)
    assert refused.status_code == 409
    assert "rita decided reject" in refused.text and "it is now rejected" in refused.text
    # Offered the item as it is now, under the queue's filters she was working through.
    assert f'href="/items/{NEAR_DUP_ITEM}?dataset=support"' in refused.text
    assert history(seeded, NEAR_DUP_ITEM) == [("rita", "reject")]
    # Looked at again, her decision is taken.
    again = pia.get(f"/items/{NEAR_DUP_ITEM}").text
    assert pia.post(f"/items/{NEAR_DUP_ITEM}/decide", data={**form(again, "keep-form"), "action": "keep"}).is_success
    assert history(seeded, NEAR_DUP_ITEM) == [("rita", "reject"), ("pia", "keep")]
    # An undo changes the item too: rita's page from before it is stale.
    before_undo = rita.get(f"/items/{NEAR_DUP_ITEM}").text
    engine = sa.create_engine(seeded.state_url)
    dec.undo_last(engine, "pia")
    refused = rita.post(
        f"/items/{NEAR_DUP_ITEM}/decide", data={**form(before_undo, "approve-form"), "action": "approve"}
    )
    assert refused.status_code == 409 and "pia undid the keep by pia" in refused.text
    dec.undo_last(engine, "rita")  # the other tests see the queue as seeded


def test_a_stale_edit_does_not_put_back_the_value_another_edit_replaced(app, seeded: Seeded) -> None:
    pia, _ = signed_in(app, "pia")
    ada, _ = signed_in(app, "ada")
    seen_by_ada = ada.get(f"/items/{PII_ITEM}").text
    seen_by_pia = pia.get(f"/items/{PII_ITEM}").text
    pia_edit = {**form(seen_by_pia, "edit-form"), "field": "completion", "value": "Call us about the refund."}
    assert pia.post(f"/items/{PII_ITEM}/decide", data=pia_edit).is_success
    # ada's box still holds the text as it was: saved, it would undo pia's edit of the field.
    typed = "Call Maria about the refund.\n<b>Today</b>"
    ada_edit = {**form(seen_by_ada, "edit-form"), "field": "completion", "value": typed}
    refused = ada.post(f"/items/{PII_ITEM}/decide", data=ada_edit)
    assert refused.status_code == 409 and "pia decided edit" in refused.text
    # What she typed is not lost: it comes back, to copy into the item as it is now.
    assert "readonly>Call Maria about the refund.\n&lt;b&gt;Today&lt;/b&gt;</textarea>" in refused.text
    engine = sa.create_engine(seeded.state_url)
    assert dec.fields_in_force(engine, PII_ITEM) == {"completion": "Call us about the refund."}
    dec.undo_last(engine, "pia")


def test_a_label_studio_annotation_of_an_item_decided_on_since_the_export_is_not_taken(seeded: Seeded) -> None:
    engine = sa.create_engine(seeded.state_url)
    tasks = export_tasks(engine, {"dataset": "support", "kind": "quarantined"})
    tasks += export_tasks(engine, {"dataset": "charts"})
    approve = {"from_name": "decision", "type": "choices", "value": {"choices": ["approve"]}}
    for task in tasks:
        task["annotations"] = [{"id": 1, "result": [approve]}]
    quarantined, vqa = (task["data"]["item_id"] for task in tasks)
    dec.decide(engine, quarantined, "rita", "reject")  # on the page, after the export
    changed: list[int] = []
    counts = import_annotations(engine, tasks, "pia", changed)
    assert counts["approve"] == 1 and counts["changed since export"] == 1 and changed == [quarantined]
    assert history(seeded, quarantined) == [("rita", "reject")] and history(seeded, vqa) == [("pia", "approve")]
    dec.undo_last(engine, "rita")
    dec.undo_last(engine, "pia")


def test_a_label_studio_export_from_another_store_is_refused(seeded: Seeded, tmp_path: Path) -> None:
    engine = sa.create_engine(seeded.state_url)
    (task,) = export_tasks(engine, {"dataset": "support", "kind": "quarantined"})
    task["annotations"] = [{"id": 1, "result": [{"from_name": "decision", "value": {"choices": ["reject"]}}]}]
    # Another store (made again, say) numbers its items itself: the task's item there is another record.
    other = sa.create_engine(f"sqlite:///{tmp_path / 'other.db'}")
    source = {"connector": "files", "uri": "in.jsonl", "line": 1, "page": None}
    flags = [
        {"id": f"other-{n}", "source": source, "stage": "s", "kind": "quarantined", "detail": "d", "payload": "{}"}
        for n in range(task["data"]["item_id"])
    ]
    add_items(other, "support", 1, "run", pa.Table.from_pylist(flags, schema=FLAG_SCHEMA))
    add_user(other, "pia", "pii-reviewer", PASSWORD)
    with pytest.raises(LabelStudioError, match=r"task 0 .*: item \d+ holds record other-\d+, not the task's"):
        import_annotations(other, [task], "pia")
    assert dec.active_decisions(other, "support") == []


def _postgres_store(request: pytest.FixtureRequest) -> tuple[str, sa.Engine]:
    """The test PostgreSQL server's URL, and an engine on it with the review tables made."""
    url = request.getfixturevalue("postgres_url")
    engine = sa.create_engine(url)
    dec.create_tables(engine)
    return url, engine


def _one_item(engine: sa.Engine) -> int:
    dataset = f"ds-{uuid.uuid4().hex[:8]}"
    source = {"connector": "files", "uri": "in.jsonl", "line": 1, "page": None}
    flag = {"id": "r1", "source": source, "stage": "s", "kind": "quarantined", "detail": "d", "payload": "{}"}
    add_items(engine, dataset, 1, "run", pa.Table.from_pylist([flag], schema=FLAG_SCHEMA))
    with engine.connect() as db:
        return db.execute(sa.select(review_items.c.item_id).where(review_items.c.dataset == dataset)).scalar_one()


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_two_servers_deciding_one_item_at_once_take_one(
    store: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}" if store == "sqlite" else request.getfixturevalue("postgres_url")
    dec.create_tables(sa.create_engine(url))
    item_id = _one_item(sa.create_engine(url))
    seen = dec.revision(sa.create_engine(url), item_id)
    # Each server reads the item's decisions, then waits for the other to have read them too (or 2 s,
    # where the store makes it wait its turn): without a lock both find the page's view current.
    both_read = threading.Barrier(2, timeout=2)
    read = dec.revision

    def revision_then_wait(db, item):
        found = read(db, item)
        if isinstance(db, sa.Connection):
            with contextlib.suppress(threading.BrokenBarrierError):
                both_read.wait()
        return found

    monkeypatch.setattr(dec, "revision", revision_then_wait)
    outcomes: list[str] = []

    def server(user: str, action: str) -> None:
        engine = sa.create_engine(url)  # each server has its own engine
        try:
            dec.decide(engine, item_id, user, action, seen=seen)
            outcomes.append("taken")
        except dec.StaleDecision:
            outcomes.append("stale")

    threads = [threading.Thread(target=server, args=args) for args in (("rita", "reject"), ("pia", "approve"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["stale", "taken"]
    assert len(dec.history(sa.create_engine(url), item_id)) == 1


def _keys_of_servers_starting_at_once(url: str, servers: int = 4) -> tuple[list[str], list[Exception]]:
    """The session signing key each of ``servers`` gets, started at once on the store; what failed."""
    engines = [sa.create_engine(url) for _ in range(servers)]
    dec.create_tables(engines[0])
    together = threading.Barrier(servers)
    keys: list[str] = []
    failures: list[Exception] = []

    def start(engine: sa.Engine) -> None:
        together.wait()
        try:
            keys.append(session_secret(engine))
        except Exception as error:  # what made a server fail to start
            failures.append(error)

    threads = [threading.Thread(target=start, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return keys, failures


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_two_servers_starting_at_once_on_a_new_store_share_one_signing_key(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    for attempt in range(5):  # each on a store without a key yet
        if store == "sqlite":
            url = f"sqlite:///{tmp_path / f'state-{attempt}.db'}"
        else:
            url = request.getfixturevalue("postgres_url")
            dec.create_tables(sa.create_engine(url))
            with sa.create_engine(url).begin() as db:
                db.execute(sa.text("DELETE FROM review_settings WHERE name = 'session_secret'"))
        keys, failures = _keys_of_servers_starting_at_once(url)
        assert failures == [] and len(keys) == 4 and len(set(keys)) == 1


def _undo_at_once(url: str, user: str, undos: int = 2) -> list[int]:
    """The decisions ``undos`` undos of ``user`` at once (two tabs, two servers) say they undid."""
    together = threading.Barrier(undos)
    said: list[int] = []

    def undo() -> None:
        engine = sa.create_engine(url)
        together.wait()
        undone = dec.undo_last(engine, user)
        if undone is not None:
            said.append(undone["decision_id"])

    threads = [threading.Thread(target=undo) for _ in range(undos)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return said


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_two_undos_at_once_undo_two_decisions(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}" if store == "sqlite" else request.getfixturevalue("postgres_url")
    engine = sa.create_engine(url)
    dec.create_tables(engine)
    user = f"ann-{uuid.uuid4().hex[:8]}"
    items = [_one_item(engine) for _ in range(20)]
    for item_id in items:
        dec.decide(engine, item_id, user, "reject")
    said = [decision for _ in range(10) for decision in _undo_at_once(url, user)]
    # Each undo said it undid a decision: each undid its own, none was undone twice and another left.
    assert len(said) == len(set(said)) == 20
    assert {dec.get_item(engine, item_id)["status"] for item_id in items} == {"open"}


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_an_undo_and_a_decision_at_once_leave_the_status_of_the_decision_in_force(
    store: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}" if store == "sqlite" else request.getfixturevalue("postgres_url")
    engine = sa.create_engine(url)
    dec.create_tables(engine)
    item_id = _one_item(engine)
    dec.decide(engine, item_id, "rita", "reject")
    # The undo reads what is left in force on the item, then waits for pia's decision to be taken (or
    # 2 s, where the store makes pia wait her turn): unlocked, it then sets the status it read, stale.
    undo_read, decided = threading.Event(), threading.Event()
    read = dec._in_force_for_item

    def read_then_wait(db, item):
        found = read(db, item)
        if threading.current_thread().name == "undo":
            undo_read.set()
            decided.wait(timeout=2)
        return found

    monkeypatch.setattr(dec, "_in_force_for_item", read_then_wait)

    def decide() -> None:
        undo_read.wait(timeout=5)
        dec.decide(sa.create_engine(url), item_id, "pia", "approve")
        decided.set()

    threads = [
        threading.Thread(target=dec.undo_last, args=(sa.create_engine(url), "rita"), name="undo"),
        threading.Thread(target=decide, name="decide"),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [(d["user"], d["undone_at"] is not None) for d in dec.history(engine, item_id)] == [
        ("rita", True),
        ("pia", False),
    ]
    assert dec.get_item(engine, item_id)["status"] == "approved"


def test_two_undos_retrying_onto_each_others_items_do_not_deadlock(request: pytest.FixtureRequest) -> None:
    url, engine = _postgres_store(request)
    first, second = _one_item(engine), _one_item(engine)
    rita, pia = (f"{name}-{uuid.uuid4().hex[:8]}" for name in ("rita", "pia"))
    # rita decided on the first item, then the second; pia on the second, then the first.
    rita_older = dec.decide(engine, first, rita, "reject")
    rita_latest = dec.decide(engine, second, rita, "reject")
    pia_older = dec.decide(engine, second, pia, "reject")
    pia_latest = dec.decide(engine, first, pia, "reject")
    items = {rita_latest: second, pia_latest: first}

    # Each one's other tab undoes their latest decision, as undo_last does, and holds its transaction open.
    tabs = [sa.create_engine(url).connect() for _ in items]
    for tab, (decision, item_id) in zip(tabs, items.items(), strict=True):
        tab.execute(review_items.update().where(review_items.c.item_id == item_id).values(status="open"))
        tab.execute(dec.decisions.update().where(dec.decisions.c.decision_id == decision).values(undone_at=dec._now()))
    undone: list[int] = []
    failed: list[Exception] = []

    def undo(user: str) -> None:
        try:
            undone.append(dec.undo_last(sa.create_engine(url), user)["decision_id"])
        except Exception as error:  # a deadlock: PostgreSQL aborts one of the two
            failed.append(error)

    threads = [threading.Thread(target=undo, args=(user,)) for user in (rita, pia)]
    for thread in threads:
        thread.start()
    # Both undos found their latest decision, and wait for its item (locked by the other tab).
    with engine.connect() as db:
        waiting = sa.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
        for _ in range(200):
            if db.execute(waiting).scalar_one() >= 2:
                break
            db.rollback()  # pg_stat_activity is read once a transaction
            threading.Event().wait(0.05)
        else:
            pytest.fail("the undos did not wait for the other tabs' locks")
    for tab in tabs:  # the other tabs' undos are taken: each undo goes on to the user's older decision
        tab.commit()
        tab.close()
    for thread in threads:
        thread.join(timeout=30)
    assert failed == []
    assert sorted(undone) == sorted([rita_older, pia_older])
    assert {dec.get_item(engine, item_id)["status"] for item_id in (first, second)} == {"open"}


def test_a_label_studio_task_without_a_record_id_is_taken_only_as_its_items_dataset_and_text(
    seeded: Seeded, tmp_path: Path
) -> None:
    engine = sa.create_engine(seeded.state_url)
    (task,) = export_tasks(engine, {"dataset": "support", "kind": "quarantined"})
    (pii,) = export_tasks(engine, {"dataset": "support", "kind": "pii"})  # redacted
    reject = [{"from_name": "decision", "value": {"choices": ["reject"]}}]
    for each in (task, pii):
        each["annotations"] = [{"id": 1, "result": reject}]
        del each["data"]["record_id"]  # a task made without it
    # Another store's item of that id (same dataset) holds another record: its text tells.
    other = sa.create_engine(f"sqlite:///{tmp_path / 'other.db'}")
    source = {"connector": "files", "uri": "in.jsonl", "line": 1, "page": None}
    payload = json.dumps({"reason": "bad_json", "record": "{not json"})
    flags = [
        {"id": f"other-{n}", "source": source, "stage": "s", "kind": "quarantined", "detail": "d", "payload": payload}
        for n in range(task["data"]["item_id"])
    ]
    add_items(other, "support", 1, "run", pa.Table.from_pylist(flags, schema=FLAG_SCHEMA))
    add_user(other, "pia", "pii-reviewer", PASSWORD)
    said = rf"task 0 .* has no data.record_id, and its dataset and text are not those of item {task['data']['item_id']}"
    with pytest.raises(LabelStudioError, match=said):
        import_annotations(other, [task], "pia")
    assert dec.active_decisions(other, "support") == []
    # Nor one of another dataset, in its own store.
    elsewhere = {**task, "data": {**task["data"], "dataset": "charts"}}
    with pytest.raises(LabelStudioError, match=r"has no data\.record_id"):
        import_annotations(engine, [elsewhere], "pia")
    # Its own item's dataset and text: taken.
    assert import_annotations(engine, [task, pii], "pia")["reject"] == 2
    assert [history(seeded, each["data"]["item_id"])[-1] for each in (task, pii)] == [("pia", "reject")] * 2
    dec.undo_last(engine, "pia")
    dec.undo_last(engine, "pia")


def test_a_run_reads_no_decision_committed_after_it_beneath_the_mark_it_records(
    request: pytest.FixtureRequest,
) -> None:
    # PostgreSQL numbers rows as they are inserted: a decision inserted later but committed first would
    # put a number above one still uncommitted, and a run reading up to it would miss that one for good.
    url, engine = _postgres_store(request)
    first, second = _one_item(engine), _one_item(engine)
    slow = sa.create_engine(url)  # a server whose transaction is slow to commit after its insert
    inserted, go_on = threading.Event(), threading.Event()

    @sa.event.listens_for(slow, "after_cursor_execute")
    def pause_after_insert(conn, cursor, statement, *args) -> None:
        if statement.lstrip().startswith(f"INSERT INTO {dec.decisions.name}"):
            inserted.set()
            go_on.wait(10)

    taken: dict[str, int] = {}

    def server(name: str, engine: sa.Engine, item_id: int) -> None:
        taken[name] = dec.decide(engine, item_id, name, "reject")

    threads = [threading.Thread(target=server, args=("rita", slow, first))]
    threads[0].start()
    assert inserted.wait(10)
    threads.append(threading.Thread(target=server, args=("pia", sa.create_engine(url), second)))
    threads[1].start()
    threads[1].join(0.5)  # pia's decision waits for rita's to commit
    mark = dec.mark_now(engine)  # what a run starting now reads
    go_on.set()
    for thread in threads:
        thread.join(10)
    assert taken["rita"] > mark.decided and taken["pia"] > mark.decided


def test_an_undo_after_an_earlier_release_run_is_a_change_though_numbered_before_an_older_undo(
    tmp_path: Path,
) -> None:
    # While a review server of the earlier release still runs, its undo of X (made before the earlier
    # release's run started) is numbered only later, after this release's undo of Y (made after that run
    # started). A mark taken from the numbers by that run's start counted Y as undone then: never applied.
    from datetime import UTC, datetime, timedelta

    url = f"sqlite:///{tmp_path / 'state.db'}"
    server = sa.create_engine(url)
    dec.create_tables(server)
    first, second = _one_item(server), _one_item(server)
    with server.begin() as db:  # one dataset
        dataset = db.execute(sa.select(review_items.c.dataset).where(review_items.c.item_id == first)).scalar_one()
        db.execute(review_items.update().where(review_items.c.item_id == second).values(dataset=dataset))
    x = dec.decide(server, first, "old", "reject")
    dec.decide(server, second, "new", "reject")
    now = datetime.now(UTC)
    with server.begin() as db:  # the earlier release's undo of X: stamped, not numbered
        db.execute(dec.decisions.update().values(at=now - timedelta(seconds=10)))
        where = dec.decisions.c.decision_id == x
        db.execute(dec.decisions.update().where(where).values(undone_at=now - timedelta(seconds=2), undone_by="old"))
    earlier_run = dec.DecisionMark(at=now - timedelta(seconds=1))  # X undone, Y's rejection in force
    assert dec.undo_last(server, "new")["item_id"] == second  # numbered 1
    run = sa.create_engine(url)  # a fresh engine numbers X's undo: 2
    changed = [c.then["item_id"] for c in dec.changes(run, dataset, earlier_run, dec.mark_now(run))]
    assert changed == [second]


def test_a_writer_of_the_earlier_release_and_a_decision_on_one_item_wait_for_each_other_not_deadlock(
    request: pytest.FixtureRequest,
) -> None:
    # The earlier release locks the item's row, then writes a decision (the table's row-exclusive lock);
    # taken the other way round (the table first), a decision on the same item deadlocked with it.
    from datetime import UTC, datetime

    url, engine = _postgres_store(request)
    item_id = _one_item(engine)
    item = dec.get_item(engine, item_id)
    errors: list[BaseException] = []
    with sa.create_engine(url).connect() as old:
        old.execute(review_items.update().where(review_items.c.item_id == item_id).values(status="open"))

        def decide() -> None:
            try:
                dec.decide(sa.create_engine(url), item_id, "pia", "reject")
            except Exception as error:
                errors.append(error)

        thread = threading.Thread(target=decide)
        thread.start()
        thread.join(0.5)  # waits for the item's row
        row = {"item_id": item_id, "dataset": item["dataset"], "record_id": item["record_id"], "user": "rita"}
        old.execute(
            dec.decisions.insert().values(**row, at=datetime.now(UTC), action="reject", before="{}", after="{}")
        )
        old.commit()
        thread.join(10)
    assert errors == [] and [d["user"] for d in dec.history(engine, item_id)] == ["rita", "pia"]
