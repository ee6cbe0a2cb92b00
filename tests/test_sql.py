"""The SQL connector against SQLite and a real PostgreSQL server (tests/pg.py starts one)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connectors.sql import SqlSourceError, SqlSourceReader
from connectors.state import Watermarks
from schemas.config import RecipeError, SqlSource
from tests.helpers import lineage_rows, outputs, processed, run, set_aside, sqlite_db, strict_json, write_jsonl

CUSTOMERS = sa.MetaData()
tickets = sa.Table(
    "tickets",
    CUSTOMERS,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("subject", sa.String(200), nullable=False),
    sa.Column("reply", sa.Text),
    sa.Column("amount", sa.Numeric(10, 2)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
START = datetime(2026, 1, 1, tzinfo=UTC)


def fill(url: str, first: int, count: int) -> None:
    engine = sa.create_engine(url)
    CUSTOMERS.create_all(engine)
    rows = [
        {
            "id": i,
            "subject": f"Card declined abroad #{i}",
            "reply": f"Travel notice set for ticket {i}.",
            "amount": Decimal(f"{i}.25"),
            "updated_at": START + timedelta(minutes=i),
        }
        for i in range(first, first + count)
    ]
    with engine.begin() as db:
        db.execute(tickets.insert(), rows)
    engine.dispose()


def read_all(config: SqlSource, batch_rows: int, watermark=None) -> list:
    return list(SqlSourceReader(config, batch_rows, watermark).batches())


def recipe(url: str, **source: object) -> dict:
    return {
        "dataset": "support",
        "sources": [{"type": "sql", "url": url, **source}],
        "record": {"kind": "instruction", "prompt": "{{ subject }}", "completion": "{{ reply }}"},
        "output": {"validation_fraction": 0.0},
    }


def test_sqlite_table_is_read_in_bounded_batches(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/crm.db"
    fill(url, 1, 23)
    batches = read_all(SqlSource(type="sql", url=url, table="tickets"), batch_rows=5)
    assert [b.rows.num_rows for b in batches] == [5, 5, 5, 5, 3]
    rows = [row for b in batches for row in b.rows.to_pylist()]
    assert [r["input_id"] for r in rows] == list(range(1, 24))  # the table's own id, kept beside the record id
    assert rows[0]["amount"] == Decimal("1.25")
    assert rows[4]["source"] == {"connector": "sql", "uri": f"{url}#tickets", "line": 5, "page": None}
    assert len({r["id"] for r in rows}) == 23


def test_sqlite_query_runs_end_to_end(workdir: Path) -> None:
    url = f"sqlite:///{workdir}/crm.db"
    fill(url, 1, 12)
    result = run(workdir, recipe(url, query="SELECT subject, reply FROM tickets WHERE id % 2 = 0;"))
    lines = outputs(Path(result.version_uri))
    assert sorted(line["prompt"] for line in lines) == sorted(f"Card declined abroad #{i}" for i in range(2, 13, 2))
    assert result.manifest.counts.input == 6
    assert result.manifest.inputs[0].uri.endswith("#query-" + result.manifest.inputs[0].uri.rsplit("-", 1)[1])


def test_cursor_takes_only_rows_past_the_watermark(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/crm.db"
    fill(url, 1, 10)
    config = SqlSource(type="sql", url=url, table="tickets", cursor="id")
    engine = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    marks = Watermarks(engine, "support")
    first = read_all(config, 4, marks.for_source(config))
    assert sum(b.rows.num_rows for b in first) == 10
    marks.commit("run1")
    fill(url, 11, 3)
    again = Watermarks(engine, "support")
    second = read_all(config, 4, again.for_source(config))
    assert [r["input_id"] for b in second for r in b.rows.to_pylist()] == [11, 12, 13]


@pytest.mark.parametrize("stages", [[{"type": "exact_dedup"}], [{"type": "exact_dedup"}, {"type": "near_dedup"}]])
def test_an_edited_row_with_a_key_replaces_its_published_version(workdir: Path, stages: list) -> None:
    url = f"sqlite:///{workdir}/crm.db"
    fill(url, 1, 6)
    spec = {**recipe(url, table="tickets", cursor="updated_at", key=["id"]), "stages": stages}
    v1 = Path(run(workdir, spec).version_uri)
    assert len(outputs(v1)) == 6
    engine = sa.create_engine(url)
    with engine.begin() as db:  # ticket 5's reply is corrected, and ticket 7 comes in
        db.execute(
            tickets.update()
            .where(tickets.c.id == 5)
            .values(reply="Travel notice set for ticket 5; card reissued.", updated_at=START + timedelta(days=1))
        )
    fill(url, 7, 1)
    second = run(workdir, spec)
    v2 = Path(second.version_uri)
    replies = sorted(line["completion"] for line in outputs(v2))
    assert len(replies) == 7 and "Travel notice set for ticket 5." not in replies
    assert "Travel notice set for ticket 5; card reissued." in replies
    assert second.manifest.counts.written == 2 and second.manifest.counts.carried == 5
    assert second.manifest.stats["carry"]["replaced"] == 1


def test_a_delta_version_holds_an_edited_keyed_row_even_when_it_is_near_its_old_text(workdir: Path) -> None:
    url = f"sqlite:///{workdir}/crm.db"
    fill(url, 1, 6)
    spec = {
        **recipe(url, table="tickets", cursor="updated_at", key=["id"]),
        "stages": [{"type": "exact_dedup"}, {"type": "near_dedup", "threshold": 0.5}],
        "output": {"validation_fraction": 0.0, "carry_forward": False},
    }
    run(workdir, spec)
    engine = sa.create_engine(url)
    with engine.begin() as db:  # a word added to ticket 5's reply: near its published text
        reply = "Travel notice set for ticket 5 today."
        db.execute(tickets.update().where(tickets.c.id == 5).values(reply=reply, updated_at=START + timedelta(days=1)))
    engine.dispose()
    delta = run(workdir, spec)
    assert [line["completion"] for line in outputs(Path(delta.version_uri))] == [reply]


def test_a_keyed_row_is_published_as_it_is_now_whatever_it_held_or_other_rows_hold(workdir: Path) -> None:
    url = f"sqlite:///{workdir}/crm.db"
    fill(url, 1, 5)
    spec = {**recipe(url, table="tickets", cursor="updated_at", key=["id"]), "stages": [{"type": "exact_dedup"}]}
    run(workdir, spec)
    engine = sa.create_engine(url)

    def edit(ticket: int, minutes: int, **values: str) -> list[tuple[str, str]]:
        with engine.begin() as db:
            moved = START + timedelta(days=1, minutes=minutes)
            db.execute(tickets.update().where(tickets.c.id == ticket).values(updated_at=moved, **values))
        latest = run(workdir, spec)
        return sorted((line["prompt"], line["completion"]) for line in outputs(Path(latest.version_uri)))

    def row(ticket: int, reply: str | None = None) -> tuple[str, str]:
        return f"Card declined abroad #{ticket}", reply or f"Travel notice set for ticket {ticket}."

    assert row(2, "Billing > Invoices") in edit(2, 1, reply="Billing > Invoices")
    # Back to what it held in v1: a repeat of no record published now, so it is written again.
    assert edit(2, 2, reply="Travel notice set for ticket 2.") == sorted(row(n) for n in range(1, 6))
    # Now the same as ticket 4: a duplicate of it, set aside, and ticket 3's old values go too.
    assert edit(3, 3, subject=row(4)[0], reply=row(4)[1]) == sorted(row(n) for n in (1, 2, 4, 5))
    # Read again unchanged (its cursor moved): written again as it is, replacing its carried copy.
    assert edit(5, 4) == sorted(row(n) for n in (1, 2, 4, 5))
    engine.dispose()


@pytest.mark.parametrize("stages", [[], [{"type": "exact_dedup"}], [{"type": "exact_dedup"}, {"type": "near_dedup"}]])
def test_a_table_without_a_cursor_is_published_as_it_is_now(workdir: Path, stages: list) -> None:
    url = f"sqlite:///{workdir}/crm.db"
    fill(url, 1, 6)
    spec = {**recipe(url, table="tickets"), "stages": stages}  # no cursor: the whole table each run
    first = run(workdir, spec)
    fill(url, 7, 1)
    engine = sa.create_engine(url)
    with engine.begin() as db:  # ticket 2 is closed and deleted; ticket 5's reply is corrected
        db.execute(tickets.delete().where(tickets.c.id == 2))
        db.execute(tickets.update().where(tickets.c.id == 5).values(reply="Card reissued for ticket 5."))
    again = run(workdir, spec)
    replies = sorted(line["completion"] for line in outputs(Path(again.version_uri)))
    assert replies == sorted(
        [f"Travel notice set for ticket {i}." for i in (1, 3, 4, 6, 7)] + ["Card reissued for ticket 5."]
    )
    # Each row once: read again, not set aside as a repeat of the row it replaces.
    assert again.manifest.counts.written == 6 and again.manifest.counts.carried == 0
    assert again.manifest.stats["carry"]["replaced"] == 6
    assert len(outputs(Path(first.version_uri))) == 6
    # Nothing changed: a scheduled run publishes nothing (the table is read to tell, in any row order).
    third = run(workdir, spec)
    assert third.manifest is None and third.message.startswith("nothing new since support v2")
    with engine.begin() as db:  # rows that come back in another order hold the same
        rows = [dict(row._mapping) for row in db.execute(sa.select(tickets).order_by(tickets.c.id.desc()))]
        db.execute(tickets.delete())
        db.execute(tickets.insert(), rows)
    assert run(workdir, spec).manifest is None
    # An edit that keeps the row count is a change, and so is a new row.
    with engine.begin() as db:
        db.execute(tickets.update().where(tickets.c.id == 6).values(reply="Card reissued for ticket 6."))
    fourth = run(workdir, spec)
    assert fourth.manifest.version == 3
    assert "Card reissued for ticket 6." in {line["completion"] for line in outputs(Path(fourth.version_uri))}
    with engine.begin() as db:
        db.execute(tickets.insert(), [{**rows[0], "id": 8}])
    assert run(workdir, spec).manifest.version == 4
    engine.dispose()


def test_a_json_column_is_published_as_each_row_holds_it_whatever_rows_are_read_beside_it(workdir: Path) -> None:
    # As an Arrow struct, a row got the keys of every row of its batch: once row b was added, row a
    # (unchanged) was published as 'a {"a": 1, "b": null}', under another id; and where the rows' types
    # differ (1 and "x" under "a"), every value was Python's text of a dict, "{'a': 1}", with no member.
    url = sqlite_db(
        workdir / "crm.db", "CREATE TABLE t (q TEXT, meta JSON)", """INSERT INTO t VALUES ('a', '{"a": 1}')"""
    )
    spec = recipe(url, table="t")
    spec["record"] = {"kind": "instruction", "prompt": "{{ q }} {{ meta }}", "completion": "{{ meta.a }}"}
    first = run(workdir, spec)
    sqlite_db(workdir / "crm.db", """INSERT INTO t VALUES ('b', '{"b": 2.5, "a": "x"}')""")
    again = run(workdir, spec)
    assert sorted((line["prompt"], line["completion"]) for line in outputs(Path(again.version_uri))) == [
        ('a {"a": 1}', "1"),
        ('b {"b": 2.5, "a": "x"}', "x"),
    ]
    assert outputs(Path(first.version_uri))[0] in outputs(Path(again.version_uri))

    def ids(result) -> dict[str, str]:
        return {row["source"]["line"]: row["id"] for row in lineage_rows(result.version_uri)}

    assert ids(first)[1] == ids(again)[1]


def test_a_json_column_of_objects_and_other_types_writes_its_objects_as_json(workdir: Path) -> None:
    # They were written as Python writes a dict: "{'a': 1, 'ok': True}".
    url = sqlite_db(
        workdir / "crm.db",
        "CREATE TABLE t (q TEXT, meta JSON)",
        """INSERT INTO t VALUES ('a', '{"a": 1, "ok": true, "l": ["é"]}'), ('b', '5')""",
    )
    spec = recipe(url, table="t")
    spec["record"] = {"kind": "instruction", "prompt": "{{ q }} {{ meta }}", "completion": "meta"}
    result = run(workdir, spec)
    assert sorted((line["prompt"], line["completion"]) for line in outputs(Path(result.version_uri))) == [
        ('a {"a": 1, "ok": true, "l": ["é"]}', '{"a": 1, "ok": true, "l": ["é"]}'),
        ("b 5", "5"),
    ]


def test_a_table_without_a_cursor_is_read_whole_when_it_cannot_tell_it_is_unchanged(tmp_path: Path) -> None:
    from connectors.sql import READ_ITEM, source_uri
    from connectors.state import SourceWatermark

    url = f"sqlite:///{tmp_path}/crm.db"
    fill(url, 1, 3)
    config = SqlSource(type="sql", url=url, table="tickets")
    first = SourceWatermark({})
    reader = SqlSourceReader(config, 2, first)
    assert [i.uri for i in reader.inputs()] == [source_uri(config)] and len(read_all(config, 2, first)) == 2
    held = first.pending[READ_ITEM]
    assert SqlSourceReader(config, 2, SourceWatermark({READ_ITEM: held})).inputs() == []
    # State from before fingerprints, or a review decision that needs the rows read again: read whole.
    for watermark in (SourceWatermark({READ_ITEM: True}), SourceWatermark({READ_ITEM: held}, {source_uri(config)})):
        reader = SqlSourceReader(config, 2, watermark)
        assert len(reader.inputs()) == 1 and watermark.replaced == {source_uri(config)}
        assert sum(batch.rows.num_rows for batch in reader.batches()) == 3


def test_an_unchanged_table_read_again_for_a_replaced_duplicate_keeps_its_rows(workdir: Path) -> None:
    url = f"sqlite:///{workdir}/crm.db"
    engine = sa.create_engine(url)
    with engine.begin() as db:
        db.execute(sa.text("CREATE TABLE t (prompt TEXT, completion TEXT)"))
        db.execute(
            sa.text("INSERT INTO t VALUES (:p, :c)"),
            [{"p": "hello world", "c": "hi"}, {"p": "sql only row", "c": "ok"}, {"p": "another sql row", "c": "ok"}],
        )
    engine.dispose()
    lines = [{"prompt": "hello world", "completion": "hi"}, {"prompt": "file row", "completion": "ok"}]
    (workdir / "f.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    spec = {
        "dataset": "mix",
        "sources": [{"path": "f.jsonl"}, {"type": "sql", "url": url, "table": "t"}],
        "record": {"kind": "instruction", "prompt": "prompt", "completion": "completion"},
        "stages": [{"type": "exact_dedup"}],
        "output": {"validation_fraction": 0.0},
    }
    assert run(workdir, spec).manifest.counts.written == 4  # the table's "hello world" set aside
    # The file's kept "hello world" goes: the unchanged table, which held its duplicate, is read again.
    lines[1]["prompt"] = "file row edited"
    (workdir / "f.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines[1:]))
    again = run(workdir, spec)
    prompts = sorted(line["prompt"] for line in outputs(Path(again.version_uri)))
    assert prompts == ["another sql row", "file row edited", "hello world", "sql only row"]
    assert run(workdir, spec).manifest is None  # and the table's state says what it holds


def test_missing_table_and_bad_query_name_the_source(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/crm.db"
    fill(url, 1, 1)
    with pytest.raises(SqlSourceError, match=r"crm.db#customers: no table 'customers'"):
        read_all(SqlSource(type="sql", url=url, table="customers"), 10)
    with pytest.raises(SqlSourceError, match=r"cannot read: OperationalError: no such column: nope"):
        read_all(SqlSource(type="sql", url=url, query="SELECT nope FROM tickets"), 10)
    with pytest.raises(SqlSourceError, match=r"the cursor column 'changed' is not in table 'tickets'"):
        read_all(SqlSource(type="sql", url=url, table="tickets", cursor="changed"), 10)
    with pytest.raises(SqlSourceError, match=r"column 'missing' is not in the result"):
        read_all(SqlSource(type="sql", url=url, query="SELECT id FROM tickets", key=["missing"]), 10)


def test_a_cursor_column_holding_values_that_do_not_compare_is_named(tmp_path: Path) -> None:
    # SQLite keeps any type in any column: an integer and a text cursor value have no order.
    url = sqlite_db(
        tmp_path / "crm.db",
        "CREATE TABLE events (subject TEXT, reply TEXT, seq)",
        "INSERT INTO events VALUES ('a', 'x', 1), ('b', 'y', '2')",
    )
    for batch_rows in (10, 1):  # within one batch, and across two
        with pytest.raises(
            SqlSourceError,
            match=r"crm.db#events: the cursor column 'seq' holds values of types that do not compare \(int, str\)",
        ):
            read_all(SqlSource(type="sql", url=url, table="events", cursor="seq"), batch_rows)


@pytest.mark.parametrize("key", [["id"], []])
# A column of a type SQLAlchemy converts as it fetches it (DATETIME, DATE, JSON, BOOLEAN) got the value SQLite held
# and failed the run ("not of its column's declared type"), or, a BOOLEAN, published it as true.
@pytest.mark.parametrize("declared", ["TEXT", "DATETIME", "DATE", "TIMESTAMP", "JSON", "BOOLEAN"])
def test_sqlite_text_that_is_not_utf8_quarantines_its_row_and_the_cursor_moves_past_it(
    workdir: Path, key: list, declared: str
) -> None:
    # SQLite keeps any bytes under a TEXT type: one such value failed the whole run ("Could not decode to UTF-8").
    import sqlite3

    path = workdir / "crm.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"CREATE TABLE t (id INTEGER, subject TEXT, reply {declared}, u INTEGER)")
        db.execute(
            "INSERT INTO t VALUES (1, 'ok', NULL, 1), (2, 'bad', CAST(X'6A616E65E9' AS TEXT), 2), (3, 'fine', NULL, 3)"
        )
        db.commit()
    url = f"sqlite:///{path}"
    spec = recipe(url, table="t", cursor="u", key=key)
    spec["record"]["completion"] = "{{ subject }}."
    first = run(workdir, spec)
    assert sorted(line["prompt"] for line in processed(Path(first.version_uri))) == ["fine", "ok"]
    assert first.manifest.counts.quarantined == 1 == first.manifest.counts.reasons["quarantined"]["schema"]
    (aside,) = set_aside(Path(first.version_uri))
    named = "(key id=2)" if key else "(cursor u=2)"
    assert (
        aside["detail"]
        == f"{url}#t:2 {named}: column 'reply' holds text that is not UTF-8; CAST it to BLOB in a query to read such rows"
    )
    assert json.loads(aside["record"])["reply"] == "jane\\xe9"
    # The watermark moved past it: the next run reads only the new row, not the quarantined one again.
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("INSERT INTO t VALUES (4, 'new', NULL, 4)")
        db.commit()
    second = run(workdir, spec)
    assert (second.manifest.counts.input, second.manifest.counts.quarantined) == (1, 0)
    assert [line["prompt"] for line in processed(Path(second.version_uri))] == ["new"]


def test_a_sqlite_float_infinity_is_null_in_a_set_aside_record_which_any_json_parser_reads(workdir: Path) -> None:
    # SQLite holds an infinity (9e999): Python's json wrote it as the bare word Infinity in the record of a
    # row set aside as read (its text not UTF-8) or by a later stage, which no other JSON parser reads.
    url = sqlite_db(
        workdir / "crm.db",
        "CREATE TABLE t (id INTEGER, subject TEXT, reply TEXT, score REAL)",
        "INSERT INTO t VALUES (1, 'ok', 'fine', 1.5), (2, 'no reply', NULL, 9e999),"
        " (3, CAST(X'6A616E65E9' AS TEXT), 'bad', -9e999)",
    )
    result = run(workdir, recipe(url, table="t"))
    version = Path(result.version_uri)
    assert [line["prompt"] for line in outputs(version)] == ["ok"]
    lines = [strict_json(line) for line in (version / "set_aside" / "part-00000.jsonl").read_text().splitlines()]
    records = {line["source"]["line"]: (line["reason"], strict_json(line["record"])) for line in lines}
    assert records == {
        2: ("template", {"input_id": 2, "subject": "no reply", "reply": None, "score": None}),
        3: ("schema", {"id": 3, "subject": "jane\\xe9", "reply": "bad", "score": None}),
    }


def test_a_key_that_is_not_utf8_is_asked_of_the_rows_before_the_watermark(tmp_path: Path) -> None:
    # Bound as Python's text, such a key could not be asked for at all: the run failed binding it.
    import sqlite3

    path = tmp_path / "crm.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE t (code TEXT, subject TEXT, u INTEGER)")
        db.execute("INSERT INTO t VALUES (CAST(X'6A616E65E9' AS TEXT), 'bad', 1), ('b', 'ok', 2)")
        db.commit()
    config = SqlSource(type="sql", url=f"sqlite:///{path}", table="t", cursor="u", key=["code"])
    marks = Watermarks(sa.create_engine(f"sqlite:///{tmp_path}/state.db"), "support")
    assert [r["subject"] for b in read_all(config, 10, marks.for_source(config)) for r in b.rows.to_pylist()] == ["ok"]
    marks.commit("run")
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("INSERT INTO t VALUES (CAST(X'6A616E65E9' AS TEXT), 'again', 3)")
        db.commit()
    again = Watermarks(sa.create_engine(f"sqlite:///{tmp_path}/state.db"), "support")
    with pytest.raises(SqlSourceError, match=r"row 2 of the result has the same key \(code\) as a row an earlier run"):
        read_all(config, 10, again.for_source(config))


@pytest.mark.parametrize("source", [{"table": "t"}, {"query": "SELECT id, subject, reply, u FROM t"}])
@pytest.mark.parametrize("last", [False, True])
def test_a_sqlite_text_cursor_value_that_is_not_utf8_is_said_as_such_and_read_once(
    workdir: Path, caplog: pytest.LogCaptureFixture, last: bool, source: dict
) -> None:
    # It was set aside as a row with no cursor value ("NULL, or NaN ... give it a value"), though it has one;
    # as the highest value it was no watermark, and each later run read it again and logged it again.
    import sqlite3

    path = workdir / "crm.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE t (id INTEGER, subject TEXT, reply TEXT, u TEXT)")
        db.execute("INSERT INTO t VALUES (1, 'a', 'x', 'a'), (2, 'bad', 'x', CAST(X'6A616E65E9' AS TEXT))")
        db.execute("INSERT INTO t VALUES (3, 'k', 'x', ?)", ("a2" if last else "k",))
        db.commit()
    url = f"sqlite:///{path}"
    spec = recipe(url, cursor="u", key=["id"], **source)
    first = run(workdir, spec)
    assert sorted(line["prompt"] for line in processed(Path(first.version_uri))) == ["a", "k"]
    assert first.manifest.counts.reasons["quarantined"] == {"schema": 1}
    (aside,) = set_aside(Path(first.version_uri))
    assert aside["detail"].startswith(f"{url}#") and aside["detail"].endswith(
        f":{2 + last} (key id=2): column 'u' holds text that is not UTF-8; CAST it to BLOB in a query to read such rows"
    )
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("INSERT INTO t VALUES (4, 'new', 'x', CAST(X'7AE9' AS TEXT)), (5, 'newer', 'x', 'z')")
        db.commit()
    caplog.clear()
    second = run(workdir, spec)
    # Only the rows written since: the one set aside is past the watermark, not read (nor said) again.
    assert (second.manifest.counts.input, second.manifest.counts.quarantined) == (2, 1)
    assert [line["prompt"] for line in processed(Path(second.version_uri))] == ["newer"]
    assert "no value" not in caplog.text
    assert run(workdir, spec).version_uri is None


@pytest.mark.parametrize("declared", ["TEXT", "DATETIME"])
def test_a_sqlite_cursor_of_moments_holding_text_that_is_not_utf8_sets_its_row_aside_once(
    tmp_path: Path, declared: str
) -> None:
    # Such text spells no moment: compared with the moments, it failed the run ("values of types that do not compare").
    import sqlite3

    path = tmp_path / "crm.db"
    bad = "CAST(X'323032362D30312D30322031303A30303A3030E9' AS TEXT)"  # '2026-01-02 10:00:00' and a byte 0xE9
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"CREATE TABLE t (id INTEGER, subject TEXT, u {declared})")
        db.execute(f"INSERT INTO t VALUES (1, 'a', '2026-01-01 10:00:00'), (2, 'bad', {bad}), (3, 'c', '2026-01-03')")
        db.commit()
    config = SqlSource(type="sql", url=f"sqlite:///{path}", table="t", cursor="u")
    state = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    reads = []
    for _ in range(3):
        marks = Watermarks(state, "support")
        batches = read_all(config, 10, marks.for_source(config))
        aside = [r for b in batches if b.set_aside is not None for r in b.set_aside.to_pylist()]
        reads.append(([r["subject"] for b in batches for r in b.rows.to_pylist()], [r["detail"] for r in aside]))
        marks.commit("run")
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute(
                "INSERT INTO t SELECT 4, 'd', '2026-01-04 10:00:00' WHERE NOT EXISTS (SELECT 1 FROM t WHERE id = 4)"
            )
            db.commit()
    said = "column 'u' holds text that is not UTF-8; CAST it to BLOB in a query to read such rows"
    assert reads[0][0] == ["a", "c"] and [d.endswith(said) for d in reads[0][1]] == [True]
    # Read again (within the two days before the watermark) but set aside once; the watermark moved on.
    assert reads[1:] == [(["d"], []), ([], [])]


def test_sqlite_text_that_is_not_utf8_in_a_table_without_a_cursor_is_set_aside_once_per_read(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "crm.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE tickets (id INTEGER, subject TEXT)")
        db.execute(
            "INSERT INTO tickets VALUES (1, 'ok'), (2, CAST(X'6A616E652E726F65406578616D706C652E636F6DE9' AS TEXT))"
        )
        db.commit()
    batches = read_all(SqlSource(type="sql", url=f"sqlite:///{path}", table="tickets"), 1)
    assert [r["subject"] for b in batches for r in b.rows.to_pylist()] == ["ok"]
    (aside,) = [r for b in batches if b.set_aside is not None for r in b.set_aside.to_pylist()]
    assert "column 'subject' holds text that is not UTF-8" in aside["detail"]
    assert "jane" not in aside["detail"]


@pytest.mark.parametrize("key", [["id"], []])
@pytest.mark.parametrize(
    ("declared", "good", "bad", "kind"),
    [
        ("DATETIME", "'2026-01-01 10:00:00'", "'Maria Lopez'", "text"),
        ("DATE", "'2026-01-01'", "20260101", "an integer"),
        ("JSON", "'{\"a\": 1}'", "'Maria Lopez'", "text"),
        ("NUMERIC", "1.5", "'Maria Lopez'", "text"),
        ("BOOLEAN", "0", "'false'", "text"),
    ],
)
def test_a_sqlite_value_not_of_its_columns_declared_type_quarantines_its_row_naming_not_showing_it(
    workdir: Path, key: list, declared: str, good: str, bad: str, kind: str
) -> None:
    # SQLite keeps any value in any column; SQLAlchemy converts it as it fetches the row: one such value failed
    # the whole run ("cannot read rows 1 to 50000: a value there is not of its column's declared type"), or, text
    # in a BOOLEAN, was published by Python's truthiness ('false' as true).
    url = sqlite_db(
        workdir / "crm.db",
        f"CREATE TABLE t (id INTEGER, subject TEXT, v {declared}, u INTEGER)",
        f"INSERT INTO t VALUES (1, 'ok', {good}, 1), (2, 'bad', {bad}, 2), (3, 'fine', {good}, 3)",
    )
    spec = recipe(url, table="t", cursor="u", key=key)
    spec["record"]["completion"] = "{{ subject }}: {{ v }}"
    first = run(workdir, spec)
    assert sorted(line["prompt"] for line in processed(Path(first.version_uri))) == ["fine", "ok"]
    assert first.manifest.counts.quarantined == 1 == first.manifest.counts.reasons["quarantined"]["schema"]
    (aside,) = set_aside(Path(first.version_uri))
    named = "(key id=2)" if key else "(cursor u=2)"
    assert aside["detail"] == (
        f"{url}#t:2 {named}: column 'v' holds {kind} that is no {declared} value; CAST it to text in a query to read "
        "such rows"
    )
    assert json.loads(aside["record"])["v"] == bad.strip("'")
    with contextlib.closing(sqlite3.connect(workdir / "crm.db")) as db:
        db.execute(f"INSERT INTO t VALUES (4, 'new', {good}, 4)")
        db.commit()
    second = run(workdir, spec)
    assert (second.manifest.counts.input, second.manifest.counts.quarantined) == (1, 0)


@pytest.mark.parametrize("key", [["id"], []])
def test_a_sqlite_value_not_of_its_declared_type_in_a_column_the_recipe_does_not_read_quarantines_nothing(
    workdir: Path, key: list
) -> None:
    # As a Parquet column it does not read: the value is in no record. Its row was set aside (schema), though the
    # same rows read by a query (whose values SQLite gives untyped) were published.
    url = sqlite_db(
        workdir / "crm.db",
        "CREATE TABLE t (id INTEGER, subject TEXT, v TEXT, d DATE)",
        "INSERT INTO t VALUES (1, 'a', 'x', '2026-01-01'), (2, 'b', 'y', 'garbage'), (3, 'c', 'z', 20260101)",
    )
    published = {}
    for source in ({"table": "t"}, {"query": "SELECT * FROM t"}):
        spec = recipe(url, key=key, **source)
        spec["record"]["completion"] = "{{ v }}"
        (workdir / next(iter(source))).mkdir()
        result = run(workdir / next(iter(source)), spec)
        assert (result.manifest.counts.input, result.manifest.counts.quarantined) == (3, 0)
        published[next(iter(source))] = sorted(
            (line["prompt"], line["completion"]) for line in processed(Path(result.version_uri))
        )
    assert published["table"] == published["query"] == [("a", "x"), ("b", "y"), ("c", "z")]
    # The rows hold it as SQLite does, the column as text in that batch (as a set-aside row's record shows it).
    reader = SqlSourceReader(SqlSource(type="sql", url=url, table="t"), 10, used_columns={"subject", "v"})
    assert [row["d"] for batch in reader.batches() for row in batch.rows.to_pylist()] == [
        "2026-01-01",
        "garbage",
        "20260101",
    ]
    # Read, it sets its row aside (see above); an unread one is read as SQLite holds it, as text beside the dates.
    spec = recipe(url, key=key, table="t")
    spec["record"]["completion"] = "{{ v }} {{ d }}"
    (workdir / "read").mkdir()
    again = run(workdir / "read", spec)
    assert sorted(line["prompt"] for line in processed(Path(again.version_uri))) == ["a"]
    assert again.manifest.counts.reasons["quarantined"]["schema"] == 2


def test_a_sqlite_cursor_of_moments_holding_a_value_that_is_no_moment_sets_its_row_aside_once(workdir: Path) -> None:
    url = sqlite_db(
        workdir / "crm.db",
        "CREATE TABLE t (subject TEXT, reply TEXT, at DATETIME)",
        "INSERT INTO t VALUES ('a', 'x', '2026-01-01 10:00:00'), ('b', 'y', 'Maria Lopez'),"
        " ('c', 'z', '2026-01-02 10:00:00+02:00')",
    )
    first = run(workdir, recipe(url, table="t", cursor="at"))
    assert sorted(line["prompt"] for line in processed(Path(first.version_uri))) == ["a", "c"]
    (aside,) = set_aside(Path(first.version_uri))
    assert aside["detail"].startswith(f"{url}#t:3 (cursor at=Maria Lopez): column 'at' holds text that is no DATETIME")
    with contextlib.closing(sqlite3.connect(workdir / "crm.db")) as db:
        db.execute("INSERT INTO t VALUES ('d', 'w', '2026-01-03 10:00:00')")
        db.commit()
    second = run(workdir, recipe(url, table="t", cursor="at"))
    assert (second.manifest.counts.input, second.manifest.counts.quarantined) == (1, 0)
    assert [line["prompt"] for line in processed(Path(second.version_uri))] == ["d"]


def _sqlite_published(workdir: Path, columns: str, rows: str, completion: str) -> tuple[dict[str, str], Path]:
    """Each row's completion, by its subject, as a run of table t (``columns``, after id and subject) publishes it."""
    url = sqlite_db(
        workdir / "crm.db", f"CREATE TABLE t (id INTEGER, subject TEXT, {columns})", f"INSERT INTO t VALUES {rows}"
    )
    spec = recipe(url, table="t", key=["id"])
    spec["record"]["completion"] = completion
    version = Path(run(workdir, spec).version_uri)
    return {line["prompt"]: line["completion"] for line in processed(version)}, version


