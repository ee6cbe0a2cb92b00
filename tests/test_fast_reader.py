"""The vectorised reader gives what the per-line reader gave: ids, line numbers, rows, set-aside rows, progress.

The reference below is the reader as it was (a Python list of lines per block, ``bytes.strip`` for
blank lines, polars typing from every row, one ``xxhash`` call per record): ids and rows are persisted
and compared across runs, so the fast path must not change a bit of them.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import xxhash

import connectors.files as files
from connectors.base import SourceBatch
from connectors.files import FilesSourceReader, _rows_as_text, read_json_objects
from connectors.read_ahead import read_ahead
from schemas.config import FilesSource
from schemas.json_values import is_json, json_values
from schemas.records import INPUT_LINE_COLUMN, SOURCE_TYPE, InputIds, record_ids

TRICKY = [
    "",
    " ",
    "plain",
    "héllo wörld",
    "日本語のテキスト",
    "\U0001f600 emoji",
    "tab\there",
    "line\nbreak\r\n",
    'quote " and \\ backslash',
    "colon: here",
    "\u2028\u2029\ufeff",
    "x" * 5000,
]


def old_id(uri: str, position: object, content: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(uri.encode() + b"\x1f" + str(position).encode() + b"\x1f" + content)


def ids_in_order(uri: str, contents: list[bytes]) -> list[str]:
    """The ids of an input's records in its order: the formula with how often the content came before."""
    seen: Counter[bytes] = Counter()
    ids = []
    for content in contents:
        ids.append(old_id(uri, seen[content], content))
        seen[content] += 1
    return ids


def old_batches(reader: FilesSourceReader, uri: str, content: bytes, block: int) -> list[SourceBatch]:
    """The reader as it was, over ``content`` read ``block`` bytes at a time, but each block typed from all
    its lines, then handed on ``batch_rows`` lines at a time."""
    batches, pending, line_no, at = [], b"", 0, 0
    ids = InputIds(uri)  # the ids are checked apart (assert_ids_follow_the_lines)
    while True:
        chunk = content[at : at + block]
        at += block
        data = pending + chunk
        if chunk:
            cut = data.rfind(b"\n") + 1
            data, pending = data[:cut], data[cut:]
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        numbered = [(line_no + 1 + i, line) for i, line in enumerate(lines) if line.strip()]
        numbers, raws = [n for n, _ in numbered], [line for _, line in numbered]
        whole = old_parse(reader, ids, numbers, raws, 0) if lines else None
        for start in range(0, len(lines), reader.batch_rows):
            group = lines[start : start + reader.batch_rows]
            input_bytes = sum(map(len, group)) + len(group)
            first = line_no + start + 1
            rows, aside = (
                t.filter(pc.is_in(pc.struct_field(t["source"], "line"), pa.array(range(first, first + len(group)))))
                if t.num_rows
                else t
                for t in (whole.rows, whole.set_aside)
            )
            batches.append(SourceBatch(rows, aside, input_bytes))
        line_no += len(lines)
        if not chunk:
            return batches


def old_parse(
    reader: FilesSourceReader, ids: InputIds, numbers: list[int], raws: list[bytes], size: int
) -> SourceBatch:
    if not raws:
        return SourceBatch(rows=pa.table({}), input_bytes=size)
    try:
        table = pl.read_ndjson(b"\n".join(raws), infer_schema_length=None).to_arrow()
        if table.num_rows == len(raws):
            for index, kind in enumerate(table.schema.types):
                if pa.types.is_nested(kind):  # objects or arrays: each as its line wrote it
                    objects = [json.loads(raw) for raw in raws]
                    name = table.column_names[index]
                    table = table.set_column(index, name, json_values([obj.get(name) for obj in objects]))
            names = [f"input_{name}" if name in ("id", "source") else name for name in table.column_names]
            table = table.rename_columns(names)
            table = table.add_column(0, "id", ids(raws)).add_column(1, "source", old_sources(ids.uri, numbers))
            if any(column.null_count for column in table.columns):  # each row's line: see INPUT_LINE_COLUMN
                table = table.append_column(INPUT_LINE_COLUMN, pa.array(raws, pa.large_binary()))
            return SourceBatch(table, input_bytes=size)
    except Exception:
        pass
    return reader._parse_lines_one_by_one(ids, numbers, raws, size)  # unchanged


def old_sources(uri: str, lines: list[int]) -> pa.StructArray:
    return pa.array([{"connector": "files", "uri": uri, "line": n, "page": None} for n in lines], SOURCE_TYPE)


def read_new(path: Path, batch_rows: int) -> list[SourceBatch]:
    return list(FilesSourceReader(FilesSource(path=str(path)), batch_rows).batches())


def uri_of(batches: list[SourceBatch]) -> str:
    tables = [table for batch in batches for table in (batch.rows, batch.set_aside) if table.num_rows]
    return tables[0]["source"][0]["uri"].as_py()


def assert_same_batches(new: list[SourceBatch], old: list[SourceBatch]) -> None:
    assert len(new) == len(old)
    for fresh, reference in zip(new, old, strict=True):
        assert fresh.rows.schema == reference.rows.schema
        assert fresh.rows.to_pylist() == reference.rows.to_pylist()
        assert fresh.set_aside.to_pylist() == reference.set_aside.to_pylist()
        assert fresh.input_bytes == reference.input_bytes


