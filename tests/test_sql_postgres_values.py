"""PostgreSQL values Python's types do not hold as PostgreSQL does: infinite dates and times, unscaled
numerics (against the real server tests/pg.py starts)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from connectors.sql import SqlSourceError, SqlSourceReader
from connectors.state import Watermarks
from schemas.config import SqlSource
from tests.helpers import lineage_rows, processed, run, set_aside, strict_json


def postgres_table(url: str, name: str, columns: str, *inserts: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as db:
        db.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
        db.exec_driver_sql(f"CREATE TABLE {name} ({columns})")
        for insert in inserts:
            db.exec_driver_sql(f"INSERT INTO {name} VALUES {insert}")
    engine.dispose()


def read_twice(config: SqlSource, folder: Path) -> list[tuple[list[str], list[dict]]]:
    """The subjects read and the rows set aside by a first run and by a second (nothing new in between)."""
    state = sa.create_engine(f"sqlite:///{folder}/state.db")
    reads = []
    for _ in range(2):
        marks = Watermarks(state, "support")
        batches = list(SqlSourceReader(config, 2, marks.for_source(config)).batches())
        marks.commit("run")
        reads.append(
            (
                [r["subject"] for b in batches for r in b.rows.to_pylist()],
                [r for b in batches for r in b.set_aside.to_pylist()],
            )
        )
    state.dispose()
    return reads


def test_a_date_or_time_python_cannot_hold_quarantines_its_row_naming_the_column(
    workdir: Path, postgres_url: str
) -> None:
    # psycopg raised converting 'infinity' ("timestamp too large"): the run failed naming neither row nor column.
    postgres_table(
        postgres_url,
        "spans",
        "id int, subject text, reply text, ends timestamp, starts timestamptz, days date[], at time",
        "(1, 'a', 'x', '2026-01-01', '2026-01-01', '{2026-01-01}', '10:00')",
        "(2, 'b', 'y', 'infinity', '2026-01-01', NULL, '10:00')",
        "(3, 'c', 'z', '2026-01-01', '-infinity', '{2026-01-01,infinity}', '10:00')",
        "(4, 'd', 'w', '2026-01-01', '2026-01-01', NULL, '24:00')",
        "(5, 'e', 'v', '2026-01-01', '2026-01-01', '{10000-01-01}', '10:00')",
    )
    spec = {
        "dataset": "support",
        "sources": [{"type": "sql", "url": postgres_url, "query": "SELECT * FROM spans ORDER BY id"}],
        "record": {"kind": "instruction", "prompt": "{{ subject }}", "completion": "{{ reply }}"},
        "output": {"validation_fraction": 0.0},
        "batch_rows": 2,
    }
    result = run(workdir, spec)
    assert [line["prompt"] for line in processed(Path(result.version_uri))] == ["a"]
    assert result.manifest.counts.reasons["quarantined"]["schema"] == 4
    aside = sorted(set_aside(Path(result.version_uri)), key=lambda r: r["source"]["line"])
    where = f"{SqlSourceReader(SqlSource(**spec['sources'][0]), 2).uri}"
    assert [r["detail"].split(" a date or time")[0] for r in aside] == [
        f"{where}:2: column 'ends' holds",
        f"{where}:3: columns 'starts', 'days' hold",
        f"{where}:4: column 'at' holds",
        f"{where}:5: column 'days' holds",
    ]
    assert [json.loads(r["record"])["ends"] for r in aside] == ["infinity", *["2026-01-01 00:00:00"] * 3]
    assert json.loads(aside[1]["record"])["days"] == ["2026-01-01", "infinity"]
    assert run(workdir, spec).version_uri is None  # unchanged: its rows' contents, those set aside too, are known


def test_an_infinite_moment_keeps_the_ids_of_the_rows_read_beside_it(postgres_url: str) -> None:
    # Its row is set aside; the others keep the ids (and types) they have in a batch without it.
    postgres_table(
        postgres_url,
        "stamps",
        "id int, subject text, at timestamptz",
        "(1, 'a', '2026-01-01 10:00+00'), (2, 'b', 'infinity'), (3, 'c', '2026-01-02 10:00+00')",
    )
    config = SqlSource(type="sql", url=postgres_url, query="SELECT subject, at FROM stamps ORDER BY id")
    reads = []
    for _ in range(2):
        reads.append([r for b in SqlSourceReader(config, 10).batches() for r in b.rows.to_pylist()])
        postgres_table(
            postgres_url,
            "stamps",
            "id int, subject text, at timestamptz",
            "(1, 'a', '2026-01-01 10:00+00'), (3, 'c', '2026-01-02 10:00+00')",
        )
    assert [r["subject"] for r in reads[0]] == ["a", "c"]
    assert [(r["id"], r["at"]) for r in reads[0]] == [(r["id"], r["at"]) for r in reads[1]]


def test_an_infinite_cursor_value_is_no_value_set_aside_once(postgres_url: str, tmp_path: Path) -> None:
    # 'infinity' sorts after every moment: read again each run, it is quarantined once, as a NULL is.
    postgres_table(
        postgres_url,
        "events",
        "id int, subject text, u timestamptz",
        "(1, 'a', '2026-01-01 10:00+00'), (2, 'b', 'infinity'), (3, 'c', '-infinity'), (4, 'd', '2026-01-02 10:00+00')",
    )
    config = SqlSource(type="sql", url=postgres_url, table="events", cursor="u", key=["id"])
    first, second = read_twice(config, tmp_path)
    assert first[0] == ["a", "d"] and second == ([], [])
    assert sorted(json.loads(r["record"])["subject"] for r in first[1]) == ["b", "c"]
    assert {r["reason"] for r in first[1]} == {"no_cursor_value"}


@pytest.mark.parametrize("kind", ["double precision", "numeric"])
def test_an_infinite_number_in_the_cursor_is_no_value_and_rows_after_it_are_read(
    postgres_url: str, tmp_path: Path, kind: str
) -> None:
    # Published, it made the watermark infinity: no later row was ever read again, and nothing said so.
    postgres_table(postgres_url, "scores", f"id int, subject text, v {kind}", "(1, 'a', 1), (2, 'b', 'Infinity')")
    config = SqlSource(type="sql", url=postgres_url, table="scores", cursor="v")
    first, second = read_twice(config, tmp_path)
    assert first[0] == ["a"] and [json.loads(r["record"])["subject"] for r in first[1]] == ["b"]
    assert {r["reason"] for r in first[1]} == {"no_cursor_value"} and second == ([], [])
    postgres_table(
        postgres_url, "scores", f"id int, subject text, v {kind}", "(1, 'a', 1), (2, 'b', 'Infinity')", "(3, 'c', 2)"
    )
    assert read_twice(config, tmp_path)[0][0] == ["c"]


def test_a_row_written_later_at_a_real_cursors_watermark_is_read(postgres_url: str, tmp_path: Path) -> None:
    # A float4 compared with the watermark's double is widened first: 0.7 stored is 0.69999998..., below the
    # bound 0.7, and the row of a tie written after the run was never read.
    postgres_table(postgres_url, "ratings", "id int, subject text, v real", "(1, 'a', 0.5), (2, 'b', 0.7)")
    config = SqlSource(type="sql", url=postgres_url, table="ratings", cursor="v")
    assert read_twice(config, tmp_path) == [(["a", "b"], []), ([], [])]
    with sa.create_engine(postgres_url).begin() as db:
        db.exec_driver_sql("INSERT INTO ratings VALUES (3, 'c', 0.7)")
    assert read_twice(config, tmp_path) == [(["c"], []), ([], [])]


def test_a_key_holding_an_infinite_moment_is_asked_for_in_rows_an_earlier_run_read(
    postgres_url: str, tmp_path: Path
) -> None:
    # The key asked of the database binds the value as PostgreSQL wrote it ('infinity'), not a Python moment.
    postgres_table(
        postgres_url,
        "versions",
        "valid_to timestamp, subject text, u int",
        "('infinity', 'a', 1), ('2026-01-01', 'b', 2)",
    )
    config = SqlSource(type="sql", url=postgres_url, table="versions", cursor="u", key=["valid_to"])
    state = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    marks = Watermarks(state, "support")
    list(SqlSourceReader(config, 10, marks.for_source(config)).batches())
    marks.commit("run")
    engine = sa.create_engine(postgres_url)
    with engine.begin() as db:
        db.exec_driver_sql("INSERT INTO versions VALUES ('infinity', 'c', 3)")
    engine.dispose()
    with pytest.raises(SqlSourceError, match=r"row 2 of the result has the same key \(valid_to\) as a row an earlier"):
        list(SqlSourceReader(config, 10, Watermarks(state, "support").for_source(config)).batches())
    state.dispose()


def test_an_unscaled_numeric_is_published_as_written_whatever_rows_share_its_batch(
    workdir: Path, postgres_url: str
) -> None:
    # Arrow gives a batch's decimals one scale: 1.5 was published '1.50' beside 1.25 and '1.5' alone, and a
    # numeric[] value's ids and text moved the same way ([1.5, 2] was ["1.50", "2.00"] beside [1.25]).
    postgres_table(
        postgres_url,
        "amounts",
        "id int, subject text, amount numeric, codes numeric[], fixed numeric(6, 2)",
        "(1, 'a', 1.25, '{1.25}', 1.25), (2, 'b', 1.5, '{1.5,2}', 1.5), (3, 'c', 2, '{3}', 2), (4, 'd', NULL, NULL, 3)",
    )
    spec = {
        "dataset": "support",
        "sources": [{"type": "sql", "url": postgres_url, "query": "SELECT * FROM amounts ORDER BY id"}],
        "record": {
            "kind": "instruction",
            "prompt": "{{ subject }} {{ amount }} {{ codes }} {{ fixed }}",
            "completion": "fixed",
        },
        "output": {"validation_fraction": 0.0},
    }
    published = []
    for batch_rows in (1, 4):
        version = Path(run(workdir, {**spec, "batch_rows": batch_rows}, full_refresh=True).version_uri)
        ids = [entry["id"] for entry in lineage_rows(version)]
        records = [(line["prompt"], line["completion"]) for line in processed(version)]
        published.append(sorted(zip(ids, records, strict=True)))
    assert published[0] == published[1]
    assert sorted(record for _, record in published[1]) == [
        ('a 1.25 ["1.25"] 1.25', "1.25"),
        ('b 1.5 ["1.5", "2"] 1.50', "1.50"),
        ('c 2 ["3"] 2.00', "2.00"),
    ]


def test_a_small_decimal_is_published_in_a_template_as_a_field_gives_it(workdir: Path, postgres_url: str) -> None:
    # A template wrote a decimal as Python's str() does: a fee of 0.00000010 (numeric(20, 8)) was '1.0E-7', while
    # a field naming the column (Arrow's text) and PostgreSQL write '0.00000010'.
    postgres_table(
        postgres_url,
        "fees",
        "id int, subject text, fee numeric(20, 8), rate numeric",
        "(1, 'a', 0.00000010, 0.0000001), (2, 'b', 12.5, 0.000000000000000000000000000001)",
    )
    spec = {
        "dataset": "fees",
        "sources": [{"type": "sql", "url": postgres_url, "table": "fees"}],
        "record": {"kind": "instruction", "prompt": "{{ subject }} {{ fee }} {{ rate }}", "completion": "fee"},
        "output": {"validation_fraction": 0.0},
    }
    published = sorted((line["prompt"], line["completion"]) for line in processed(Path(run(workdir, spec).version_uri)))
    assert published == [
        ("a 0.00000010 0.0000001", "0.00000010"),
        ("b 12.50000000 0.000000000000000000000000000001", "12.50000000"),
    ]


def test_an_error_from_a_rows_value_is_said_without_the_value_whatever_its_class(
    postgres_url: str, tmp_path: Path
) -> None:
    # Outside class 22, PostgreSQL's message quoted the row's text ('cross-database references are not
    # implemented: "jane.roe@example.com"'), or named it unquoted (regproc), in the run's error and its log.
    postgres_table(
        postgres_url,
        "names",
        "id int, subject text, u int",
        "(0, 'TimeZone', 0), (1, 'TimeZone', 1), (2, 'jane.roe@example.com', 2)",
    )
    for cast, fine, kind in [
        ("{}::regclass", "pg_class", "FeatureNotSupported (SQLSTATE 0A000)"),
        ("{}::regproc", "now", "FeatureNotSupported (SQLSTATE 0A000)"),
        ("{}::regtype", "int4", "SyntaxError (SQLSTATE 42601)"),
        ("current_setting({})", "TimeZone", "UndefinedObject (SQLSTATE 42704)"),
    ]:
        value = f"CASE WHEN id = 2 THEN subject ELSE '{fine}' END"
        query = f"SELECT id, {cast.format(value)} AS subject FROM names ORDER BY id"
        config = SqlSource(type="sql", url=postgres_url, query=query)
        with pytest.raises(SqlSourceError) as error:
            list(SqlSourceReader(config, 1).batches())
        assert (
            f": {kind} reading the rows (the query alone, without rows, raises none): its message is left out"
            in str(error.value)
        )
        assert "jane" not in str(error.value) and "@example" not in str(error.value)
    # An error of the query alone is said as PostgreSQL says it: it names the query's parts, not a row's.
    config = SqlSource(type="sql", url=postgres_url, query="SELECT id, subject::regclass AS s FROM nowhere")
    with pytest.raises(SqlSourceError, match='cannot read: UndefinedTable: relation "nowhere" does not exist'):
        list(SqlSourceReader(config, 1).batches())
    # Rows before the watermark are asked for the keys read, through the query: a value there is left out too.
    query = "SELECT id, current_setting(subject) AS subject, u FROM names"
    config = SqlSource(type="sql", url=postgres_url, query=query, cursor="u", key=["id", "subject"])
    state = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    engine = sa.create_engine(postgres_url)
    with engine.begin() as db:
        db.exec_driver_sql("DELETE FROM names WHERE id = 2")
    marks = Watermarks(state, "support")
    list(SqlSourceReader(config, 10, marks.for_source(config)).batches())
    marks.commit("run")
    with engine.begin() as db:
        db.exec_driver_sql("UPDATE names SET subject = 'jane.roe@example.com' WHERE id = 0")
        db.exec_driver_sql("INSERT INTO names VALUES (0, 'TimeZone', 3)")
    engine.dispose()
    with pytest.raises(SqlSourceError) as error:
        list(SqlSourceReader(config, 10, Watermarks(state, "support").for_source(config)).batches())
    said = "cannot ask whether rows before the watermark hold the keys read: UndefinedObject (SQLSTATE 42704)"
    assert said in str(error.value) and "jane" not in str(error.value)
    state.dispose()


@pytest.mark.filterwarnings("error::sqlalchemy.exc.SAWarning")  # a column type SQLAlchemy does not know: no warning
@pytest.mark.parametrize("kind", ["point", "json"])
def test_a_key_postgresql_has_no_equals_for_is_compared_by_its_text(
    postgres_url: str, tmp_path: Path, kind: str
) -> None:
    # The keys read were asked of the database with `=`: "operator does not exist: point = unknown" failed every
    # run after the first.
    first, other, later = ("(1,2)", "(3,4)", "(5,6)") if kind == "point" else ('"x"', '"y"', '"z"')
    state = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    engine = sa.create_engine(postgres_url)
    for source in ({"table": "shapes"}, {"query": "SELECT p, subject, u FROM shapes"}):
        postgres_table(
            postgres_url, "shapes", f"p {kind}, subject text, u int", f"('{first}', 'a', 1), ('{other}', 'b', 2)"
        )
        config = SqlSource(type="sql", url=postgres_url, cursor="u", key=["p"], **source)
        reads = []
        for added in (f"('{later}', 'c', 3)", f"('{first}', 'd', 4)"):
            marks = Watermarks(state, source.get("table", "q"))
            batches = SqlSourceReader(config, 10, marks.for_source(config)).batches()
            reads.append([r["subject"] for b in batches for r in b.rows.to_pylist()])
            marks.commit("run")
            with engine.begin() as db:
                db.exec_driver_sql(f"INSERT INTO shapes VALUES {added}")
        assert reads == [["a", "b"], ["c"]]
        with pytest.raises(SqlSourceError, match=r"row 2 of the result has the same key \(p\) as a row an earlier run"):
            list(SqlSourceReader(config, 10, Watermarks(state, source.get("table", "q")).for_source(config)).batches())
    engine.dispose()
    state.dispose()


def test_a_read_failing_part_way_closes_its_connection_at_once(workdir: Path, postgres_url: str) -> None:
    """A run that fails on a batch keeps its error (and so the reader's frames) until it is reported:
    the connection the reader's result held stayed open until Python collected it."""
    table = "read_fails_part_way"
    postgres_table(postgres_url, table, "id int, subject text", "(1, 'a')", "(2, 'b')", "(1, 'c')")
    config = SqlSource(type="sql", url=postgres_url, table=table, key=["id"])
    monitor = sa.create_engine(postgres_url)

    def readers() -> int:
        # The backends whose last query read the table: other tests' connections to the server come and go.
        with monitor.connect() as db:
            query = (
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                f"AND pid <> pg_backend_pid() AND strpos(query, '{table}') > 0"
            )
            return db.exec_driver_sql(query).scalar_one()

    with pytest.raises(SqlSourceError, match="key") as failed:
        list(SqlSourceReader(config, 2).batches())
    assert failed.value.__traceback__ is not None  # the error, and the frames it holds, are still alive
    # (A backend closed by its client leaves pg_stat_activity a moment later.)
    deadline = time.monotonic() + 5
    while readers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert readers() == 0
    monitor.dispose()


def test_a_time_with_its_offset_is_published_with_it_and_an_edit_of_the_offset_alone_is_read(
    workdir: Path, postgres_url: str
) -> None:
    # Arrow's time type holds no offset: '03:04:05+02' was published '03:04:05', and a row whose offset alone
    # changed kept its content, so a scheduled run did not see the edit.
    postgres_table(
        postgres_url,
        "shifts",
        "id int, subject text, at timetz, ats timetz[]",
        "(1, 'a', '03:04:05+02', '{03:04:05+02,10:00:00.5-01:30}'), (2, 'b', NULL, NULL)",
    )
    config = SqlSource(type="sql", url=postgres_url, table="shifts", key=["id"])
    rows = [r for b in SqlSourceReader(config, 10).batches() for r in b.rows.to_pylist()]
    assert [(r["at"], r["ats"]) for r in rows] == [
        ("03:04:05+02:00", ["03:04:05+02:00", "10:00:00.500000-01:30"]),
        (None, None),
    ]
    spec = {
        "dataset": "support",
        "sources": [{"type": "sql", "url": postgres_url, "table": "shifts", "key": ["id"]}],
        "record": {"kind": "instruction", "prompt": "{{ subject }} at {{ at }}", "completion": "subject"},
        "output": {"validation_fraction": 0.0},
    }
    first = run(workdir, spec)
    assert [line["prompt"] for line in processed(Path(first.version_uri))] == ["a at 03:04:05+02:00"]
    engine = sa.create_engine(postgres_url)
    with engine.begin() as db:
        db.exec_driver_sql("UPDATE shifts SET at = '03:04:05+03' WHERE id = 1")
    engine.dispose()
    second = run(workdir, spec)
    assert second.version_uri != first.version_uri
    assert [line["prompt"] for line in processed(Path(second.version_uri))] == ["a at 03:04:05+03:00"]


def test_a_moment_with_a_time_zone_reads_the_same_whatever_the_sessions_time_zone(
    workdir: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # psycopg gives a timestamptz in the session's time zone (the server's TimeZone, or the client's PGTZ): the
    # same rows read by a job on another machine were published as other text under other ids, and the rows a
    # cursor took at its watermark were not known as taken (their hashes held the offset).
    postgres_table(
        postgres_url,
        "moments",
        "id int, subject text, at timestamptz, ats timestamptz[]",
        "(1, 'a', '2026-01-01 10:00:00.5+00', '{2026-01-01 10:00+00,2026-07-01 23:30+00}'), (2, 'b', NULL, NULL)",
    )
    record = {"kind": "instruction", "prompt": "{{ subject }} {{ at }} {{ ats }}", "completion": "at"}
    sources = [{"type": "sql", "url": postgres_url, "table": "moments", **key} for key in ({}, {"key": ["at"]})]
    specs = [
        {"dataset": "support", "sources": [source], "record": record, "output": {"validation_fraction": 0.0}}
        for source in sources
    ]
    published: dict[str, list] = {}
    for zone in ("UTC", "Europe/Paris", "Etc/UTC", "America/St_Johns"):
        monkeypatch.setenv("PGTZ", zone)
        published[zone] = []
        for spec in specs:
            version = Path(run(workdir, spec, full_refresh=True).version_uri)
            ids = [entry["id"] for entry in lineage_rows(version)]
            lines = [(line["prompt"], line["completion"]) for line in processed(version)]
            published[zone].append(sorted(zip(ids, lines, strict=True)))
    assert published["Europe/Paris"] == published["Etc/UTC"] == published["America/St_Johns"] == published["UTC"]
    assert [line for _, line in published["UTC"][0]] == [
        (
            'a 2026-01-01 10:00:00.500000+00:00 ["2026-01-01 10:00:00+00:00", "2026-07-01 23:30:00+00:00"]',
            "2026-01-01 10:00:00.500000+00:00",
        )
    ]
    # A cursor's watermark, kept by a run in one time zone, knows the rows it took in another.
    config = SqlSource(type="sql", url=postgres_url, table="moments", cursor="at")
    state = sa.create_engine(f"sqlite:///{workdir}/cursor.db")
    reads = []
    for zone in ("UTC", "Asia/Tokyo"):
        monkeypatch.setenv("PGTZ", zone)
        marks = Watermarks(state, "support")
        batches = SqlSourceReader(config, 10, marks.for_source(config)).batches()
        reads.append([r["subject"] for b in batches for r in b.rows.to_pylist()])
        marks.commit("run")
    state.dispose()
    assert reads == [["a"], []]


def test_a_moment_with_a_time_zone_python_cannot_hold_in_some_zone_reads_the_same_in_every_zone(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Near year 10000 (or 1) a timestamptz's text in the session's zone is past Python's range where its UTC moment
    # is not, or the other way round: the set-aside text held the session's offset, a row was published in one
    # zone and set aside in another, and one Python held only in the session's zone failed the run (OverflowError
    # moving it to UTC).
    postgres_table(
        postgres_url,
        "edges",
        "id int, subject text, at timestamptz, ats timestamptz[]",
        "(1, 'a', '9999-12-31 23:30+00', NULL)",
        "(2, 'b', '10000-01-01 04:30+00', NULL)",
        "(3, 'c', '10000-06-01 10:00:00.25+00', '{2026-01-01 10:00+00,10000-06-01 10:00+00}')",
        "(4, 'd', '0001-01-01 00:30+00', NULL)",
        "(5, 'e', '0044-03-15 12:00+00 BC', NULL)",
    )
    config = SqlSource(type="sql", url=postgres_url, query="SELECT subject, at, ats FROM edges ORDER BY id")
    reads = {}
    for zone in ("UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"):
        monkeypatch.setenv("PGTZ", zone)
        batches = list(SqlSourceReader(config, 10).batches())
        rows = [(r["subject"], str(r["at"])) for b in batches for r in b.rows.to_pylist()]
        aside = [json.loads(r["record"]) for b in batches for r in b.set_aside.to_pylist()]
        reads[zone] = (rows, [(r["subject"], r["at"], r["ats"]) for r in aside])
    assert reads["Europe/Paris"] == reads["America/New_York"] == reads["Asia/Kolkata"] == reads["UTC"]
    assert reads["UTC"] == (
        [("a", "9999-12-31 23:30:00+00:00"), ("d", "0001-01-01 00:30:00+00:00")],
        [
            ("b", "10000-01-01 04:30:00+00", None),
            ("c", "10000-06-01 10:00:00.25+00", ["2026-01-01 10:00:00+00:00", "10000-06-01 10:00:00+00"]),
            ("e", "0044-03-15 12:00:00+00 BC", None),
        ],
    )


def test_a_postgresql_url_through_another_driver_than_psycopg_is_refused_naming_its_line(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # psycopg2 (or pg8000) read a timestamptz in the session's time zone: the connector sets only psycopg up to
    # read it in UTC, so such a URL published other text and ids from a machine in another zone.
    from schemas.config import RecipeError, parse_recipe

    for driver in ("psycopg2", "pg8000"):
        recipe = f"""dataset: support
sources:
  - type: sql
    url: postgresql+{driver}://curation:hunter2@db.internal/crm
    table: moments
record: {{kind: document, text: subject}}
"""
        with pytest.raises(RecipeError) as raised:
            parse_recipe(recipe, origin="recipe.yaml")
        assert str(raised.value).splitlines()[1:] == [
            "  sources.0.url (line 4): PostgreSQL is read through psycopg: write the URL as 'postgresql+psycopg://...' "
            f"(its driver is {driver!r}, which would read a timestamptz in the session's time zone)"
        ]
    # A URL naming no driver is read through psycopg (SQLAlchemy 2.1's default), in UTC.
    postgres_table(postgres_url, "moments", "id int, subject text, at timestamptz", "(1, 'a', '2026-01-01 10:00+00')")
    monkeypatch.setenv("PGTZ", "Europe/Paris")
    plain = SqlSource(type="sql", url=postgres_url.replace("+psycopg", ""), table="moments")
    (batch,) = SqlSourceReader(plain, 10).batches()
    assert str(batch.rows.to_pylist()[0]["at"]) == "2026-01-01 10:00:00+00:00"


def test_a_small_decimal_in_an_array_is_written_as_a_scalar_one_is(workdir: Path, postgres_url: str) -> None:
    # A numeric[] value's small decimals were written as Python's str() writes them ('1E-7', '1.0E-7'), and so
    # was a numeric column's beside an Infinity (text, not a decimal column), while a scalar numeric gave
    # '0.0000001' and '0.00000010', as PostgreSQL writes them.
    postgres_table(
        postgres_url,
        "rates",
        "id int, subject text, rate numeric, rates numeric[], fees numeric(20, 8)[], odd numeric",
        "(1, 'a', 0.0000001, '{0.0000001,1.5}', '{0.00000010,2}', 0.0000001), (2, 'b', 1, NULL, NULL, 'Infinity')",
    )
    spec = {
        "dataset": "rates",
        "sources": [{"type": "sql", "url": postgres_url, "table": "rates"}],
        "record": {
            "kind": "instruction",
            "prompt": "{{ rate }} {{ rates }} {{ fees }} {{ odd }}",
            "completion": "rates",
        },
        "output": {"validation_fraction": 0.0},
    }
    published = [(line["prompt"], line["completion"]) for line in processed(Path(run(workdir, spec).version_uri))]
    assert published == [
        ('0.0000001 ["0.0000001", "1.5"] ["0.00000010", "2.00000000"] 0.0000001', '["0.0000001", "1.5"]')
    ]


def test_a_float8_nan_or_infinity_is_null_in_a_set_aside_record_which_any_json_parser_reads(
    workdir: Path, postgres_url: str
) -> None:
    # Python's json wrote them as the bare words NaN and Infinity, which no other JSON parser reads, in the
    # record of a row set aside as read (an infinite moment) or by a later stage (a template's empty value).
    postgres_table(
        postgres_url,
        "scores",
        "id int, q text, a text, v float8, vs float8[], at timestamptz",
        "(1, 'one', 'ok', 'NaN', '{NaN,1.5}', '2024-01-02'), (2, 'two', NULL, 'Infinity', '{-Infinity}', NULL),"
        " (3, 'three', 'x', '-Infinity', NULL, 'infinity')",
    )
    spec = {
        "dataset": "scores",
        "sources": [{"type": "sql", "url": postgres_url, "table": "scores"}],
        "record": {"kind": "instruction", "prompt": "{{ q }} {{ v }}", "completion": "{{ a }}"},
        "output": {"validation_fraction": 0.0},
    }
    version = Path(run(workdir, spec).version_uri)
    assert [line["prompt"] for line in processed(version)] == ["one nan"]
    lines = [strict_json(line) for line in (version / "set_aside" / "part-00000.jsonl").read_text().splitlines()]
    records = {line["source"]["line"]: (line["reason"], strict_json(line["record"])) for line in lines}
    assert records == {
        2: ("template", {"input_id": 2, "q": "two", "a": None, "v": None, "vs": [None], "at": None}),
        3: ("schema", {"id": 3, "q": "three", "a": "x", "v": None, "vs": None, "at": "infinity"}),
    }