def test_a_sqlite_numeric_is_published_as_an_earlier_release_did_unless_that_changed_the_number(
    workdir: Path,
) -> None:
    # SQLAlchemy's Decimal rounds to the declared scale, else to 10 places, though SQLite keeps every digit. A value
    # the rounding keeps is written as before (2 as 2.0000000000): a keyless row's id holds its text, so another text
    # published it again beside its old record, and a NUMERIC key's row under another id. One it changed (1e-12 was
    # 0.0000000000) is the number SQLite holds.
    dialect = sa.create_engine("sqlite://").dialect

    def earlier(value: float, declared: sa.Numeric) -> str:
        return format(declared.dialect_impl(dialect).result_processor(dialect, None)(value), "f")

    published, _ = _sqlite_published(
        workdir,
        "n NUMERIC, fee DECIMAL(10, 2)",
        "(1, 'a', 2, 2), (2, 'b', 1200, 1200), (3, 'c', 0.1, 0.1), (4, 'd', 1e-12, 3.14159),"
        " (5, 'e', 0.123456789012, 0.5), (6, 'f', 1180591620717411303424, 1180591620717411303424)",
        "{{ n }} {{ fee }}",
    )
    # 2**70 is a REAL in SQLite, whose shortest text (1.1805916207174113e+21) is not its exact value, which the
    # rounding kept: it was published as 1180591620717411300000, another number, a keyless row's id changed.
    kept = {"a": 2, "b": 1200, "c": 0.1, "f": 2.0**70}
    assert {s: published[s] for s in kept} == {
        s: f"{earlier(v, sa.Numeric())} {earlier(v, sa.Numeric(10, 2))}" for s, v in kept.items()
    }
    assert published["a"] == "2.0000000000 2.00"
    assert published["f"] == "1180591620717411303424.0000000000 1180591620717411303424.00"
    assert {s: published[s] for s in "de"} == {
        "d": "0.000000000001 3.14159",
        "e": f"0.123456789012 {earlier(0.5, sa.Numeric(10, 2))}",
    }