def assert_ids_follow_the_lines(batches: list[SourceBatch], uri: str, content: bytes) -> None:
    """Every row's id and source, read or set aside, is the formula over its line in the file, numbered by
    how often the line came before."""
    lines = content.split(b"\n")
    seen, ids = [], []
    for batch in batches:
        for table in (batch.rows, batch.set_aside):
            if table.num_rows == 0:
                continue
            for row_id, source in zip(table["id"].to_pylist(), table["source"].to_pylist(), strict=True):
                assert source == {"connector": "files", "uri": uri, "line": source["line"], "page": None}
                seen.append(source["line"])
                ids.append(row_id)
    assert sorted(seen) == [n for n, line in enumerate(lines, 1) if line.strip()]
    order = sorted(range(len(seen)), key=seen.__getitem__)
    assert [ids[i] for i in order] == ids_in_order(uri, [lines[seen[i] - 1] for i in order])


def tricky_jsonl() -> bytes:
    rows = [json.dumps({"text": t, "n": i}) for i, t in enumerate(TRICKY)]
    rows += [json.dumps({"text": t}, ensure_ascii=False) for t in TRICKY]  # raw UTF-8, not \u escapes
    rows += [
        "",  # blank lines are skipped but counted
        "   \t",
        "\x0b\x0c",
        '  {"text": "padded", "n": 1}  ',
        '{"text": "crlf", "n": 2}\r',
        '{"text": "no number"}',
        '{"text": null, "n": 3}',
        '{"text": null}',  # a null written, a key left out
        '{"text": "an escaped \\" quote"}',
        '{"text": "broken',  # malformed: set aside with its line
        "[1, 2]",  # not an object
        '"just a string"',
        '{"id": "theirs", "source": "kept as input_id and input_source", "text": "renamed"}',
        '{"text": "no number"}',  # a repeat: an id of its own
        "[1, 2]",
    ]
    invalid_utf8 = b'{"text": "bad \xff utf-8"}'
    return b"\n".join([row.encode() for row in rows] + [invalid_utf8, b'{"text": "last, no newline"}'])


@pytest.mark.parametrize("block", [64, 1000, 1 << 20])
@pytest.mark.parametrize("batch_rows", [1, 7, 50_000])
def test_jsonl_batches_equal_the_per_line_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int, batch_rows: int
) -> None:
    content = tricky_jsonl()
    path = tmp_path / "tricky.jsonl"
    path.write_bytes(content)
    monkeypatch.setattr(files, "BLOCK_BYTES", block)  # small blocks: lines longer than a block, many blocks
    ahead = []
    monkeypatch.setattr(files, "read_ahead", lambda items: ahead.append(1) or read_ahead(items))
    new = read_new(path, batch_rows)
    # A file of several blocks is parsed a batch or two ahead of its ids, on another thread: the same batches.
    assert bool(ahead) == (len(content) > block)
    reader = FilesSourceReader(FilesSource(path=str(path)), batch_rows)
    uri = uri_of(new)
    assert_same_batches(new, old_batches(reader, uri, content, block))
    assert_ids_follow_the_lines(new, uri, content)
    assert sum(batch.input_bytes for batch in new) == len(content) + 1  # the last line counts its missing newline
    quarantined = [row["source"]["line"] for batch in new for row in batch.set_aside.to_pylist()]
    assert [content.split(b"\n")[n - 1][:8] for n in quarantined] == [
        b'{"text":',
        b"[1, 2]",
        b'"just a ',
        b"[1, 2]",
        b'{"text":',
    ]