def test_a_sqlite_boolean_is_true_for_any_number_but_0_as_sqlite_takes_it(workdir: Path) -> None:
    # SQLite's IS TRUE: any number but 0; its affinity makes the text '0' and '1' numbers. Other text is no
    # boolean SQLite wrote (see the test above): 'false' was published as true.
    published, version = _sqlite_published(
        workdir,
        "flag BOOLEAN",
        "(1, 'a', 1), (2, 'b', 0), (3, 'c', 2), (4, 'd', -1), (5, 'e', '0'), (6, 'f', 'no')",
        "{{ flag }}",
    )
    assert published == {"a": "true", "b": "false", "c": "true", "d": "true", "e": "false"}
    assert [json.loads(line["record"])["flag"] for line in set_aside(version)] == ["no"]


@pytest.mark.parametrize("source", [{"table": "tickets"}, {"query": "SELECT * FROM tickets"}])
def test_a_missing_sqlite_file_is_said_and_not_created(tmp_path: Path, source: dict) -> None:
    # SQLite creates the file it opens: a mistyped path was left as an empty database, and the run (and
    # `curation check`) said the table was not in it.
    missing = tmp_path / "crm-typo.db"
    reader = SqlSourceReader(SqlSource(type="sql", url=f"sqlite:///{missing}", **source), 10)
    for attempt in (reader.probe, lambda: list(reader.batches())):
        with pytest.raises(SqlSourceError, match=f"no SQLite database file '{missing}'"):
            attempt()
    assert not missing.exists()


@pytest.mark.parametrize(
    ("table", "setting"),
    [
        ('"Fin Ance"."Tx.Log"', '"Fin Ance"."Tx.Log"'),  # a dot in the name: only quotes tell it from a schema's
        ('"Fin Ance"."Tx.Log"', 'Fin Ance."Tx.Log"'),
        ('"Fin Ance"."Tx Log"', '"Fin Ance"."Tx Log"'),  # quoted as SQL writes it, though it needs none here
        ('"Fin Ance"."Tx Log"', "Fin Ance.Tx Log"),
        ('"Fin Ance"."Say ""hi"""', '"Fin Ance"."Say ""hi"""'),
    ],
)
def test_a_table_named_in_double_quotes_is_read(postgres_url: str, tmp_path: Path, table: str, setting: str) -> None:
    # The setting was split at its last dot and taken as written: a name holding a dot could not be given,
    # and one in double quotes, as SQL writes it, was 'no table'.
    engine = sa.create_engine(postgres_url)
    with engine.begin() as db:
        db.execute(sa.text('DROP SCHEMA IF EXISTS "Fin Ance" CASCADE'))
        db.execute(sa.text('CREATE SCHEMA "Fin Ance"'))
        db.execute(sa.text(f'CREATE TABLE {table} ("Tx Id" int, subject text, "Updated At" int)'))
        db.execute(sa.text(f"INSERT INTO {table} VALUES (1, 'a', 1), (2, 'b', 2)"))
    engine.dispose()
    config = SqlSource(type="sql", url=postgres_url, table=setting, cursor="Updated At", key=["Tx Id"])
    assert subjects_read_twice(config, tmp_path) == [["a", "b"], []]


def test_a_table_setting_that_is_no_name_is_said() -> None:
    for setting in ('"Tx Log', "finance..tx", 'finance."tx"x'):
        with pytest.raises(SqlSourceError, match=r"is not a name: write schema\.table"):
            SqlSourceReader(SqlSource(type="sql", url="sqlite://", table=setting), 10).probe()


def test_recipe_takes_exactly_one_of_table_or_query() -> None:
    with pytest.raises(ValueError, match="exactly one of 'table' or 'query'"):
        SqlSource(type="sql", url="sqlite://", table="a", query="select 1")


def test_a_database_url_written_amiss_never_shows_its_password(tmp_path: Path) -> None:
    # make_url reads 'curation:p@ss@host' as password 'p' on host 'ss@host': the password's rest was written
    # into every record's source and the errors as the host.
    from schemas.config import RecipeError, load_recipe
    from tests.helpers import write_recipe

    path = write_recipe(tmp_path, recipe("postgresql+psycopg://curation:hunt@er2@db.internal/crm", table="t"))
    with pytest.raises(RecipeError, match="percent-encoded, as %40") as raised:
        load_recipe(path)
    assert "er2" not in str(raised.value)
    # A state store URL that does not parse was quoted back whole, its password too.
    spec = {**recipe("sqlite://", table="t"), "state": "postgresql+psycopg//curation:hunter2@db.internal/state"}
    with pytest.raises(RecipeError, match="not a database URL") as raised:
        load_recipe(write_recipe(tmp_path, spec))
    assert "hunter2" not in str(raised.value)
    spec["state"] = "postgresql+psycopg://curation:hunt@er2@db.internal/state"
    with pytest.raises(RecipeError, match="percent-encoded, as %40") as raised:
        load_recipe(write_recipe(tmp_path, spec))
    assert "er2" not in str(raised.value)
    encoded = SqlSource(type="sql", url="postgresql+psycopg://curation:hunt%40er2@db.internal/crm", table="t")
    assert SqlSourceReader(encoded, 10).uri == "postgresql+psycopg://curation:***@db.internal/crm#t"


def test_postgresql_incremental_by_timestamp_cursor(workdir: Path, postgres_url: str) -> None:
    url = postgres_url.replace("curation@", "curation:s3cret@")  # trust auth ignores it; it must never show
    engine = sa.create_engine(postgres_url)
    with engine.begin() as db:
        db.execute(sa.text("DROP TABLE IF EXISTS tickets"))
    engine.dispose()
    fill(url, 1, 30)
    spec = recipe(url, table="tickets", cursor="updated_at", key=["id"])
    spec["batch_rows"] = 8
    spec["state"] = postgres_url  # run history, watermarks and the lock in PostgreSQL too
    spec["dataset"] = "support-pg"
    first = run(workdir, spec)
    assert first.manifest.counts.input == 30 and first.manifest.extends is None
    fill(url, 31, 4)
    second = run(workdir, spec)
    assert second.manifest.version == 2 and second.manifest.extends == 1
    # Only the new rows were read and processed; v2 holds them and v1's 30 (carried forward).
    assert second.manifest.counts.input == 4 and second.manifest.counts.carried == 30
    assert sorted(line["prompt"] for line in processed(Path(second.version_uri))) == sorted(
        f"Card declined abroad #{i}" for i in range(31, 35)
    )
    assert sorted(line["prompt"] for line in outputs(Path(second.version_uri))) == sorted(
        f"Card declined abroad #{i}" for i in range(1, 35)
    )
    published = (Path(second.version_uri) / "manifest.json").read_text()
    lineage = json.dumps(lineage_rows(second.version_uri))
    assert "s3cret" not in published and "s3cret" not in lineage
    assert json.loads(published)["inputs"][0]["uri"].startswith("postgresql+psycopg://curation:***@127.0.0.1")


def test_postgresql_streams_with_a_server_side_cursor(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    with engine.begin() as db:
        db.execute(sa.text("DROP TABLE IF EXISTS big"))
        db.execute(
            sa.text("CREATE TABLE big AS SELECT g AS id, repeat('x', 100) AS body FROM generate_series(1, 5000) g")
        )
    reader = SqlSourceReader(SqlSource(type="sql", url=postgres_url, table="big"), 1000)
    batches = reader.batches()
    first = next(batches)
    # While the first batch is in hand, the reader's session is fetching from a named server-side cursor.
    with engine.connect() as db:
        active = db.execute(
            sa.text("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'DECLARE%' OR query LIKE 'FETCH%'")
        ).scalar()
    assert first.rows.num_rows == 1000
    assert active >= 1
    assert sum(b.rows.num_rows for b in batches) == 4000
    engine.dispose()


def test_content_a_table_with_a_cursor_also_holds_stays_when_it_leaves_a_changed_file(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from tests.helpers import write_jsonl

    url = f"sqlite:///{workdir}/crm.db"
    fill(url, 1, 2)  # "Card declined abroad #1" / "#2"
    row = {"subject": "Card declined abroad #1", "reply": "Travel notice set for ticket 1."}
    write_jsonl(workdir / "in" / "a.jsonl", [row, {"subject": "Lost card", "reply": "Blocked."}])
    spec = {**recipe(url, table="tickets", cursor="updated_at"), "stages": [{"type": "exact_dedup"}]}
    spec["sources"] = [{"path": "in"}, *spec["sources"]]  # the file is read first: its copy is kept
    first = run(workdir, spec)
    assert first.manifest.counts.reasons["duplicate"] == {"exact_duplicate": 1}
    write_jsonl(workdir / "in" / "a.jsonl", [{"subject": "Lost card", "reply": "Blocked."}])
    with caplog.at_level(logging.WARNING):
        second = run(workdir, spec)
    # The table's copy was set aside and a cursor reads only new rows: the file's copy stays.
    prompts = sorted(line["prompt"] for line in outputs(Path(second.version_uri)))
    assert prompts == ["Card declined abroad #1", "Card declined abroad #2", "Lost card"]
    assert "stay as published" in caplog.text and "crm.db#tickets" in caplog.text


def test_a_new_database_password_is_not_a_new_source(workdir: Path, postgres_url: str) -> None:
    # Rotating the password in the URL changes no setting of what the source reads: the watermark
    # stays, so rows a retention job removed since stay published.
    engine = sa.create_engine(postgres_url)
    with engine.begin() as db:
        db.execute(sa.text("DROP TABLE IF EXISTS tickets"))
    engine.dispose()
    before, after = (postgres_url.replace("curation@", f"curation:{word}@") for word in ("old-s3cret", "new-s3cret"))
    fill(before, 1, 5)
    spec = recipe(before, table="tickets", cursor="updated_at", key=["id"])
    spec.update(state=postgres_url, dataset="support-rotated")
    first = run(workdir, spec)
    assert first.manifest.counts.input == 5
    engine = sa.create_engine(postgres_url)
    with engine.begin() as db:
        db.execute(sa.text("DELETE FROM tickets WHERE id = 1"))  # archived once taken
    engine.dispose()
    fill(after, 6, 1)
    spec["sources"][0]["url"] = after  # trust auth takes either password
    second = run(workdir, spec)
    assert second.manifest.extends == first.manifest.version and second.manifest.counts.input == 1
    assert len(outputs(Path(second.version_uri))) == 6


def test_a_password_given_as_a_query_parameter_never_shows(workdir: Path, postgres_url: str) -> None:
    # libpq takes the password as ?password= too: it was written into every record's source, the lineage, the
    # set-aside records, the manifest, the state store and the errors, and rotating it made a new source.
    engine = sa.create_engine(postgres_url)
    with engine.begin() as db:
        db.execute(sa.text("DROP TABLE IF EXISTS tickets"))
    engine.dispose()
    url = f"{postgres_url}?password=old-s3cret&sslpassword=ssl-s3cret"  # trust auth ignores both
    fill(url, 1, 4)
    engine = sa.create_engine(postgres_url)
    with engine.begin() as db:  # a row set aside (no cursor value) for the set-aside files
        db.execute(sa.text("ALTER TABLE tickets ALTER COLUMN updated_at DROP NOT NULL"))
        db.execute(sa.text("INSERT INTO tickets (id, subject, reply) VALUES (99, 'no cursor', 'r')"))
    engine.dispose()
    spec = recipe(url, table="tickets", cursor="updated_at", key=["id"])
    spec["dataset"] = "support-query-password"
    first = run(workdir, spec)
    assert first.manifest.counts.input == 5 and first.manifest.counts.quarantined == 1
    assert json.loads((Path(first.version_uri) / "manifest.json").read_text())["inputs"][0]["uri"].startswith(
        f"{postgres_url}?password=***&sslpassword=***#tickets"
    )
    fill(url, 5, 1)
    spec["sources"][0]["url"] = url.replace("old-s3cret", "new-s3cret")  # rotated: the same source
    second = run(workdir, spec)
    assert second.manifest.extends == first.manifest.version and second.manifest.counts.input == 1
    written = [p for p in workdir.rglob("*") if p.is_file() and p.name != "recipe.yaml"]
    assert written and not [p for p in written if b"s3cret" in p.read_bytes()]
    bad = SqlSource(type="sql", url=url, table="nowhere")
    with pytest.raises(SqlSourceError) as raised:
        read_all(bad, 10)
    assert "s3cret" not in str(raised.value) and "password=***" in str(raised.value)


def test_watermarks_kept_under_a_key_with_the_password_are_still_found(tmp_path: Path) -> None:
    # State from before passwords were left out of a source's key: its watermark is read, then kept
    # under the new key.
    from connectors.state import source_keys

    engine = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    config = SqlSource(type="sql", url="postgresql+psycopg://curation:s3cret@db/crm", table="t", cursor="u")
    new_key, old_key = source_keys(config)
    assert new_key != old_key
    marks = Watermarks(engine, "d")
    marks.sources[old_key] = marks.for_source(config)  # as an earlier checkout committed it
    marks.sources.pop(new_key)
    marks.sources[old_key].set("cursor", {"type": "int", "value": "7"})
    marks.commit("run-1")
    assert Watermarks(engine, "d").for_source(config).get("cursor") == {"type": "int", "value": "7"}
    rotated = config.model_copy(update={"url": "postgresql+psycopg://curation:other@db/crm"})
    later = Watermarks(engine, "d")
    later.for_source(rotated).set("cursor", {"type": "int", "value": "9"})
    later.commit("run-2")
    assert Watermarks(engine, "d").for_source(config).get("cursor") == {"type": "int", "value": "9"}


def test_a_result_with_an_id_and_an_input_id_column_is_refused_by_the_probe_check_makes(tmp_path: Path) -> None:
    # `curation check` said ok; the run then failed on its first batch.
    url = sqlite_db(
        tmp_path / "crm.db",
        "CREATE TABLE t (id INTEGER, input_id TEXT, q TEXT)",
        "INSERT INTO t VALUES (1, 'A-1', 'Where?')",
    )
    said = r"crm.db#t: column 'id' is read as 'input_id' .* rename one of them"
    reader = SqlSourceReader(SqlSource(type="sql", url=url, table="t"), 10)
    with pytest.raises(SqlSourceError, match=said):
        reader.probe()
    with pytest.raises(SqlSourceError, match=said):
        read_all(SqlSource(type="sql", url=url, table="t"), 10)


def test_a_query_naming_a_column_twice_is_refused_not_read_as_its_last(postgres_url: str) -> None:
    # PostgreSQL returns both columns under one name; the reader kept the last one's values only.
    engine = sa.create_engine(postgres_url)
    with engine.begin() as db:
        db.execute(sa.text("DROP TABLE IF EXISTS twice"))
        db.execute(sa.text("CREATE TABLE twice AS SELECT 'Where?' AS q, 'Here.' AS a"))
    engine.dispose()
    config = SqlSource(type="sql", url=postgres_url, query="SELECT q, a AS q, a FROM twice")
    said = r"#query-[0-9a-f]+: column\(s\) 'q' appear more than once in the result: name each column once \(AS\)"
    with pytest.raises(SqlSourceError, match=said):
        SqlSourceReader(config, 10).probe()
    with pytest.raises(SqlSourceError, match=said):
        read_all(config, 10)


def notes_table(url: str, columns: str, rows: list[tuple[Any, ...]]) -> None:
    """A fresh ``notes`` table in the database at ``url``, its ``columns`` as SQL ("id int, subject text"),
    holding ``rows``."""
    names = [column.split()[0] for column in columns.split(",")]
    engine = sa.create_engine(url)
    with engine.begin() as db:
        db.execute(sa.text("DROP TABLE IF EXISTS notes"))
        db.execute(sa.text(f"CREATE TABLE notes ({columns})"))
        insert = sa.text(f"INSERT INTO notes VALUES ({', '.join(':' + name for name in names)})")
        db.execute(insert, [dict(zip(names, row, strict=True)) for row in rows])
    engine.dispose()


def subjects_read_twice(config: SqlSource, folder: Path) -> list[list[str]]:
    """The subjects of the rows ``config`` reads in a first run and in a second (what is new since)."""
    state = sa.create_engine(f"sqlite:///{folder}/state.db")
    reads = []
    for _ in range(2):
        marks = Watermarks(state, "support")
        reads.append([r["subject"] for b in read_all(config, 10, marks.for_source(config)) for r in b.rows.to_pylist()])
        marks.commit("run")
    return reads


def small_table(path: Path, rows: list[tuple], cursor_type: str = "INTEGER") -> str:
    """A SQLite table ``t (id, subject, reply, u)`` holding ``rows``; its URL."""
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as db:
        db.execute(sa.text(f"CREATE TABLE IF NOT EXISTS t (id, subject TEXT, reply TEXT, u {cursor_type})"))
        for row in rows:
            db.execute(
                sa.text("INSERT INTO t VALUES (:id, :subject, :reply, :u)"),
                dict(zip(["id", "subject", "reply", "u"], row, strict=True)),
            )
    engine.dispose()
    return f"sqlite:///{path}"


@pytest.mark.parametrize("cursor", ["u", None])
def test_rows_sharing_a_key_fail_the_read_naming_the_key_and_source(tmp_path: Path, cursor: str | None) -> None:
    # Both were published under one record id, and an edit of one later replaced the other.
    url = small_table(tmp_path / "crm.db", [(1, "Lost card", "x", 1), (2, "Refund", "y", 2), (1, "Jane Roe", "z", 3)])
    config = SqlSource(type="sql", url=url, table="t", key=["id"], cursor=cursor)
    with pytest.raises(SqlSourceError) as error:
        read_all(config, batch_rows=1)  # the two rows in different batches
    message = str(error.value)
    assert f"{url}#t: row 3 of the result has the same key (id) as an earlier row" in message
    assert "Jane" not in message  # the row's values stay out of the message


def test_a_null_key_and_the_text_none_are_two_rows_and_ordinary_keys_keep_their_ids(tmp_path: Path) -> None:
    from schemas.records import record_ids

    url = small_table(tmp_path / "crm.db", [(1, "a", "x", 1), (None, "b", "y", 2), ("None", "c", "z", 3)])
    rows = [r for b in read_all(SqlSource(type="sql", url=url, table="t", key=["id"]), 10) for r in b.rows.to_pylist()]
    assert len({r["id"] for r in rows}) == 3
    # Published ids must not move: an ordinary key's, and a NULL's (spelt 'None' before) are as they were.
    assert [r["id"] for r in rows[:2]] == record_ids(f"{url}#t", ["1", "None"], [b"", b""]).to_pylist()


@pytest.mark.parametrize("key", [["id"], []])
def test_a_row_written_after_a_run_with_its_highest_cursor_value_is_read_once(workdir: Path, key: list) -> None:
    # Commit timestamps tie: a row written after the run may carry the value of the last row it took.
    url = small_table(workdir / "crm.db", [(1, "a", "x", 1), (2, "b", "y", 2)])
    spec = recipe(url, table="t", cursor="u", key=key)
    run(workdir, spec)
    small_table(workdir / "crm.db", [(3, "c", "z", 2), (4, "d", "w", 2), (5, "e", "v", 3)])
    second = run(workdir, spec)
    assert second.manifest.counts.input == 3
    assert sorted(line["prompt"] for line in processed(Path(second.version_uri))) == ["c", "d", "e"]
    small_table(workdir / "crm.db", [(6, "f", "w", 3)])
    third = run(workdir, spec)
    assert [line["prompt"] for line in processed(Path(third.version_uri))] == ["f"]
    assert sorted(line["prompt"] for line in outputs(Path(third.version_uri))) == ["a", "b", "c", "d", "e", "f"]
    assert run(workdir, spec).version_uri is None  # nothing new: the rows at the value are not taken again


def test_a_watermark_from_before_the_rows_at_its_value_were_kept_reads_past_it(tmp_path: Path) -> None:
    url = small_table(tmp_path / "crm.db", [(1, "a", "x", 1), (2, "b", "y", 2), (3, "c", "z", 3)])
    config = SqlSource(type="sql", url=url, table="t", cursor="u")
    marks = Watermarks(sa.create_engine(f"sqlite:///{tmp_path}/state.db"), "support")
    mark = marks.for_source(config)
    mark.committed = {"cursor": {"type": "int", "value": "2"}}  # as an earlier release kept it
    assert [r["subject"] for b in read_all(config, 10, mark) for r in b.rows.to_pylist()] == ["c"]
    assert set(mark.pending) == {"cursor", "cursor_taken", "cursor_null"}


def test_an_equal_row_written_at_the_highest_cursor_value_is_new(tmp_path: Path) -> None:
    url = small_table(tmp_path / "crm.db", [(1, "a", "x", 1), (9, "z", "z", 2)])
    config = SqlSource(type="sql", url=url, table="t", cursor="u")
    engine = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    marks = Watermarks(engine, "support")
    first = [r for b in read_all(config, 10, marks.for_source(config)) for r in b.rows.to_pylist()]
    marks.commit("run1")
    small_table(tmp_path / "crm.db", [(9, "z", "z", 2)])  # a second row of the same content and value
    again = Watermarks(engine, "support")
    second = [r for b in read_all(config, 10, again.for_source(config)) for r in b.rows.to_pylist()]
    assert [r["subject"] for r in second] == ["z"]
    assert second[0]["id"] != first[1]["id"]  # a record of its own, not the published one written again


@pytest.mark.parametrize(
    ("kind", "first", "last", "later"),
    [
        ("DATETIME", "2026-01-01T10:00:00Z", "2026-01-01T11:00:00Z", "2026-01-01T12:00:00Z"),
        ("DATETIME", "2026-01-01T10:00:00", "2026-01-01T11:00:00", "2026-01-02T09:00:00"),
        ("DATETIME", "2026-01-01 10:00:00", "2026-01-01 11:00:00", "2026-01-01 11:00:01"),  # CURRENT_TIMESTAMP's
        ("TIMESTAMP", "2026-01-01 10:00:00.5", "2026-01-01 10:00:00.75", "2026-01-01 10:00:01"),
        ("DATE", "2025-12-31", "2026-01-01", "2026-01-02"),
    ],
)
def test_a_sqlite_datetime_cursor_held_as_text_of_any_form_reads_each_row_once(
    tmp_path: Path, kind: str, first: str, last: str, later: str
) -> None:
    # SQLite compares the stored text with the bound '2026-01-01 11:00:00.000000': the last day's rows
    # came again each run ('T' sorts after ' '), or the rows at the watermark never did.
    url = small_table(tmp_path / "crm.db", [(1, "a", "x", first), (2, "b", "y", last)], cursor_type=kind)
    config = SqlSource(type="sql", url=url, table="t", cursor="u")
    engine = sa.create_engine(f"sqlite:///{tmp_path}/state.db")

    def read() -> list[str]:
        marks = Watermarks(engine, "support")
        subjects = [r["subject"] for b in read_all(config, 10, marks.for_source(config)) for r in b.rows.to_pylist()]
        marks.commit("run")
        return subjects

    assert read() == ["a", "b"]
    assert read() == []
    small_table(tmp_path / "crm.db", [(3, "c", "z", last), (4, "d", "w", later), (5, "e", "v", first)])
    assert read() == ["c", "d"]  # 5 was written with an older value: not seen (the README says so)
    assert read() == []


@pytest.mark.parametrize("first_values", [[None, None], [None, 1]])
def test_rows_without_a_cursor_value_are_quarantined_once_and_said(
    workdir: Path, caplog: pytest.LogCaptureFixture, first_values: list
) -> None:
    # They were read on the first run only (published, or not at all later); a column all NULL saved no
    # watermark, so each run read the whole table again and extended nothing.
    url = small_table(workdir / "crm.db", [(1, "a", "x", first_values[0]), (2, "b", "y", first_values[1])])
    spec = recipe(url, table="t", cursor="u", key=["id"])
    first = run(workdir, spec)
    nulls = first_values.count(None)
    assert first.manifest.counts.quarantined == nulls == first.manifest.counts.reasons["quarantined"]["no_cursor_value"]
    aside = set_aside(Path(first.version_uri))
    assert aside[0]["detail"] == (
        f"{url}#t:1: no value (NULL, or NaN), or one Python cannot hold (infinity), in the cursor column 'u': "
        "no run can tell when such a row is new or edited, so it is set aside once; give it a value to have it read"
    )
    assert json.loads(aside[0]["record"])["subject"] == "a"
    rows_have = "row has" if nulls == 1 else "rows have"
    said = (
        f"{url}#t: {{}} no value (NULL, or NaN), or one Python cannot hold (infinity), in the cursor column 'u': {{}}"
    )
    assert said.format(f"{nulls} {rows_have}", "quarantined by this run (no_cursor_value);") in caplog.text
    assert "the others by an earlier one" not in caplog.text  # there are no others yet
    small_table(workdir / "crm.db", [(3, "c", "z", None), (4, "d", "w", 5)])
    caplog.clear()
    second = run(workdir, spec)
    by = "1 quarantined by this run (no_cursor_value), the others by an earlier one"
    assert said.format(f"{nulls + 1} rows have", by) in caplog.text
    assert second.manifest.extends == 1
    assert (second.manifest.counts.input, second.manifest.counts.quarantined) == (2, 1)
    assert [line["prompt"] for line in processed(Path(second.version_uri))] == ["d"]
    assert run(workdir, spec).version_uri is None  # a quiet table: nothing read twice, nothing published
    engine = sa.create_engine(url)
    with engine.begin() as db:
        db.execute(sa.text("UPDATE t SET u = 6 WHERE id = 1"))  # given a value: read
    engine.dispose()
    assert [line["prompt"] for line in processed(Path(run(workdir, spec).version_uri))] == ["a"]


@pytest.mark.parametrize("source", ["table", "query"])
@pytest.mark.parametrize(
    ("kind", "values"),
    [
        ("uuid", ["018f0000-0000-7000-8000-000000000001", "018f0000-0000-7000-8000-000000000002"]),  # v7: grows
        ("time", ["10:00", "11:00"]),
    ],
)
def test_a_uuid_or_time_cursor_reads_each_row_once(
    postgres_url: str, tmp_path: Path, source: str, kind: str, values: list
) -> None:
    # Such a watermark was kept as text and bound back as text: a query's read failed the next run (no
    # `uuid >= character varying`), and a table's UUID watermark equalled no value read, so the rows at it
    # were read again every run (a quiet table published a version each night).
    engine = sa.create_engine(postgres_url)
    with engine.begin() as db:
        db.execute(sa.text("DROP TABLE IF EXISTS grows"))
        db.execute(sa.text(f"CREATE TABLE grows (id serial PRIMARY KEY, subject text, u {kind})"))
        db.execute(
            sa.text("INSERT INTO grows (subject, u) VALUES ('a', :a), ('b', :b)"), {"a": values[0], "b": values[1]}
        )
    engine.dispose()
    spec = {"table": "grows"} if source == "table" else {"query": "SELECT id, subject, u FROM grows"}
    config = SqlSource(type="sql", url=postgres_url, cursor="u", key=["id"], **spec)
    assert subjects_read_twice(config, tmp_path) == [["a", "b"], []]


@pytest.mark.parametrize("source", [{"table": "ties"}, {"query": "SELECT id, subject, u FROM ties"}])
def test_postgresql_cursor_ties_and_nulls_are_each_read_once(postgres_url: str, tmp_path: Path, source: dict) -> None:
    engine = sa.create_engine(postgres_url)
    with engine.begin() as db:
        db.execute(sa.text("DROP TABLE IF EXISTS ties"))
        db.execute(sa.text("CREATE TABLE ties (id int PRIMARY KEY, subject text, u timestamptz)"))
        db.execute(sa.text("INSERT INTO ties VALUES (1, 'a', '2026-01-01 10:00+00'), (2, 'b', NULL)"))
    config = SqlSource(type="sql", url=postgres_url, cursor="u", key=["id"], **source)
    state = sa.create_engine(f"sqlite:///{tmp_path}/state.db")

    def read() -> tuple[list[str], list[str]]:
        marks = Watermarks(state, "support")
        batches = read_all(config, 10, marks.for_source(config))
        marks.commit("run")
        rows = sorted(r["subject"] for b in batches for r in b.rows.to_pylist())
        return rows, [json.loads(r["record"])["subject"] for b in batches for r in b.set_aside.to_pylist()]

    assert read() == (["a"], ["b"])
    with engine.begin() as db:  # the same moment, written in another offset
        db.execute(sa.text("INSERT INTO ties VALUES (3, 'c', '2026-01-01 12:00+02'), (4, 'd', NULL)"))
    assert read() == (["c"], ["d"])
    assert read() == ([], [])
    engine.dispose()


def skip_without_icu(db: sa.Connection) -> None:
    if not db.execute(sa.text("SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu'")).first():
        pytest.skip("this PostgreSQL has no ICU collations")


def test_postgresql_text_cursor_takes_the_highest_value_in_the_columns_collation(
    postgres_url: str, tmp_path: Path
) -> None:
    # 'a' < 'B' in a linguistic collation (en_US.UTF-8, ICU), not in Python: the watermark was 'a', and
    # 'B' was read and published again by every run.
    engine = sa.create_engine(postgres_url)
    with engine.begin() as db:
        skip_without_icu(db)
        db.execute(sa.text("DROP TABLE IF EXISTS coll"))
        db.execute(sa.text('CREATE TABLE coll (id int, subject text, u text COLLATE "und-x-icu")'))
        db.execute(sa.text("INSERT INTO coll VALUES (1, 'a', 'a'), (2, 'b', 'B')"))
    engine.dispose()
    config = SqlSource(type="sql", url=postgres_url, table="coll", cursor="u")
    assert subjects_read_twice(config, tmp_path) == [["a", "b"], []]


def subjects_read_with_a_row_between(config: SqlSource, folder: Path, url: str, row: str) -> list[list[str]]:
    """The subjects ``config`` reads in a first run and in a second, after ``row`` (SQL values) is added to ``t``."""
    state = sa.create_engine(f"sqlite:///{folder}/state.db")
    reads = []
    for between in (row, None):
        marks = Watermarks(state, "support")
        reads.append(
            sorted(r["subject"] for b in read_all(config, 10, marks.for_source(config)) for r in b.rows.to_pylist())
        )
        marks.commit("run")
        if between is not None:
            engine = sa.create_engine(url)
            with engine.begin() as db:
                db.execute(sa.text(f"INSERT INTO t VALUES {between}"))
            engine.dispose()
    return reads


@pytest.mark.parametrize("source", [{"table": "t"}, {"query": "SELECT id, subject, u FROM t"}])
def test_a_sqlite_text_cursor_of_a_case_insensitive_collation_reads_values_tying_in_it_once(
    tmp_path: Path, source: dict
) -> None:
    # 'a' and 'A' tie in NOCASE: the watermark kept one of them, and the next run read the other again.
    url = f"sqlite:///{tmp_path}/crm.db"
    engine = sa.create_engine(url)
    with engine.begin() as db:
        db.execute(sa.text("CREATE TABLE t (id INTEGER, subject TEXT, u TEXT COLLATE NOCASE)"))
        db.execute(sa.text("INSERT INTO t VALUES (1, 'a', 'a'), (2, 'A', 'A')"))
    engine.dispose()
    config = SqlSource(type="sql", url=url, cursor="u", **source)
    assert subjects_read_with_a_row_between(config, tmp_path, url, "(3, 'B', 'B')") == [["A", "a"], ["B"]]


@pytest.mark.parametrize("source", [{"table": "t"}, {"query": "SELECT id, subject, u FROM t"}])
@pytest.mark.parametrize(
    ("locale", "tied", "later"),
    [
        ("und-u-ks-level2", ["A", "a"], "B"),  # case ignored
        ("und-u-ka-shifted", ["a b", "a-b", "ab"], "B"),  # punctuation and spaces ignored: they were read again
        # Ties no rule in Python foresaw: hiragana and katakana at level 1, symbols ignored (maxVariable=symbol).
        ("und-u-ks-level1", ["か", "カ"], "ん"),
        ("und-u-ka-shifted-kv-symbol", ["a+b", "ab"], "B"),
    ],
)
def test_a_postgresql_text_cursor_of_a_case_insensitive_collation_reads_values_tying_in_it_once(
    postgres_url: str, tmp_path: Path, source: dict, locale: str, tied: list, later: str
) -> None:
    engine = sa.create_engine(postgres_url)
    with engine.begin() as db:
        skip_without_icu(db)
        db.execute(sa.text("DROP TABLE IF EXISTS t"))
        db.execute(sa.text("DROP COLLATION IF EXISTS ci_cursor"))
        db.execute(sa.text(f"CREATE COLLATION ci_cursor (provider = icu, locale = '{locale}', deterministic = false)"))
        db.execute(sa.text("CREATE TABLE t (id int, subject text, u text COLLATE ci_cursor)"))
        for n, value in enumerate(tied):
            db.execute(sa.text("INSERT INTO t VALUES (:n, :v, :v)"), {"n": n, "v": value})
    config = SqlSource(type="sql", url=postgres_url, cursor="u", **source)
    got = subjects_read_with_a_row_between(config, tmp_path, postgres_url, f"(9, '{later}', '{later}')")
    assert got == [tied, [later]]
    with engine.begin() as db:
        db.execute(sa.text("DROP TABLE t"))
    engine.dispose()


@pytest.mark.parametrize("kind", ["real", "double precision"])
@pytest.mark.parametrize("source", [{"table": "t"}, {"query": "SELECT id, subject, u FROM t"}])
def test_a_postgresql_float4_cursor_reads_a_row_tying_at_the_watermark(
    postgres_url: str, tmp_path: Path, source: dict, kind: str
) -> None:
    # psycopg reads a real 0.7 as the double 0.7, above the 0.69999998... stored: a query's bound double took
    # no row at the watermark, so a row written after the run with the same value was never read.
    engine = sa.create_engine(postgres_url)
    with engine.begin() as db:
        db.execute(sa.text("DROP TABLE IF EXISTS t"))
        db.execute(sa.text(f"CREATE TABLE t (id int, subject text, u {kind})"))
        db.execute(sa.text("INSERT INTO t VALUES (1, 'a', 0.5), (2, 'b', 0.7)"))
    config = SqlSource(type="sql", url=postgres_url, cursor="u", **source)
    assert subjects_read_with_a_row_between(config, tmp_path, postgres_url, "(3, 'c', 0.7)") == [["a", "b"], ["c"]]
    with engine.begin() as db:
        db.execute(sa.text("DROP TABLE t"))
    engine.dispose()


def test_a_sqlite_datetime_cursor_takes_the_latest_moment_whatever_text_sorts_last(tmp_path: Path) -> None:
    # In text order, '2026-01-01 23:00:00+00:00' sorts before '2026-01-01T09:00:00Z' (' ' < 'T'): the
    # watermark was 09:00, and the 23:00 row was read and published again.
    rows = [(1, "a", "x", "2026-01-01T09:00:00Z"), (2, "b", "y", "2026-01-01 23:00:00+00:00")]
    url = small_table(tmp_path / "crm.db", rows, cursor_type="DATETIME")
    config = SqlSource(type="sql", url=url, table="t", cursor="u")
    assert subjects_read_twice(config, tmp_path) == [["b", "a"], []]


@pytest.mark.parametrize(
    ("kind", "source"),
    [
        ("DATETIME", {"query": "SELECT * FROM t"}),
        ("TEXT", {"table": "t"}),
        ("", {"query": "SELECT id, subject, u FROM t"}),
    ],
)
def test_a_sqlite_cursor_of_date_text_from_a_query_or_a_text_column_is_compared_as_moments(
    tmp_path: Path, kind: str, source: dict
) -> None:
    # A query's column, or one not declared a date, came as text and was compared as text: a row written
    # '2026-01-02 10:00:00' sorted before the watermark '2026-01-02T09:00:00' ('T' > ' ') and was never read.
    url = small_table(
        tmp_path / "crm.db", [(1, "a", "x", "2026-01-02T08:00:00"), (2, "b", "y", "2026-01-02T09:00:00")], kind
    )
    config = SqlSource(type="sql", url=url, cursor="u", **source)
    engine = sa.create_engine(f"sqlite:///{tmp_path}/state.db")

    def read(committed: dict | None = None) -> list[str]:
        marks = Watermarks(engine, "support")
        mark = marks.for_source(config)
        if committed is not None:
            mark.committed = committed
        subjects = sorted(r["subject"] for b in read_all(config, 10, mark) for r in b.rows.to_pylist())
        marks.commit("run")
        return subjects

    assert read() == ["a", "b"]
    assert read() == []
    later = [
        (3, "c", "z", "2026-01-02T09:00:00"),
        (4, "d", "w", "2026-01-02 10:00:00"),
        (5, "e", "v", "2026-01-02 09:00:00.5"),
        (6, "f", "u", "2026-01-02T08:59"),  # written later with an older moment: not seen (the README says so)
    ]
    small_table(tmp_path / "crm.db", later)
    assert read() == ["c", "d", "e"]
    assert read() == []
    # A watermark an earlier release kept as the text it read: the moment it spells.
    assert read({"cursor": {"type": "str", "value": "2026-01-02T09:00:00"}}) == ["d", "e"]
    assert read() == []


def test_a_sqlite_text_cursor_not_of_dates_keeps_the_columns_order(tmp_path: Path) -> None:
    # Its order is the column's collation ('a' < 'B' in NOCASE), as before: not taken for moments.
    engine = sa.create_engine(f"sqlite:///{tmp_path}/crm.db")
    with engine.begin() as db:
        db.execute(sa.text("CREATE TABLE w (id, subject TEXT, u TEXT COLLATE NOCASE)"))
        db.execute(sa.text("INSERT INTO w VALUES (1, 'a', 'a'), (2, 'b', 'B'), (3, 'c', '2026-01-01')"))
    engine.dispose()
    url = f"sqlite:///{tmp_path}/crm.db"
    for source in ({"table": "w_words"}, {"query": "SELECT * FROM w WHERE id < 3"}):
        if "table" in source:
            sqlite_db(tmp_path / "crm.db", "CREATE VIEW w_words AS SELECT * FROM w WHERE id < 3")
        (tmp_path / "state.db").unlink(missing_ok=True)
        assert subjects_read_twice(SqlSource(type="sql", url=url, cursor="u", **source), tmp_path) == [["a", "b"], []]
    # Words and a date in one cursor do not compare: said, not read in an order that is neither's.
    with pytest.raises(SqlSourceError, match=r"text in a date form \(compared as the moment it spells\), str"):
        read_all(SqlSource(type="sql", url=url, cursor="u", table="w"), 10)


def test_the_rows_taken_at_the_watermark_are_known_whatever_rows_share_their_batch(
    postgres_url: str, tmp_path: Path
) -> None:
    # Arrow writes a decimal by its batch's scale (1.5 is '1.50' beside 1.25): the rows taken at the value,
    # read again beside other rows, were not known and were published again.
    engine = sa.create_engine(postgres_url)
    with engine.begin() as db:
        db.execute(sa.text("DROP TABLE IF EXISTS amounts"))
        db.execute(sa.text("CREATE TABLE amounts (id int PRIMARY KEY, subject text, amount numeric, u int)"))
        db.execute(sa.text("INSERT INTO amounts VALUES (1, 'a', 1.25, 1), (2, 'b', 1.5, 2)"))
    config = SqlSource(type="sql", url=postgres_url, table="amounts", cursor="u")
    state = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    for expected in (["a", "b"], ["c"], []):
        marks = Watermarks(state, "support")
        assert [r["subject"] for b in read_all(config, 10, marks.for_source(config)) for r in b.rows.to_pylist()] == (
            expected
        )
        marks.commit("run")
        with engine.begin() as db:
            db.execute(sa.text("INSERT INTO amounts VALUES (3, 'c', 1.125, 3) ON CONFLICT DO NOTHING"))
    engine.dispose()


@pytest.mark.parametrize("kind", ["float8", "numeric"])
def test_postgresql_nan_cursor_values_are_no_values(postgres_url: str, tmp_path: Path, kind: str) -> None:
    # NaN sorts above every number in PostgreSQL and equals nothing in Python: a float NaN became the
    # watermark (later rows were never read, the NaN rows read again each run); a numeric one did not
    # compare at all (decimal.InvalidOperation, a traceback).
    engine = sa.create_engine(postgres_url)
    with engine.begin() as db:
        db.execute(sa.text("DROP TABLE IF EXISTS nans"))
        db.execute(sa.text(f"CREATE TABLE nans (id int PRIMARY KEY, subject text, u {kind})"))
        db.execute(sa.text("INSERT INTO nans VALUES (1, 'a', 1), (2, 'b', 'NaN'), (3, 'c', 2)"))
    config = SqlSource(type="sql", url=postgres_url, table="nans", cursor="u")
    state = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    for expected in ((["a", "c"], ["b"]), (["d"], []), ([], [])):
        marks = Watermarks(state, "support")
        batches = read_all(config, 10, marks.for_source(config))
        marks.commit("run")
        assert [r["subject"] for b in batches for r in b.rows.to_pylist()] == expected[0]
        assert [json.loads(r["record"])["subject"] for b in batches for r in b.set_aside.to_pylist()] == expected[1]
        with engine.begin() as db:
            db.execute(sa.text("INSERT INTO nans VALUES (4, 'd', 3) ON CONFLICT DO NOTHING"))
    engine.dispose()


def test_ids_of_rows_without_a_key_do_not_change_with_the_decimal_scale_of_their_batch(
    postgres_url: str, tmp_path: Path
) -> None:
    # Arrow writes a decimal by its batch's scale: an unscaled numeric 1.5 was '1.50' beside 1.25 and '1.5'
    # alone, so the same row got another id (and a table without a cursor another fingerprint, read as a
    # change) as the rows read beside it changed.
    from connectors.sql import source_uri
    from schemas.records import record_ids

    engine = sa.create_engine(postgres_url)
    with engine.begin() as db:
        db.execute(sa.text("DROP TABLE IF EXISTS scales"))
        db.execute(
            sa.text("CREATE TABLE scales (id int PRIMARY KEY, subject text, amount numeric, fixed numeric(6, 2))")
        )
        db.execute(
            sa.text(
                "INSERT INTO scales VALUES (1, 'a', 1.25, 1.25), (2, 'b', 1.5, 1.5), (3, 'c', 2, 2), (4, 'd', NULL, 3)"
            )
        )
    engine.dispose()
    config = SqlSource(type="sql", url=postgres_url, query="SELECT subject, amount, fixed FROM scales ORDER BY id")

    def ids(batch_rows: int) -> dict[str, str]:
        return {r["subject"]: r["id"] for b in read_all(config, batch_rows) for r in b.rows.to_pylist()}

    assert ids(4) == ids(1)
    # Each value as it is written alone; a column of one scale as before, so published ids do not move.
    contents = [b"a\x1f1.25\x1f1.25", b"b\x1f1.5\x1f1.50", b"c\x1f2\x1f2.00", b"d\x1f\x00\x1f3.00"]
    assert list(ids(4).values()) == record_ids(source_uri(config), [0] * 4, contents).to_pylist()
    assert SqlSourceReader(config, 4)._fingerprint() == SqlSourceReader(config, 1)._fingerprint()


def test_a_postgresql_numeric_infinity_is_read_as_text_not_a_traceback(postgres_url: str) -> None:
    # pyarrow raised a bare TypeError ('str' object cannot be interpreted as an integer) on the decimal.
    config = SqlSource(
        type="sql",
        url=postgres_url,
        query="SELECT 'a' AS subject, 'Infinity'::numeric AS v UNION ALL SELECT 'b', '-Infinity' UNION ALL SELECT 'c', 1.5",
    )
    rows = [r for b in read_all(config, 10) for r in b.rows.to_pylist()]
    assert sorted(r["v"] for r in rows) == ["-Infinity", "1.5", "Infinity"]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_query_is_run_as_written_whatever_colons_and_comments_it_holds(
    postgres_url: str, tmp_path: Path, database: str
) -> None:
    # SQLAlchemy's text() took ':1' in a literal for a bind parameter ("A value is required for bind
    # parameter '1'"), and a '-- comment' ending the query swallowed the parenthesis that wraps it.
    url = postgres_url if database == "postgresql" else f"sqlite:///{tmp_path}/crm.db"
    notes_table(url, "id int, subject text, u int", [(1, 'ref:1 {"n":3}', 1), (2, r"at 10:30 \: ok", 2)])
    cast = "::text" if database == "postgresql" else ""
    query = (
        f"SELECT id, subject{cast} AS subject, u, ':who' AS who FROM notes "
        "WHERE subject LIKE '%:1%' OR subject LIKE '%\\:%' -- a note: both rows;"
    )
    config = SqlSource(type="sql", url=url, query=query, cursor="u")
    assert subjects_read_twice(config, tmp_path) == [['ref:1 {"n":3}', r"at 10:30 \: ok"], []]
    rows = [r for b in read_all(config, 10) for r in b.rows.to_pylist()]
    assert {r["who"] for r in rows} == {":who"}


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_query_ending_in_a_semicolon_then_a_comment_runs(postgres_url: str, tmp_path: Path, database: str) -> None:
    # Only a semicolon ending the text was taken off: one followed by a comment ('...; -- nightly') was left
    # inside the subquery the query is run as, a syntax error. One in a string or a comment stays.
    url = postgres_url if database == "postgresql" else f"sqlite:///{tmp_path}/crm.db"
    notes_table(url, "id int, subject text", [(1, "a;"), (2, "b"), (3, "c")])
    query = (
        "WITH latest AS (SELECT id, subject FROM notes WHERE subject <> ';') -- the CTE; then\n"
        "SELECT id, subject, 'x;' AS mark FROM latest ORDER BY id DESC LIMIT 2;  -- nightly; see the wiki\n"
        "/* the end; */\n"
    )
    rows = [
        r for b in read_all(SqlSource(type="sql", url=url, query=query, cursor="id"), 10) for r in b.rows.to_pylist()
    ]
    assert [(r["input_id"], r["subject"], r["mark"]) for r in rows] == [(2, "b", "x;"), (3, "c", "x;")]


@pytest.mark.parametrize(
    ("source", "key", "later"),
    [
        ({"table": "t"}, ["id"], (1, "c", "z", 3)),  # shares its key with a row before the watermark
        ({"query": "SELECT id, subject, reply, u FROM t"}, ["id"], (1, "c", "z", 3)),
        ({"table": "t"}, ["id", "reply"], (1, "c", "x", 3)),
        ({"table": "t"}, ["id"], (2, "c", "z", 3)),  # with the row taken at the watermark (read, not new)
        ({"table": "t"}, ["id"], (None, "c", "z", 3)),  # a NULL key, as NULL
    ],
)
def test_a_row_sharing_its_key_with_a_row_an_earlier_run_read_fails_the_run(
    workdir: Path, source: dict, key: list, later: tuple
) -> None:
    # The new row was published under the earlier row's id and replaced its record ("an edit"), though
    # both are in the table: the earlier row's record was gone from the dataset.
    url = small_table(workdir / "crm.db", [(1, "a", "x", 1), (None, "n", "x", 1), (2, "b", "y", 2)])
    spec = recipe(url, cursor="u", key=key, **source)
    assert run(workdir, spec).manifest.counts.written == 3
    small_table(workdir / "crm.db", [(3, "d", "w", 3), later])
    with pytest.raises(SqlSourceError) as error:
        run(workdir, spec)
    assert "row 3 of the result has the same key" in str(error.value)  # after 2 (taken) and 3 (new)
    assert f"({', '.join(key)})" in str(error.value) and "'c'" not in str(error.value)


@pytest.mark.parametrize(("kind", "first", "later"), [("jsonb", '{"a": 1}', '{"b": 2}'), ("int[]", "{1,2}", "{3}")])
def test_a_json_or_array_key_is_asked_for_in_rows_an_earlier_run_read(
    postgres_url: str, tmp_path: Path, kind: str, first: str, later: str
) -> None:
    # Its values are dicts and lists: the keys asked of the database were made a set of them, and the
    # second run failed on a TypeError (unhashable type: 'dict').
    engine = sa.create_engine(postgres_url)
    with engine.begin() as db:
        db.exec_driver_sql("DROP TABLE IF EXISTS shaped")
        db.exec_driver_sql(f"CREATE TABLE shaped (code {kind}, subject text, u int)")
        db.execute(sa.text("INSERT INTO shaped VALUES (CAST(:code AS TEXT)::" + kind + ", 'a', 1)"), {"code": first})
    state = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    for source in ({"table": "shaped"}, {"query": "SELECT code, subject, u FROM shaped"}):
        config = SqlSource(type="sql", url=postgres_url, cursor="u", key=["code"], **source)
        marks = Watermarks(state, source.get("table", "q"))
        read_all(config, 10, marks.for_source(config))
        marks.commit("run")
        with engine.begin() as db:
            insert = sa.text("INSERT INTO shaped VALUES (CAST(:code AS TEXT)::" + kind + ", :subject, 2)")
            db.execute(insert, {"code": later, "subject": "b"})
        marks = Watermarks(state, source.get("table", "q"))
        assert [r["subject"] for b in read_all(config, 10, marks.for_source(config)) for r in b.rows.to_pylist()] == [
            "b"
        ]
        marks.commit("run")
        with engine.begin() as db:
            db.execute(
                sa.text("INSERT INTO shaped VALUES (CAST(:code AS TEXT)::" + kind + ", 'c', 3)"), {"code": first}
            )
        with pytest.raises(SqlSourceError, match=r"has the same key \(code\) as a row an earlier run read"):
            read_all(config, 10, Watermarks(state, source.get("table", "q")).for_source(config))
        with engine.begin() as db:
            db.exec_driver_sql("DELETE FROM shaped WHERE u > 1")
    engine.dispose()


@pytest.mark.parametrize("key", [["k"], ["k", "subject"], ["k", "tag"]])
@pytest.mark.parametrize("source", [{"table": "t"}, {"query": "SELECT k, subject, tag, u FROM t"}])
@pytest.mark.parametrize(
    ("kind", "value", "other"),
    [
        ("real", "0.7", "0.5"),
        ("double precision", "0.7", "0.5"),
        ("numeric", "0.70", "0.5"),
        ("timestamp", "2026-01-01 10:00:00.5", "2026-01-02 10:00"),
        ("timestamptz", "2026-01-01 10:00:00.5+02", "2026-01-02 10:00+00"),
        ("date", "2026-01-01", "2026-01-02"),
        ("uuid", "018f0000-0000-7000-8000-000000000001", "018f0000-0000-7000-8000-000000000002"),
    ],
)
def test_a_postgresql_key_is_found_in_rows_an_earlier_run_read_in_its_columns_type(
    postgres_url: str, tmp_path: Path, source: dict, key: list, kind: str, value: str, other: str
) -> None:
    # A real key was asked for as doubles (`k = ANY(float8[])`): real 0.7 is 0.69999998 widened, no double
    # 0.7, so a new row sharing the key of a row before the watermark was published as an edit of it.
    engine = sa.create_engine(postgres_url)
    with engine.begin() as db:
        db.execute(sa.text("DROP TABLE IF EXISTS t"))
        db.execute(sa.text(f"CREATE TABLE t (k {kind}, subject text, tag text, u int)"))
        db.execute(sa.text(f"INSERT INTO t VALUES ('{value}', 'a', NULL, 1), ('{other}', 'b', NULL, 2)"))
    state = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    config = SqlSource(type="sql", url=postgres_url, cursor="u", key=key, **source)
    marks = Watermarks(state, "support")
    read_all(config, 10, marks.for_source(config))
    marks.commit("run")
    with engine.begin() as db:
        db.execute(sa.text(f"INSERT INTO t VALUES ('{value}', 'a', NULL, 3)"))
    with pytest.raises(SqlSourceError, match=r"row 2 of the result has the same key \(.*\) as a row an earlier run"):
        read_all(config, 10, Watermarks(state, "support").for_source(config))
    with engine.begin() as db:
        db.execute(sa.text("DROP TABLE t"))
    engine.dispose()


def test_rows_whose_keys_only_the_databases_collation_makes_equal_are_two_rows(
    postgres_url: str, tmp_path: Path
) -> None:
    # Asked with key IN (...), the database's comparison finds 'A' for 'a' in a case-insensitive column: the
    # ids (the key's text) differ, so they are two records, as within one read.
    engine = sa.create_engine(postgres_url)
    with engine.begin() as db:
        skip_without_icu(db)
        db.execute(sa.text("DROP COLLATION IF EXISTS nocase"))
        db.execute(
            sa.text("CREATE COLLATION nocase (provider = icu, locale = 'und-u-ks-level2', deterministic = false)")
        )
        db.execute(sa.text("DROP TABLE IF EXISTS keyed"))
        db.execute(sa.text("CREATE TABLE keyed (code text COLLATE nocase, subject text, u int)"))
        db.execute(sa.text("INSERT INTO keyed VALUES ('a', 'a', 1), ('b', 'b', 2)"))
    state = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    for source in ({"table": "keyed"}, {"query": "SELECT code, subject, u FROM keyed"}):
        config = SqlSource(type="sql", url=postgres_url, cursor="u", key=["code"], **source)
        reads = []
        for _ in range(2):
            marks = Watermarks(state, source.get("table", "q"))
            reads.append(
                [r["subject"] for b in read_all(config, 10, marks.for_source(config)) for r in b.rows.to_pylist()]
            )
            marks.commit("run")
            with engine.begin() as db:
                db.execute(
                    sa.text("INSERT INTO keyed SELECT 'A', 'A', 3 WHERE NOT EXISTS (SELECT 1 FROM keyed WHERE u = 3)")
                )
        assert reads == [["a", "b"] if "table" in source else ["a", "b", "A"], ["A"] if "table" in source else []]
    # A key the database holds twice in rows before the watermark is found, with a tuple of columns too.
    with engine.begin() as db:
        db.execute(sa.text("INSERT INTO keyed VALUES ('b', 'b2', 4)"))
    marks = Watermarks(state, "keyed")
    config = SqlSource(type="sql", url=postgres_url, cursor="u", key=["code", "subject"], table="keyed")
    read_all(config, 10, marks.for_source(config))
    marks.commit("run")
    with engine.begin() as db:
        db.execute(sa.text("INSERT INTO keyed VALUES ('a', 'a', 5)"))
    with pytest.raises(
        SqlSourceError, match=r"row 2 of the result has the same key \(code, subject\) as a row an earlier"
    ):
        read_all(config, 10, Watermarks(state, "keyed").for_source(config))
    engine.dispose()


def test_a_value_postgresql_cannot_take_is_left_out_of_the_error(postgres_url: str) -> None:
    # PostgreSQL's data exceptions quote the value: a row's email reached the run's error and its log.
    engine = sa.create_engine(postgres_url)
    with engine.begin() as db:
        db.execute(sa.text("DROP TABLE IF EXISTS casts"))
        db.execute(sa.text("CREATE TABLE casts (id int, subject text)"))
        db.execute(sa.text("INSERT INTO casts VALUES (1, '42'), (2, 'jane.roe@example.com')"))
        # PostgreSQL quotes a value as it is: a quote or newline in it ended the part left out there.
        db.execute(sa.text("""INSERT INTO casts VALUES (3, 'x" jane.roe@example.com'), (4, E'x\\njane.roe')"""))
    engine.dispose()
    for query, said in [
        (
            "SELECT id, subject::int AS n FROM casts WHERE id = 3",
            'InvalidTextRepresentation: invalid input syntax for type integer: "..." (the value',
        ),
        (
            "SELECT id, subject::int AS n FROM casts WHERE id = 4",
            'InvalidTextRepresentation: invalid input syntax for type integer: "..." (the value',
        ),
        (
            "SELECT id, subject::int AS n FROM casts WHERE id < 3",
            'InvalidTextRepresentation: invalid input syntax for type integer: "..."',
        ),
        (
            "SELECT id, to_date(subject, 'YYYY') AS n FROM casts WHERE id = 2",
            'InvalidDatetimeFormat: invalid value "..."',
        ),
    ]:
        with pytest.raises(SqlSourceError) as error:
            read_all(SqlSource(type="sql", url=postgres_url, query=query), 10)
        assert said in str(error.value) and "jane" not in str(error.value)
    with pytest.raises(SqlSourceError, match='relation "nowhere" does not exist'):  # not a value: kept
        read_all(SqlSource(type="sql", url=postgres_url, query="SELECT * FROM nowhere"), 10)


@pytest.mark.parametrize("declared", ["DATETIME", "TEXT"])
def test_sqlite_moments_with_and_without_a_utc_offset_compare_in_one_cursor(tmp_path: Path, declared: str) -> None:
    # SQLite reads a moment written without an offset as UTC: '...10:00:00' and '...T10:00:00Z' in one column
    # failed the run ("datetime with a UTC offset, datetime without one" do not compare).
    url = small_table(
        tmp_path / "crm.db", [(1, "a", "x", "2026-01-01 10:00:00"), (2, "b", "y", "2026-01-02T10:00:00Z")], declared
    )
    config = SqlSource(type="sql", url=url, table="t", cursor="u")
    state = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    later = [(3, "c", "z", "2026-01-02 11:00:00"), (4, "d", "w", "2026-01-02T09:00:00+00:00")]
    for expected, added in ((["a", "b"], later), (["c"], [])):
        marks = Watermarks(state, "support")
        assert [r["subject"] for b in read_all(config, 10, marks.for_source(config)) for r in b.rows.to_pylist()] == (
            expected
        )
        marks.commit("run")
        small_table(tmp_path / "crm.db", added, declared)


def test_a_sqlite_query_naming_a_column_twice_is_refused_too(tmp_path: Path) -> None:
    # SQLite renames the second column of the query (run as a subquery) 'q:1': the first one's values
    # were read as q, and the check for a name twice saw none.
    url = sqlite_db(tmp_path / "crm.db", "CREATE TABLE twice AS SELECT 'Where?' AS q, 'Here.' AS a")
    config = SqlSource(type="sql", url=url, query="SELECT q, a AS q, a AS q FROM twice")
    said = r"#query-[0-9a-f]+: column\(s\) 'q' appear more than once in the result: name each column once \(AS\)"
    with pytest.raises(SqlSourceError, match=said):
        SqlSourceReader(config, 10).probe()
    with pytest.raises(SqlSourceError, match=said):
        read_all(config, 10)
    named = SqlSource(type="sql", url=url, query='SELECT q, a AS "a:1" FROM twice')  # no column named a: kept
    (batch,) = read_all(named, 10)
    assert batch.rows.to_pylist()[0]["a:1"] == "Here."


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_query_takes_params_bound_by_the_driver_and_a_cursor_reads_on_with_them(
    postgres_url: str, tmp_path: Path, database: str
) -> None:
    # A query took no parameters: a value was pasted into its SQL (a quote in it broke the query, or injected).
    url = postgres_url if database == "postgresql" else f"sqlite:///{tmp_path}/crm.db"
    engine = sa.create_engine(url)

    def insert(*rows: tuple) -> None:
        with engine.begin() as db:
            for row in rows:
                db.execute(
                    sa.text("INSERT INTO notes VALUES (:id, :subject, :team, :u)"), dict(zip(columns, row, strict=True))
                )

    columns = ["id", "subject", "team", "u"]
    rows = [(1, "a", "it's", 1), (2, "b", "other", 2), (3, "c", "it's", 3), (0, "z", "it's", 0)]
    notes_table(url, "id int, subject text, team text, u int", rows)
    since = ":since::int" if database == "postgresql" else ":since"  # a cast right after a parameter
    query = f"SELECT id, subject, u, ':team' AS said FROM notes WHERE team = :team AND u >= {since}"
    config = SqlSource(type="sql", url=url, query=query, params={"team": "it's", "since": 1}, cursor="u", key=["id"])
    state = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    reads = []
    for added in [(4, "d", "it's", 4), (5, "e", "other", 5)], [(1, "f", "it's", 6)]:
        marks = Watermarks(state, "support")
        rows = [r for b in read_all(config, 10, marks.for_source(config)) for r in b.rows.to_pylist()]
        reads.append([(r["subject"], r["said"]) for r in rows])
        marks.commit("run")
        insert(*added)
    assert reads == [[("a", ":team"), ("c", ":team")], [("d", ":team")]]
    # The rows before the watermark are asked for the new rows' keys through the query, its parameters bound.
    with pytest.raises(SqlSourceError, match=r"row 2 of the result has the same key \(id\) as a row an earlier run"):
        read_all(config, 10, Watermarks(state, "support").for_source(config))
    assert SqlSourceReader(config, 10).probe() == ["id", "subject", "u", "said"]  # `curation check`
    engine.dispose()
    state.dispose()


def test_a_querys_parameters_and_params_must_match() -> None:
    query = "SELECT id, subject FROM notes WHERE team = :team AND note <> ':other' AND at > x::date -- :gone"
    with pytest.raises(ValueError, match=r"the query's parameter ':team' has no value in 'params'"):
        SqlSource(type="sql", url="sqlite://", query=query)
    with pytest.raises(ValueError, match=r"params: 'other' is not used in the query \(no ':other' outside quotes\)"):
        SqlSource(type="sql", url="sqlite://", query=query, params={"team": "a", "other": "b"})
    with pytest.raises(ValueError, match="a 'table' takes none"):
        SqlSource(type="sql", url="sqlite://", table="notes", params={"team": "a"})
    # The values are part of the source's identity (another team's rows are another source); a query without
    # them keeps the one it had.
    uris = {
        SqlSourceReader(SqlSource(type="sql", url="sqlite://", query=query, params={"team": t}), 1).uri for t in "ab"
    }
    assert len(uris) == 2
    plain = SqlSourceReader(SqlSource(type="sql", url="sqlite://", query="SELECT 1 AS subject"), 1).uri
    assert plain == "sqlite://#query-" + hashlib.sha256(b"SELECT 1 AS subject").hexdigest()[:12]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_list_param_is_bound_one_value_each_in_in_or_as_an_array_on_postgresql(
    postgres_url: str, tmp_path: Path, database: str
) -> None:
    # A list was refused: a query for some teams' rows had their names pasted into its SQL.
    url = postgres_url if database == "postgresql" else f"sqlite:///{tmp_path}/crm.db"
    rows = [(1, "a", "it's", 1), (2, "b", "cards", 2), (3, "c", "other", 3), (4, "d", "cards", 4)]
    notes_table(url, "id int, subject text, team text, u int", rows)

    def subjects(query: str, **params: object) -> list[str]:
        config = SqlSource(type="sql", url=url, query=query, params=params, cursor="u", key=["id"])
        return [r["subject"] for b in read_all(config, 10) for r in b.rows.to_pylist()]

    query = "SELECT id, subject, u FROM notes WHERE team IN :teams AND id NOT IN :gone"
    assert subjects(query, teams=["it's", "cards"], gone=[4]) == ["a", "b"]
    if database == "postgresql":  # an array, compared with ANY, cast as the query says
        query = "SELECT id, subject, u FROM notes WHERE team = ANY(:teams) AND u = ANY(:us::int[])"
        assert subjects(query, teams=["cards", "other"], us=["3", "4"]) == ["c", "d"]
    # A later run reads on from the watermark with them, and asks for the new rows' keys through the query.
    params = {"teams": ["cards"], **({"us": [2, 4, 5]} if database == "postgresql" else {"gone": [1]})}
    config = SqlSource(type="sql", url=url, query=query, params=params, cursor="u", key=["id"])
    state = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    reads = []
    for _ in range(2):
        marks = Watermarks(state, "support")
        reads.append([r["subject"] for b in read_all(config, 10, marks.for_source(config)) for r in b.rows.to_pylist()])
        marks.commit("run")
    assert reads == [["b", "d"], []]
    engine = sa.create_engine(url)
    with engine.begin() as db:
        db.execute(sa.text("INSERT INTO notes VALUES (2, 'e', 'cards', 5)"))
    engine.dispose()
    with pytest.raises(SqlSourceError, match=r"row 2 of the result has the same key \(id\) as a row an earlier run"):
        read_all(config, 10, Watermarks(state, "support").for_source(config))
    state.dispose()
    # The values are the source's identity, as a single value's are.
    other = SqlSource(type="sql", url=url, query=query, params={**config.params, "teams": ["cards", "x"]})
    assert SqlSourceReader(other, 1).uri != SqlSourceReader(config, 1).uri


@pytest.mark.parametrize(
    ("url", "query", "value", "said"),
    [
        (
            "sqlite://",
            "WHERE team = :team",
            "[payments, cards]",
            "'team' is a list: write 'column IN :team' (only PostgreSQL binds a list as an array, '= ANY(:team)')",
        ),
        (
            "postgresql+psycopg://db/crm",
            "WHERE team IN (:team)",
            "[payments]",
            "'team' is a list: write 'IN :team', without parentheses (its own)",
        ),
        (
            "postgresql+psycopg://db/crm",
            "WHERE team IN :team OR :team = '{}'",
            "[a]",
            "'team' is a list, which the query uses both in 'IN :team' and elsewhere: a list is bound either way in one query",
        ),
    ],
)
def test_a_list_param_written_where_no_list_binds_is_a_recipe_error_saying_how(
    url: str, query: str, value: str, said: str
) -> None:
    from schemas.config import RecipeError, parse_recipe

    recipe = f"""dataset: support
sources:
  - type: sql
    url: {url}
    query: "SELECT id FROM notes {query}"
    params: {{team: {value}}}
record: {{kind: document, text: input_id}}
"""
    with pytest.raises(RecipeError) as raised:
        parse_recipe(recipe, origin="recipe.yaml")
    assert str(raised.value).splitlines()[1:] == [f"  sources.0 (line 3): params: {said}"]


@pytest.mark.parametrize("value", ["'payments, cards'", "7", "null"])
def test_one_value_written_in_a_list_s_place_is_a_recipe_error_saying_to_give_a_list(
    tmp_path: Path, value: str
) -> None:
    # SQLite (as PostgreSQL) reads 'NOT IN 7', 'NOT IN NULL' or 'NOT IN 'payments, cards'' as a syntax
    # error, which the run met only once it asked the database.
    from schemas.config import RecipeError, load_recipe

    url = small_table(tmp_path / "crm.db", [(1, "a", "r", 1), (2, "b", "r", 2)])
    recipe = tmp_path / "recipe.yaml"

    def written(params: str) -> Path:
        recipe.write_text(f"""dataset: support
sources:
  - type: sql
    url: {url}
    query: "SELECT id, subject, u FROM t WHERE id NOT IN :gone"
    params: {{gone: {params}}}
record: {{kind: document, text: subject}}
""")
        return recipe

    with pytest.raises(RecipeError) as raised:
        load_recipe(written(value))
    assert str(raised.value).splitlines()[1:] == [
        "  sources.0 (line 3): params: 'gone' is one value, not a list: 'IN :gone' takes a list ('gone: [...]', "
        "one value or more); for one value write '= :gone'"
    ]
    # As it says: a one-value list is read.
    [source] = load_recipe(written("[1]")).sources
    assert [r["subject"] for b in read_all(source, 10) for r in b.rows.to_pylist()] == ["b"]


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (
            "{a: 1}",
            "'team' is a mapping: a parameter takes one value, a string, number, boolean, date, datetime or null, or a list of them",
        ),
        (
            "[[a], b]",
            "'team' is a list holding a null, list or mapping: a list's values are strings, numbers, booleans, dates or datetimes (IN matches no NULL)",
        ),
        ("[1, b]", "'team' is a list mixing int, str: a list's values are of one type"),
        (
            "[]",
            "'team' is an empty list: a list needs a value ('IN' none matches no row: leave the condition out of the query)",
        ),
    ],
)
def test_a_param_holding_what_binds_as_no_value_is_one_problem_naming_it(value: str, said: str) -> None:
    from schemas.config import RecipeError, parse_recipe

    recipe = f"""dataset: support
sources:
  - type: sql
    url: sqlite://
    query: "SELECT id FROM notes WHERE team IN :team"
    params: {{team: {value}}}
record: {{kind: document, text: input_id}}
"""
    with pytest.raises(RecipeError) as raised:
        parse_recipe(recipe, origin="recipe.yaml")
    # Not one line per type of the union the value is not (str, int, float, bool, datetime, date, list).
    assert str(raised.value).splitlines()[1:] == [f"  sources.0.params (line 6): {said}"]