def test_a_large_clean_file_equals_the_per_line_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The usual case (every line an object, no blank line), with keys and types that show up late."""
    rng = random.Random(3)
    rows = [{"question": f"q{i}: {rng.choice(TRICKY)[:50]}", "answer": rng.choice(TRICKY)} for i in range(3000)]
    rows[150]["late"] = "a key the first rows do not have"
    rows[1700]["score"] = 1.5
    rows[2500]["nested"] = {"a": [1, 2]}
    rows[2900] = rows[10]  # a repeat
    content = "".join(json.dumps(row) + "\n" for row in rows).encode()
    path = tmp_path / "big.jsonl.gz"
    path.write_bytes(gzip.compress(content))
    monkeypatch.setattr(files, "BLOCK_BYTES", 64 * 1024)
    new = read_new(path, 1000)
    uri = uri_of(new)
    reader = FilesSourceReader(FilesSource(path=str(path)), 1000)
    assert_same_batches(new, old_batches(reader, uri, content, 64 * 1024))
    assert_ids_follow_the_lines(new, uri, content)
    assert any("late" in batch.rows.column_names for batch in new)


# --- typing from the first rows only when it is the typing from every row -------------------

FLAT = {
    "int": lambda rng: rng.randint(-5, 5),
    "float": lambda rng: rng.choice([0.5, -1e3, 2.0]),
    "str": lambda rng: rng.choice(["", "a:b", "::", "x", "é:", '"q"']) * rng.randint(0, 3),
    "bool": lambda rng: rng.random() < 0.5,
}
KINDS = {
    **FLAT,
    "big": lambda rng: 2**63 + rng.randint(0, 5),
    "null": lambda rng: None,
    "list": lambda rng: [rng.randint(0, 3)] * rng.randint(0, 2),
    "struct": lambda rng: {"k": rng.choice(["v", "v:w"])} if rng.random() < 0.8 else {},
}
KEYS = ["a", "b", "c:d", "é", "new"]


def random_block(rng: random.Random, count: int) -> bytes:
    """Rows shaped like the first ones, but for a few: a new key, another type, a missing key, an escape."""
    shape = {key: rng.choice(list(FLAT if rng.random() < 0.7 else KINDS)) for key in rng.sample(KEYS[:3], 2)}
    rows = [{key: KINDS[kind](rng) for key, kind in shape.items()} for _ in range(count)]
    for _ in range(rng.choice([0, 0, 1, 2])):
        row = rows[rng.randrange(count)]
        if rng.random() < 0.7:
            row[rng.choice(KEYS)] = KINDS[rng.choice(list(KINDS))](rng)
        elif row:
            del row[rng.choice(list(row))]
    lines = [json.dumps(row, ensure_ascii=rng.random() < 0.5) for row in rows]
    if rng.random() < 0.1:  # a key and a value holding an escaped colon
        at = rng.randrange(count)
        lines[at] = lines[at][:-1] + (", " if rows[at] else "") + '"x\\u003ay": "v\\u003aw"}'
    return ("\n".join(lines) + "\n").encode()


def full_typing(text: bytes, count: int) -> pa.Table | None:
    try:  # what the reader did: any failure sends the block line by line
        frame = pl.read_ndjson(text, infer_schema_length=None)
        return frame.to_arrow() if frame.height == count else None
    except Exception:
        return None


def first_rows_typing(text: bytes) -> pl.DataFrame | None:
    try:
        return pl.read_ndjson(text)
    except Exception:
        return None


def test_json_objects_are_typed_as_from_every_row() -> None:
    rng = random.Random(11)
    shortcuts = silent_changes = 0
    for _ in range(400):
        count = rng.choice([5, 101, 150, 400])
        text = random_block(rng, count)
        fast, full = read_json_objects(text, count), full_typing(text, count)
        assert (fast is None) == (full is None), text[:300]
        if full is not None:
            assert fast.schema == full.schema, text[:300]
            assert fast.to_pylist() == full.to_pylist(), text[:300]
        first = first_rows_typing(text)
        if first is not None and first.height == count and count > 100:
            shortcuts += files._schema_seen_whole(text, first)
            silent_changes += full is not None and first.to_arrow() != full  # what the check must catch
    # Both sides are exercised: blocks the shortcut takes, and late rows that would change the table.
    assert shortcuts > 20
    assert silent_changes > 20


def test_objects_and_arrays_read_whole_equal_them_read_line_by_line(tmp_path: Path) -> None:
    """Each object or array as its line wrote it, on both paths: an Arrow struct gave a row the keys other
    rows have, in the column's order, with the column's types (a number beside text became text)."""
    rng = random.Random(5)
    reader = FilesSourceReader(FilesSource(path=str(tmp_path)), 1000)
    whole = 0
    for seed in range(150):
        text = random_block(rng, rng.choice([5, 150]))
        lines = text.splitlines()
        objects = [json.loads(line) for line in lines]
        if rng.random() < 0.5:  # objects whose keys and types differ from line to line
            for obj in objects:
                obj["o"] = {
                    k: rng.choice([1, 2.5, 1.0, "s", None, [1, "x"]]) for k in rng.sample("zyx", rng.randint(0, 3))
                }
            lines = [json.dumps(obj).encode() for obj in objects]
        (tmp_path / f"{seed}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        [batch] = read_new(tmp_path / f"{seed}.jsonl", 1000)
        one_by_one = reader._parse_lines_one_by_one(InputIds("x"), list(range(1, len(lines) + 1)), lines, 0).rows
        whole += read_json_objects(b"\n".join(lines), len(lines)) is not None
        for name in one_by_one.column_names[2:]:
            written = [obj.get(name) for obj in objects]
            kinds = {type(value) for value in written if value is not None}
            if kinds not in ({dict}, {list}):
                continue
            for rows in (batch.rows, one_by_one):
                assert is_json(rows[name].type), name
                assert rows[name].to_pylist() == written
                assert [list(v) for v in rows[name].to_pylist() if isinstance(v, dict)] == [
                    list(v) for v in written if isinstance(v, dict)
                ]
            assert batch.rows[name].cast(pa.string()).to_pylist() == one_by_one[name].cast(pa.string()).to_pylist()
    assert whole > 50  # both paths are exercised


@pytest.mark.parametrize(
    "late",
    [
        '{"a": "x", "new": 1}',  # a key the first rows lack
        '{"a": "x", "b": 1}',  # ... with a colon-free string beside it
        '{"a": "x:\\u003a"}',  # an escaped colon could hide a key's colon
        '{"a": "x", "a": "y"}',  # a key twice
        "{}",  # a row with no keys: a null cell
        '{"a": null}',
    ],
)
@pytest.mark.parametrize("first", ['{"a": "v:1"}', '{"a": "v"}'])  # with and without colons in strings
def test_a_late_row_that_could_change_the_schema_gets_the_second_pass(first: str, late: str) -> None:
    text = ("\n".join([first] * 150 + [late]) + "\n").encode()
    frame = pl.read_ndjson(text)
    assert not files._schema_seen_whole(text, frame)
    assert read_json_objects(text, 151).to_pylist() == full_typing(text, 151).to_pylist()


@pytest.mark.parametrize("value", ["v:{}", "v{}"])
def test_late_rows_like_the_first_ones_skip_the_second_pass(value: str) -> None:
    rows = [{"a": value.format(i), "n": i, "x": 0.5, "ok": True} for i in range(500)]
    text = "".join(json.dumps(row) + "\n" for row in rows).encode()
    assert files._schema_seen_whole(text, pl.read_ndjson(text))


# --- record ids over whole columns ------------------------------------------------------------


def test_record_ids_equal_the_per_record_formula() -> None:
    contents = [t.encode() for t in TRICKY] + [b"\xff\xfe invalid utf-8", b"\x00\x1f"]
    positions = list(range(1, len(contents) + 1))
    expected = [old_id("s3://b/ü k.jsonl", p, c) for p, c in zip(positions, contents, strict=True)]
    uri = "s3://b/ü k.jsonl"
    assert record_ids(uri, positions, contents).to_pylist() == expected
    assert record_ids(uri, np.array(positions), pa.array(contents, pa.large_binary())).to_pylist() == expected
    chunked = pa.chunked_array([pa.array(contents[:3]), pa.array(contents[3:])])
    assert record_ids(uri, pa.array(positions, pa.int32()), chunked).to_pylist() == expected
    mixed = ["7:2:0", None, -3, "ü"]
    texts = ["a", "", "日本", "x"]
    assert record_ids(uri, mixed, [t.encode() for t in texts]).to_pylist() == [
        old_id(uri, p, t.encode()) for p, t in zip(mixed, texts, strict=True)
    ]
    assert record_ids(uri, pa.array(["1:2", "z"]), pa.array(["a", "b"])).to_pylist() == [
        old_id(uri, "1:2", b"a"),
        old_id(uri, "z", b"b"),
    ]
    assert record_ids(uri, [], []).to_pylist() == []
    with pytest.raises(ValueError):
        record_ids(uri, [1, 2], [b"a"])


def old_rows_as_text(table: pa.Table) -> list[bytes]:
    """The content part of a CSV/Parquet id as it was: the joined row, encoded row by row."""
    return [value.encode() for value in _rows_as_text(table).to_pylist()]


def test_csv_and_parquet_ids_and_lines_equal_the_per_row_formula(tmp_path: Path) -> None:
    texts = [t for t in TRICKY if "\n" not in t and "\r" not in t]
    csv_lines = ["text,note"] + [f'"{t.replace(chr(34), chr(34) * 2)}",n{i}' for i, t in enumerate(texts)]
    csv_lines[3] = "too,many,fields"  # set aside: later line numbers skip it
    csv_lines[6] = "only one field"
    csv_lines.insert(8, ",")  # both fields empty: nulls
    csv_lines += [csv_lines[2], csv_lines[6]]  # a row and a set-aside line again: an id of their own
    path = tmp_path / "t.csv"
    path.write_text("\n".join(csv_lines) + "\n")
    batches = read_new(path, 4)
    rows = pa.concat_tables([batch.rows for batch in batches if batch.rows.num_rows])
    uri = uri_of(batches)
    lines = [source["line"] for source in rows["source"].to_pylist()]
    last = len(csv_lines)
    assert lines == [n for n in range(2, last + 1) if n not in (4, 7, last)]
    contents = old_rows_as_text(rows.drop_columns(["id", "source"]))
    assert rows["id"].to_pylist() == ids_in_order(uri, contents)
    set_aside = pa.concat_tables([batch.set_aside for batch in batches])
    assert [source["line"] for source in set_aside["source"].to_pylist()] == [4, 7, last]
    assert set_aside["id"].to_pylist() == ids_in_order(uri, [csv_lines[n - 1].encode() for n in (4, 7, last)])

    count = len(texts) + 1
    table = pa.table({"text": [*texts, None], "n": [*range(count - 1), None], "f": ([0.5, None] * count)[:count]})
    table = pa.concat_tables([table, table.slice(1, 3)])  # rows again, in another batch
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=3)
    batches = read_new(tmp_path / "t.parquet", 2)
    rows = pa.concat_tables([batch.rows for batch in batches])
    uri = uri_of(batches)
    assert [source["line"] for source in rows["source"].to_pylist()] == list(range(1, table.num_rows + 1))
    assert rows["id"].to_pylist() == ids_in_order(uri, old_rows_as_text(table))


def test_a_row_of_no_columns_is_empty_text() -> None:
    assert _rows_as_text(pa.table({"x": [1, 2]}).drop_columns("x")).to_pylist() == ["", ""]


def test_input_ids_number_each_content_by_how_often_it_came_before_across_batches() -> None:
    rng = random.Random(5)
    ids, contents, got = InputIds("s3://b/k.csv"), [], []
    for _ in range(30):
        batch = [str(rng.randrange(40)).encode() for _ in range(rng.randrange(0, 60))]
        contents += batch
        got += ids(batch).to_pylist()
    assert got == ids_in_order("s3://b/k.csv", contents)
    assert len(set(got)) == len(got)


def test_a_line_inserted_or_deleted_above_a_record_leaves_its_id(tmp_path: Path) -> None:
    path = tmp_path / "notes.jsonl"
    rows = [json.dumps({"text": f"note {i}"}) for i in range(6)]
    path.write_text("\n".join(rows) + "\n")

    def ids_by_text() -> dict[str, str]:
        table = pa.concat_tables([batch.rows for batch in read_new(path, 4)])
        return dict(zip(table["text"].to_pylist(), table["id"].to_pylist(), strict=True))

    before = ids_by_text()
    path.write_text("\n".join([json.dumps({"text": "new"}), *rows[:2], *rows[3:]]) + "\n")
    after = ids_by_text()
    assert {text: after[text] for text in before if text != "note 2"} == {
        text: before[text] for text in before if text != "note 2"
    }


def test_a_csv_row_and_a_set_aside_line_of_one_content_get_two_ids(tmp_path: Path) -> None:
    path = tmp_path / "one.csv"
    path.write_text('text\n"a,b"\na,b\n')  # a row holding "a,b", then a line with one field too many
    batches = read_new(path, 10)
    (row,) = pa.concat_tables([b.rows for b in batches if b.rows.num_rows]).to_pylist()
    (line,) = pa.concat_tables([b.set_aside for b in batches]).to_pylist()
    assert row["text"] == "a,b" and line["reason"] == "malformed_csv"
    assert row["id"] != line["id"]


# The block check's definition: a high surrogate escape with no low one after it, or a low one with
# no high one before it.
LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def test_the_block_check_for_lone_surrogates_agrees_with_the_escape_pattern() -> None:
    from connectors.files import _may_hold_lone_surrogate

    rng = random.Random(7)
    parts = [
        rb"\ud83d",
        rb"\ude00",
        rb"\uD83D",
        rb"\uDE00",
        rb"\u00e9",
        rb"\\",
        b"x",
        b" ",
        rb"\n",
        rb"\udbff",
        rb"\udc00",
    ]
    for _ in range(3000):
        text = b"".join(rng.choice(parts) for _ in range(rng.randrange(0, 8))) + b"\n"
        assert _may_hold_lone_surrogate(text) == bool(LONE_SURROGATE.search(text)), text


MIXED = ["1", "1.0", "1e3", "1.5e-7", "-0.0", "1e16", "2.50", "true", "false", '{"b": 1.0}', "[1.0, 2]", '"1.0"']


@pytest.mark.parametrize("value", MIXED)
@pytest.mark.parametrize("beside", ['"text"', "1.5", "true"])
def test_a_value_beside_other_types_is_the_same_read_whole_or_line_by_line(
    tmp_path: Path, value: str, beside: str
) -> None:
    """A line's value gets one text whichever path reads its block: polars wrote a number in a column of
    mixed types its own way (1.0 as 1, 1e3 as 1000, an object's 1.0 as 1), Python's json another, and a
    record's id, dedup hash and training text follow that text."""
    lines = [f'{{"n": {value}, "t": "a"}}', f'{{"n": {beside}, "t": "b"}}']
    whole = write_lines(tmp_path / "whole.jsonl", lines)
    by_line = write_lines(tmp_path / "by_line.jsonl", [*lines, '{"n": broken'])  # a bad line: read line by line
    [read_whole] = read_new(whole, 1000)
    [read_by_line] = read_new(by_line, 1000)
    assert read_by_line.set_aside.num_rows == 1
    written = json.loads(value)
    expected = written if isinstance(written, str) else json.dumps(written, ensure_ascii=False)
    for batch in (read_whole, read_by_line):
        values = batch.rows["n"].to_pylist()
        if not isinstance(values[0], str):  # a column of one type (numbers, booleans) keeps its values
            assert values == [json.loads(value), json.loads(beside)]
            continue
        assert values[0] == expected
    assert read_whole.rows["n"].cast(pa.string()).to_pylist() == read_by_line.rows["n"].cast(pa.string()).to_pylist()


@pytest.mark.parametrize("big", ["9007199254740993", "-9007199254740993", "18446744073709551616"])
def test_an_integer_a_float_cannot_hold_beside_floats_keeps_its_digits(tmp_path: Path, big: str) -> None:
    """Arrow failed the whole file on it line by line (not a readable jsonl file), polars rounded it."""
    lines = [f'{{"n": {big}}}', '{"n": 1.5}']
    whole = write_lines(tmp_path / "whole.jsonl", lines)
    by_line = write_lines(tmp_path / "by_line.jsonl", [*lines, "not json"])
    for path in (whole, by_line):
        [batch] = read_new(path, 1000)
        assert batch.rows["n"].to_pylist() == [big, "1.5"]


def test_a_boolean_beside_a_float_stays_a_boolean(tmp_path: Path) -> None:
    """Arrow made ``true`` after a float 1.0 (and failed on it before one): a float column would take it."""
    path = write_lines(tmp_path / "x.jsonl", ['{"n": 1.5}', '{"n": true}', "not json"])
    [batch] = read_new(path, 1000)
    assert batch.rows["n"].to_pylist() == ["1.5", "true"]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_a_column_of_numbers_with_some_text_is_not_read_line_by_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the values beside text are written again: line by line, such a block took 15 times longer."""

    def refuse(*_: object) -> None:
        raise AssertionError("read line by line")

    monkeypatch.setattr(FilesSourceReader, "_parse_lines_one_by_one", refuse)
    lines = [json.dumps({"q": f"q{i}", "n": "n/a" if i == 150 else i * 0.5, "zip": f"{i:05d}"}) for i in range(300)]
    [batch] = read_new(write_lines(tmp_path / "x.jsonl", lines), 1000)
    assert batch.rows["n"].to_pylist() == [json.dumps(json.loads(line)["n"]).strip('"') for line in lines]
    assert batch.rows["zip"].to_pylist() == [f"{i:05d}" for i in range(300)]


# --- a key spelled any way JSON may write it -------------------------------------------------

# "prénom" as a JSON writer may spell it: raw UTF-8 (ensure_ascii=False), escaped as json.dumps does by
# default, escaped with capitals, and every letter escaped.
PRENOM_SPELLINGS = ["prénom", "pr\\u00e9nom", "pr\\u00E9nom", "".join(f"\\u{ord(c):04x}" for c in "prénom")]


@pytest.mark.parametrize("key", [*PRENOM_SPELLINGS, "n\\u0061me"])
def test_a_value_not_text_under_a_declared_text_key_is_quarantined_however_the_key_is_spelt(
    tmp_path: Path, key: str
) -> None:
    """The block check looked for the key only as ``json.dumps`` escapes it by default: a key written as
    raw UTF-8 or with other escapes let a number through as text ("5") where it is to be quarantined."""
    name = json.loads(f'"{key}"')
    path = write_lines(tmp_path / "x.jsonl", [f'{{"{key}": "Zoé", "n": 1}}', f'{{"{key}": 5, "n": 2}}'])
    [batch] = list(FilesSourceReader(FilesSource(path=str(path)), 1000, text_columns=[name]).batches())
    assert batch.rows[name].to_pylist() == ["Zoé"]
    [aside] = batch.set_aside.to_pylist()
    assert (aside["reason"], aside["source"]["line"]) == ("schema", 2)
    assert aside["detail"].endswith(f"{name}: a JSON number, not a string (the input schema declares str)")


@pytest.mark.parametrize("key", [*PRENOM_SPELLINGS, "n\\u0061me"])
def test_a_number_beside_text_is_as_written_however_its_key_is_spelt(tmp_path: Path, key: str) -> None:
    """The block path looks a value polars wrote as text (``1.0`` as ``1``) up in its line only when the
    key is seen before a value that is not a string: a key spelt otherwise than raw UTF-8 was not seen."""
    name = json.loads(f'"{key}"')
    lines = [f'{{"{key}": "Zoé"}}', f'{{"{key}": 1.0}}', f'{{"{key}": 1e3}}']
    [whole] = read_new(write_lines(tmp_path / "whole.jsonl", lines), 1000)
    [by_line] = read_new(write_lines(tmp_path / "by_line.jsonl", [*lines, "not json"]), 1000)
    for batch in (whole, by_line):
        assert batch.rows[name].to_pylist() == ["Zoé", "1.0", "1000.0"]


def test_the_key_pattern_matches_every_spelling_and_no_other_key() -> None:
    from connectors.files import _found_in, _not_a_string_after

    for key in ["prénom", 'a"b\\c/d\te', "\U0001f600 emoji", "name"]:
        pattern = _not_a_string_after(key)
        for ensure_ascii in (True, False):
            assert _found_in(pattern, json.dumps({key: 1}, ensure_ascii=ensure_ascii).encode()), (key, ensure_ascii)
        escaped = "".join(f"\\u{unit:04X}" for unit in np.frombuffer(key.encode("utf-16-be"), ">u2"))
        assert _found_in(pattern, f'{{"{escaped}": [1]}}'.encode())
        assert not _found_in(pattern, json.dumps({key: "1"}).encode())
        assert not _found_in(pattern, json.dumps({key + "x": 1, "x" + key: 1}).encode())
    assert _found_in(_not_a_string_after("a/b"), b'{"a\\/b": true}')


def test_a_declared_text_column_read_as_numbers_or_text_like_numbers(tmp_path: Path) -> None:
    """The block is scanned for the key only where polars' column may hold such a value: one of numbers
    is quarantined whole, one of text that looks like numbers (a zip code) is read as it is."""
    lines = [json.dumps({"code": i, "zip": f"{i:05d}", "meta": {"zip": i}}) for i in range(3)]
    path = write_lines(tmp_path / "x.jsonl", lines)
    [batch] = list(FilesSourceReader(FilesSource(path=str(path)), 1000, text_columns=["code"]).batches())
    assert batch.rows.num_rows == 0 and batch.set_aside.num_rows == 3
    [batch] = list(FilesSourceReader(FilesSource(path=str(path)), 1000, text_columns=["zip"]).batches())
    assert batch.rows["zip"].to_pylist() == ["00000", "00001", "00002"] and batch.set_aside.num_rows == 0


@pytest.mark.parametrize("key", [*PRENOM_SPELLINGS, "n\\u0061me"])
def test_an_integer_beside_whole_floats_is_as_written_however_its_key_is_spelt(tmp_path: Path, key: str) -> None:
    """The block is scanned for the key before an integer, then only the lines of whole floats that have one
    are looked up: an integer is found whichever way its key is spelt, a whole float (``10.0``, ``1e1``, one
    whose line has the key before an integer in a nested object) stays a float, on both paths."""
    name = json.loads(f'"{key}"')
    lines = [f'{{"{key}": {value}, "o": {{"{key}": 3}}}}' for value in ["10.0", "1e1", "2.5"]]
    others = ["7", "-0", "4.0", "1e-7", "0.00001", "12345678901.5", "1e20", "-0.0"]
    lines += [f'{{"{key}": {value}}}' for value in others] + [f'{{"{key}": {i}.0}}' for i in range(300)]
    expected = [10.0, 10.0, 2.5, 7, 0, 4.0, 1e-7, 1e-5, 12345678901.5, 1e20, -0.0, *[float(i) for i in range(300)]]
    [whole] = read_new(write_lines(tmp_path / "whole.jsonl", lines), 1000)
    [by_line] = read_new(write_lines(tmp_path / "by_line.jsonl", [*lines, "not json"]), 1000)
    for batch in (whole, by_line):
        assert is_json(batch.rows[name].type)
        values = batch.rows[name].to_pylist()
        assert values == expected and [type(v) for v in values] == [type(v) for v in expected]
        assert batch.rows[name].cast(pa.string()).to_pylist() == [json.dumps(v) for v in expected]  # 1e-07, -0.0


def test_a_key_of_a_later_line_is_found_however_spelt_and_a_nested_one_is_not(tmp_path: Path) -> None:
    # What a JSONL batch holds of the columns a recipe needs the keys of is what its file holds: a key a
    # later line has, however JSON spells it (an escape, after lines that end in CR alone, in a gzip file),
    # is null in a batch without it; a key nested in a value, or on a line that is no JSON, is no column.
    lines = [
        b'{"q": "a", "meta": {"segment": 1}}',
        b'{"q": "b", "label": 1',  # malformed: no record, so no key
        b'{"q": "b", "label": 1, "label": 2}',  # a key twice: quarantined too
        b'{"q": "c", "s\\u0065gment": "x"}',
    ]
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(gzip.compress(b"\r".join(lines) + b"\r"))
    reader = FilesSourceReader(FilesSource(path=str(path)), batch_rows=1, keyed={"segment", "label", "input_id"})
    batches = [batch.rows for batch in reader.batches() if batch.rows.num_rows]
    assert [rows["q"].to_pylist() for rows in batches] == [["a"], ["c"]]
    first, last = batches
    assert "segment" in first.column_names and first["segment"].to_pylist() == [None]
    assert "label" not in first.column_names and "input_id" not in first.column_names
    assert last["segment"].to_pylist() == ["x"] and "label" not in last.column_names
    # Its quarantined record shows what its own line held, not the null the file's other lines gave it.
    assert INPUT_LINE_COLUMN in first.column_names


def test_a_key_of_a_later_block_is_found_where_every_line_parses(tmp_path: Path) -> None:
    # Read whole by polars (every line parses), a block tells its keys at once: an escaped one too.
    lines = [json.dumps({"q": str(n), "meta": {"segment": n}}) for n in range(5)] + ['{"q": "5", "s\\u0065gment": 1}']
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    reader = FilesSourceReader(FilesSource(path=str(tmp_path / "in.jsonl")), batch_rows=2, keyed={"segment", "label"})
    batches = [batch.rows for batch in reader.batches()]
    assert [rows["segment"].to_pylist() for rows in batches] == [[None, None], [None, None], [None, 1]]
    assert not any("label" in rows.column_names for rows in batches)


def repeats_a_key(text: bytes) -> bool:
    """The definition: some line names a key twice in one object, at any depth."""
    try:
        for line in text.splitlines():
            json.loads(line, object_pairs_hook=files._one_value_per_key)
    except files._RepeatedKey:
        return True
    return False


def test_the_block_checks_given_one_scan_say_what_they_said_scanning_the_block_themselves() -> None:
    """``_parse_lines`` scans a block once (its colons, whether a backslash) for the surrogate, schema and
    repeated-key checks: each says on random blocks (keys named twice, colons in keys and strings, escaped
    colons, surrogate escapes, nulls, nested values) what it said scanning the block itself, and a block
    naming a key twice is never read whole."""
    rng = random.Random(17)
    caught = 0
    for _ in range(300):
        count = rng.choice([5, 101, 150])
        text = random_block(rng, count)
        lines = text.splitlines()
        for added in rng.sample([b'"a": 1, "a": 2', rb'"s": "\ud83d\ude00"', rb'"s": "\ud83d"', rb'"s": "a\\b"'], 2):
            if rng.random() < 0.3:  # a key named twice, a surrogate pair or a lone one, an escaped backslash
                at = rng.randrange(count)
                lines[at] = lines[at][:-1] + (b", " if lines[at] != b"{}" else b"") + added + b"}"
        text = b"\n".join(lines) + b"\n"
        scan = files._scan(text)
        assert scan == (text.count(b":"), b"\\" in text)
        assert files._may_hold_lone_surrogate(text, scan) == files._may_hold_lone_surrogate(text)
        assert_same_tables(read_json_objects(text, count, scan), read_json_objects(text, count))
        first = first_rows_typing(text)
        if first is not None and first.height == count:
            assert files._schema_seen_whole(text, first, scan) == files._schema_seen_whole(text, first)
        table = None if files._may_hold_lone_surrogate(text) else read_json_objects(text, count)
        if table is not None:
            may = files._may_repeat_a_key(text, table, scan)
            assert may == files._may_repeat_a_key(text, table)
            assert may or not repeats_a_key(text), text[:300]
            caught += repeats_a_key(text)
    assert caught > 10


def assert_same_tables(fast: pa.Table | None, full: pa.Table | None) -> None:
    assert (fast is None) == (full is None)
    if fast is not None and full is not None:
        assert fast.schema == full.schema and fast.to_pylist() == full.to_pylist()


@pytest.mark.parametrize("piece", [8, 24, 256 * 1024])
def test_line_ends_find_each_newline_and_scan_as_the_passes_over_the_whole_block(
    monkeypatch: pytest.MonkeyPatch, piece: int
) -> None:
    """``_line_ends`` looks at a block a piece at a time and at its flags a word at a time: on random
    blocks (empty, one byte, newlines side by side, at a piece's or word's edge or none, lengths not a
    multiple of 8, non-ASCII, colons and backslashes) it finds what ``np.flatnonzero`` and ``_scan`` find."""
    monkeypatch.setattr(files, "_PIECE", piece)
    rng = random.Random(23)
    alphabet = [b"\n", b":", b"\\", b"a", b"{", b" ", "é".encode(), b"\r", b"\n\n"]
    blocks = [b"", b"\n", b":", b"\\", b"a" * 7 + b"\n", b"\n" * 64, b"x" * 40]
    blocks += [b"".join(rng.choices(alphabet, k=rng.randrange(200))) for _ in range(400)]
    blocks += [random_block(rng, rng.choice([1, 5, 101])) for _ in range(50)]
    for data in blocks:
        ends, scan = files._line_ends(data)
        assert ends.tolist() == np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n")).tolist(), data
        assert ends.dtype == np.int64
        assert scan == files._scan(data) == (data.count(b":"), b"\\" in data), data


def may_not_be_text_value_by_value(column: pa.ChunkedArray) -> list[bool]:
    """The reference: a value that is not null and opens as a number, array or object would, or is 4
    bytes opening with t or 5 with f (as true and false are)."""
    found = []
    for value in column.to_pylist():
        raw = b"" if value is None else value.encode()
        found.append(
            value is not None
            and raw[:1] != b""
            and (
                raw[:1] in b"-0123456789[{"
                or (raw[:1] == b"t" and len(raw) == 4)
                or (raw[:1] == b"f" and len(raw) == 5)
            )
        )
    return found


def test_the_values_that_may_not_be_text_are_those_value_by_value() -> None:
    """``_may_not_be_text`` takes the first bytes chunk by chunk and looks at them all at once: on random
    columns (empty, one value, several chunks, sliced chunks, string and large_string, nulls, empty
    values first, last or everywhere, non-ASCII, true/false and look-alikes) it says what each value says."""
    rng = random.Random(29)
    words = [
        "",
        "",
        "true",
        "false",
        "tree",
        "fals",
        "trueish",
        "12",
        "-3",
        "[1]",
        "{}",
        "é",
        "日本",
        "x",
        "f",
        "t",
        None,
    ]
    columns = [
        pa.chunked_array([], pa.string()),
        pa.chunked_array([pa.array([""])]),
        pa.chunked_array([pa.array([None], pa.string())]),
        pa.chunked_array([pa.array(["12", "", ""]), pa.array(["t", "", None])]),  # empty values at the end
        pa.chunked_array([pa.array(["", "-", "", "x", "[", "false", ""])]),
    ]
    for _ in range(300):
        kind = rng.choice([pa.string(), pa.large_string()])
        chunks = []
        for _ in range(rng.randrange(4)):
            values = rng.choices(words, k=rng.randrange(6))
            chunk = pa.array([*values, "pad", "9"], kind)
            if rng.random() < 0.3:  # nulls whose slots hold bytes (Arrow does not forbid it)
                valid = pa.array([rng.random() < 0.7 for _ in range(len(chunk))]).buffers()[1]
                chunk = pa.Array.from_buffers(kind, len(chunk), [valid, *chunk.buffers()[1:]])
            start = rng.randrange(3)
            chunks.append(chunk.slice(start, rng.randrange(len(values) + 3 - start)))
        columns.append(pa.chunked_array(chunks, kind))
    for column in columns:
        assert files._may_not_be_text(column).tolist() == may_not_be_text_value_by_value(column), column