def test_new_rows_keys_are_asked_of_rows_before_the_watermark_in_few_statements(tmp_path: Path) -> None:
    # The database was asked once per batch of new rows: a scan of the source each (without an index on the key).
    url = small_table(tmp_path / "crm.db", [(i, f"s{i}", "r", i) for i in range(1, 21)])
    config = SqlSource(type="sql", url=url, table="t", cursor="u", key=["id"])
    state = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    asked: list[str] = []

    def note(_conn, _cursor, statement: str, *_: object) -> None:
        if "json_each" in statement:  # the look-up of one key column's values in rows before the watermark
            asked.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", note)
    try:
        reads = []
        for added in [(i, f"s{i}", "r", i) for i in range(21, 41)], [(i, f"s{i}", "r", i) for i in range(41, 53)]:
            marks = Watermarks(state, "support")
            reads.append(len([r for b in read_all(config, 5, marks.for_source(config)) for r in b.rows.to_pylist()]))
            marks.commit("run")
            small_table(tmp_path / "crm.db", added)
        assert reads == [20, 20] and len(asked) == 1  # the second read's five batches in one statement
        small_table(tmp_path / "crm.db", [(3, "again", "r", 53)])
        # Found when asked at the read's end, naming its row (the 14th: the row at the watermark, then 41 to 53).
        with pytest.raises(SqlSourceError, match=r"row 14 of the result has the same key \(id\) as a row an earlier"):
            read_all(config, 5, Watermarks(state, "support").for_source(config))
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", note)
    state.dispose()


@pytest.mark.parametrize("declared", ["DATETIME", "JSON"])
def test_a_not_utf8_key_of_a_converted_type_is_asked_of_the_rows_before_the_watermark(
    tmp_path: Path, declared: str
) -> None:
    # The rows before the watermark were asked for with SQLAlchemy's DATETIME/JSON converters on the key: the
    # not-UTF-8 text a row holds (set aside when read) failed the run with a TypeError from deep inside them.
    path = tmp_path / "crm.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"CREATE TABLE t (code {declared}, subject TEXT, u INTEGER)")
        good = "'2026-01-01 00:00:00'" if declared == "DATETIME" else "'\"k\"'"
        db.execute(f"INSERT INTO t VALUES (CAST(X'6A616E65E9' AS TEXT), 'bad', 1), ({good}, 'ok', 2)")
        db.commit()
    config = SqlSource(type="sql", url=f"sqlite:///{path}", table="t", cursor="u", key=["code"])
    state = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    marks = Watermarks(state, "support")
    assert [r["subject"] for b in read_all(config, 10, marks.for_source(config)) for r in b.rows.to_pylist()] == ["ok"]
    marks.commit("run")
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("INSERT INTO t VALUES (CAST(X'6A616E65E9' AS TEXT), 'again', 3)")
        db.commit()
    with pytest.raises(SqlSourceError, match=r"same key \(code\) as a row an earlier run"):
        read_all(config, 10, Watermarks(state, "support").for_source(config))


def test_a_query_selecting_a_column_named_as_the_cursor_ties_keeps_its_values(tmp_path: Path) -> None:
    # The read adds the cursor's ties as curation_cursor_group and curation_at_watermark; SQLAlchemy converts a
    # result's values by column name, so a query's own column of that name came back true from the second run
    # on: its rows at the watermark looked edited, were read again and published again.
    engine = sa.create_engine(f"sqlite:///{tmp_path}/crm.db")
    with engine.begin() as db:
        db.execute(sa.text("CREATE TABLE t (id INTEGER, subject TEXT, u TEXT)"))
        db.execute(sa.text("INSERT INTO t VALUES (1, 'a', 'a'), (2, 'b', 'b'), (3, 'c', 'c')"))
    query = "SELECT id, subject, u, 7 AS curation_cursor_group, 1 AS curation_at_watermark FROM t"
    config = SqlSource(type="sql", url=f"sqlite:///{tmp_path}/crm.db", query=query, cursor="u", key=["id"])
    state = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    read: list[list[Any]] = []
    for later in ("INSERT INTO t VALUES (4, 'd', 'd')", None):
        marks = Watermarks(state, "support")
        rows = [r for b in read_all(config, 2, marks.for_source(config)) for r in b.rows.to_pylist()]
        read.append(sorted((r["subject"], r["curation_at_watermark"]) for r in rows))
        marks.commit("run")
        if later:
            with engine.begin() as db:
                db.execute(sa.text(later))
    engine.dispose()
    assert read == [[("a", 1), ("b", 1), ("c", 1)], [("d", 1)]]


@pytest.mark.parametrize("declared", ["DATETIME", "TIMESTAMP"])
@pytest.mark.parametrize("cursor", ["u", None])
def test_a_sqlite_moment_is_published_and_identified_alone_whatever_zones_share_its_batch(
    tmp_path: Path, declared: str, cursor: str | None
) -> None:
    # SQLite holds each value as the text it was written as. Arrow gave a batch's column its first value's zone:
    # '11:00:00+02:00' beside a naive value was published as '09:00:00' (another moment), '...Z' beside it in
    # +02:00, and a row's id changed with batch_rows and with which rows were new (published twice).
    rows = [
        (1, "a", "x", "2026-01-01 10:00:00"),
        (2, "b", "y", "2026-01-01 11:00:00+02:00"),
        (3, "c", "z", "2026-01-01T12:00:00.5Z"),
        (4, "d", "w", "2026-01-01 13:00:00"),
    ]
    config = SqlSource(type="sql", url=small_table(tmp_path / "crm.db", rows, declared), table="t", cursor=cursor)

    def read(batch_rows: int) -> dict[str, tuple[str, str]]:
        # A value as a template or a field writes it (Python's str, as the stages do).
        return {r["subject"]: (r["id"], str(r["u"])) for b in read_all(config, batch_rows) for r in b.rows.to_pylist()}

    alone = read(1)
    assert read(1000) == alone
    assert {subject: value for subject, (_, value) in alone.items()} == {
        "a": "2026-01-01 10:00:00",
        "b": "2026-01-01 11:00:00+02:00",
        "c": "2026-01-01 12:00:00.500000+00:00",
        "d": "2026-01-01 13:00:00",
    }


def test_a_sqlite_number_is_published_and_identified_alone_whatever_numbers_share_its_batch(workdir: Path) -> None:
    # SQLite holds each number as an integer or a real whatever a query's column (v has no type: each as written).
    # Arrow typed a batch's column double when it held both: 1200 was published as '1200.0' beside a 0.5 and
    # '1200' alone, 10**15 hashed as '1e+15': a row's text and id without a key changed with batch_rows,
    # or with a new row read beside it. A batch of one holds one kind, which keeps its text and ids as before.
    url = sqlite_db(
        workdir / "crm.db",
        "CREATE TABLE t (q TEXT, v)",
        "INSERT INTO t VALUES ('a', 1200), ('b', 0.5), ('c', 1000000000000000), ('d', 1200.0), ('e', 1e-12)",
    )
    spec = recipe(url, query="SELECT q, v, typeof(v) AS held FROM t")
    spec["record"] = {"kind": "instruction", "prompt": "{{ q }}", "completion": "{{ v }} {{ held }}"}
    published = []
    for batch_rows in (1, 100):
        spec["batch_rows"] = batch_rows
        published.append(sorted(outputs(Path(run(workdir, spec, full_refresh=True).version_uri)), key=str))
    assert published[1] == published[0]  # the same texts and ids
    assert {line["prompt"]: line["completion"] for line in published[0]} == {
        "a": "1200 integer",
        "b": "0.5 real",
        "c": "1000000000000000 integer",
        "d": "1200.0 real",
        "e": "1e-12 real",
    }


def test_sqlite_moments_of_one_zone_keep_the_ids_they_were_published_under(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A column of moments all naive, or all of one offset, is read as before: its rows' ids are persisted (the ids
    # below are those the release before this one gave).
    monkeypatch.chdir(tmp_path)  # the source's URI, part of each id, is the same in every run
    tables = {
        ("2026-01-01 10:00:00", "2026-01-01 11:00:00.5"): [
            "e0f6b1957cd1694914cfb9ff221168d8",
            "002d9d922c44f9e511a68ec611f0ab18",
        ],
        ("2026-01-01 10:00:00+02:00", "2026-01-01T11:00:00.5+02:00"): [
            "80bcd8230cf0e284721cc14b4f4c0908",
            "12a3c2bc4ebab0737dbbc2966363acdc",
        ],
    }
    for (first, second), ids in tables.items():
        Path("crm.db").unlink(missing_ok=True)
        url = small_table(Path("crm.db"), [(1, "a", "x", first), (2, "b", "y", second)], "DATETIME")
        for cursor in ("u", None):
            for batch_rows in (1, 1000):
                config = SqlSource(type="sql", url=url, table="t", cursor=cursor)
                assert [r["id"] for b in read_all(config, batch_rows) for r in b.rows.to_pylist()] == ids


def test_a_sqlite_table_gaining_a_moment_of_another_zone_keeps_its_records(workdir: Path) -> None:
    # The first run read naive values only; the second read them beside a value with an offset, in one batch:
    # that one was published as the naive '09:00:00' and, had it come first, the naive rows as other moments.
    url = sqlite_db(
        workdir / "crm.db", "CREATE TABLE t (q TEXT, u DATETIME)", "INSERT INTO t VALUES ('a', '2026-01-01 10:00:00')"
    )
    spec = recipe(url, table="t")
    spec["record"] = {"kind": "instruction", "prompt": "{{ q }}", "completion": "{{ u }}"}
    first = run(workdir, spec)
    sqlite_db(workdir / "crm.db", "INSERT INTO t VALUES ('b', '2026-01-01 11:00:00+02:00')")
    again = run(workdir, spec)
    assert sorted((line["prompt"], line["completion"]) for line in outputs(Path(again.version_uri))) == [
        ("a", "2026-01-01 10:00:00"),
        ("b", "2026-01-01 11:00:00+02:00"),
    ]
    assert outputs(Path(first.version_uri))[0] in outputs(Path(again.version_uri))  # same record, same id
    # A batch of mixed zones beside one of a single zone, in one run: the same records.
    sqlite_db(workdir / "crm.db", "INSERT INTO t VALUES ('c', '2026-01-01 12:00:00')")
    whole = outputs(Path(run(workdir, spec, full_refresh=True).version_uri))
    spec["batch_rows"] = 2
    assert sorted(outputs(Path(run(workdir, spec, full_refresh=True).version_uri)), key=str) == sorted(whole, key=str)


def test_a_source_url_whose_driver_is_not_installed_is_refused_at_load_before_any_connect() -> None:
    # A run read the recipe, then failed to connect with "ModuleNotFoundError: No module named 'MySQLdb'",
    # saying neither which source nor what to install.
    from schemas.config import RecipeError, parse_recipe

    for url, said in (
        ("mysql://x@y/z", "mysql needs the driver 'MySQLdb', which is not installed"),
        ("mssql+pyodbc://x@y/z", "mssql+pyodbc needs the driver 'pyodbc', which is not installed"),
        ("nosuchdb://x/y", "SQLAlchemy has no dialect 'nosuchdb'"),
    ):
        recipe = (
            f"dataset: support\nsources:\n  - type: sql\n    url: {url}\n    table: t\nrecord: {{kind: document}}\n"
        )
        with pytest.raises(RecipeError) as raised:
            parse_recipe(recipe, origin="recipe.yaml")
        (problem,) = str(raised.value).splitlines()[1:]
        assert problem.startswith(f"  sources.0.url (line 4): {said}"), problem
        assert "the toolkit installs the drivers for SQLite and PostgreSQL (psycopg)" in problem
        assert url != "mysql://x@y/z" or "(pip install mysqlclient)" in problem  # the package, not the module


@pytest.mark.parametrize(
    ("modules", "cause"),
    [
        # mysqlclient installed without libmysqlclient: the import fails in its extension module 'MySQLdb._mysql',
        # and the recipe error said that module "is not installed" (pip install MySQLdb._mysql), not the cause.
        (
            {
                "__init__.py": "from MySQLdb import _mysql\n",
                # As CPython raises it when the extension's shared library cannot be loaded.
                "_mysql.py": "raise ImportError('libmysqlclient.so.21: cannot open shared object file: No such file "
                "or directory', name=__name__)\n",
            },
            "libmysqlclient.so.21: cannot open shared object file: No such file or directory",
        ),
        # A driver package whose C extension was built for another Python is not found, imported as psycopg2
        # imports its '_psycopg': the recipe error said that module "is not installed" (the one providing
        # MySQLdb._mysql), not the package that is installed but broken.
        ({"__init__.py": "from MySQLdb._mysql import connect\n"}, "No module named 'MySQLdb._mysql'"),
    ],
)
def test_a_source_driver_installed_whose_extension_cannot_load_is_said_with_its_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, modules: dict[str, str], cause: str
) -> None:
    from schemas.config import RecipeError, parse_recipe

    package = tmp_path / "MySQLdb"
    package.mkdir()
    for name, code in modules.items():
        (package / name).write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = (
        "dataset: support\nsources:\n  - type: sql\n    url: mysql://x@y/z\n    table: t\nrecord: {kind: document}\n"
    )
    with pytest.raises(RecipeError) as raised:
        parse_recipe(recipe, origin="recipe.yaml")
    (problem,) = str(raised.value).splitlines()[1:]
    assert problem == (
        f"  sources.0.url (line 4): mysql needs the driver 'MySQLdb', which is installed but cannot be imported: {cause}"
    ), problem


def test_a_source_driver_missing_under_a_namespace_other_packages_provide_is_said_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A driver module under a namespace package (as google.cloud's are): the namespace is found, installed by
    # other packages, so the recipe error said the driver "is installed but cannot be imported".
    from sqlalchemy.dialects import registry

    from schemas.config import RecipeError, parse_recipe

    (tmp_path / "shared_ns" / "other").mkdir(parents=True)  # a namespace package: no __init__.py
    (tmp_path / "shared_ns" / "other" / "__init__.py").write_text("")
    (tmp_path / "ns_dialect.py").write_text(
        "from sqlalchemy.dialects.sqlite.base import SQLiteDialect\n"
        "class NsDialect(SQLiteDialect):\n"
        "    name = 'nsdb'\n"
        "    supports_statement_cache = True\n"
        "    @classmethod\n"
        "    def import_dbapi(cls):\n"
        "        import shared_ns.nsdriver\n"
        "        return shared_ns.nsdriver\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.register("nsdb", "ns_dialect", "NsDialect")
    recipe = "dataset: support\nsources:\n  - type: sql\n    url: nsdb://x/y\n    table: t\nrecord: {kind: document}\n"
    try:
        with pytest.raises(RecipeError) as raised:
            parse_recipe(recipe, origin="recipe.yaml")
    finally:
        registry.impls.pop("nsdb", None)
    (problem,) = str(raised.value).splitlines()[1:]
    assert problem.startswith(
        "  sources.0.url (line 4): nsdb needs the driver 'shared_ns.nsdriver', which is not installed: "
    ), problem


def test_a_dialect_written_for_sqlalchemy_1_is_read_as_create_engine_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A third-party dialect of SQLAlchemy 1.x names its driver by a `dbapi()` classmethod, which create_engine
    # still calls; asked for its `import_dbapi()`, it raised NotImplementedError: a traceback loading the recipe.
    import warnings

    from sqlalchemy.dialects import registry

    from schemas.config import parse_recipe

    (tmp_path / "legacy_dialect.py").write_text(
        "from sqlalchemy.dialects.sqlite.base import SQLiteDialect\n"
        "class LegacyDialect(SQLiteDialect):\n"  # SQLite's, without its driver's module: as a 1.x one was written
        "    name = 'legacydb'\n"
        "    supports_statement_cache = True\n"
        "    @classmethod\n"
        "    def dbapi(cls):\n"
        "        import sqlite3\n"
        "        return sqlite3\n"
    )
    db = tmp_path / "t.db"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE t (id INTEGER, body TEXT)")
        connection.execute("INSERT INTO t VALUES (1, 'hello')")
    url = f"legacydb:///{db}"
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.register("legacydb", "legacy_dialect", "LegacyDialect")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SQLAlchemy's own, that dbapi() is deprecated
            with sa.create_engine(url).connect() as connection:
                assert connection.execute(sa.text("SELECT body FROM t")).scalar() == "hello"
            recipe = (
                f"dataset: support\nsources:\n  - type: sql\n    url: {url}\n    table: t\nrecord: {{kind: document}}\n"
            )
            (source,) = parse_recipe(recipe, origin="recipe.yaml").sources
        assert source.url == url
    finally:
        registry.impls.pop("legacydb", None)


def test_new_rows_of_a_table_that_lost_a_column_the_recipe_names_fail_the_run_and_are_read_again(
    workdir: Path,
) -> None:
    # A column gone from a SQL result is the table's (or query's) schema, shared by every later row: quarantined,
    # each run would take them all (read again only by --full-refresh). The run fails, as a misspelt name does.
    url = f"sqlite:///{workdir}/crm.db"
    fill(url, 1, 3)
    spec = recipe(url, table="tickets", cursor="id")
    assert run(workdir, spec).manifest.counts.written == 3
    with sa.create_engine(url).begin() as db:
        db.execute(sa.text("ALTER TABLE tickets RENAME COLUMN reply TO answer"))
    fill_renamed = "INSERT INTO tickets (id, subject, answer, amount, updated_at) VALUES (4, 's', 'a', 1, '2026-01-02')"
    with sa.create_engine(url).begin() as db:
        db.execute(sa.text(fill_renamed))
    for _ in range(2):  # nothing taken: the next run reads the row again
        with pytest.raises(RecipeError, match=r"none of the 1 records .* 1 lack a column the recipe names"):
            run(workdir, spec)
    fixed = {**spec, "record": {**spec["record"], "completion": "{{ answer }}"}}
    counts = run(workdir, fixed).manifest.counts
    assert (counts.input, counts.written) == (1, 1)


@pytest.mark.parametrize("files_first", [True, False])
def test_a_table_that_lost_a_column_fails_the_run_whatever_source_is_listed_before_it(
    workdir: Path, files_first: bool
) -> None:
    # With a files source listed first, its bad export's row was the one example asked, so the run quarantined the
    # table's rows too and moved its cursor past them.
    url = f"sqlite:///{workdir}/crm.db"
    fill(url, 1, 3)
    write_jsonl(workdir / "qa" / "a.jsonl", [{"subject": f"S{n}", "reply": "R"} for n in range(3)])
    spec = recipe(url, table="tickets", cursor="id")
    sources = [{"path": "qa"}, spec["sources"][0]]
    spec["sources"] = sources if files_first else sources[::-1]
    assert run(workdir, spec).manifest.counts.written == 6
    with sa.create_engine(url).begin() as db:
        db.execute(sa.text("ALTER TABLE tickets RENAME COLUMN reply TO answer"))
        db.execute(
            sa.text(
                "INSERT INTO tickets (id, subject, answer, amount, updated_at) VALUES (4, 's', 'a', 1, '2026-01-02')"
            )
        )
    write_jsonl(workdir / "qa" / "b.jsonl", [{"subject": "S", "answer": "R"}])
    with pytest.raises(RecipeError, match=r"none of the 2 records .* 2 lack a column the recipe names"):
        run(workdir, spec)
    fixed = run(workdir, {**spec, "record": {**spec["record"], "completion": "{{ answer }}"}})
    assert (fixed.manifest.counts.input, fixed.manifest.counts.written) == (2, 2)  # the table's row read again
