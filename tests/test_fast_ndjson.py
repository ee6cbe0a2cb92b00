"""The kernel-built JSON lines are byte for byte what polars' ``write_ndjson`` writes (the published
shards, lineage and set-aside files were written by polars)."""

from __future__ import annotations

import io
import random

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from curation.ndjson import _holds, ndjson_lines, to_ndjson
from schemas.records import SOURCE_TYPE

# Every character JSON escapes, and ones it leaves as they are (DEL, non-ASCII, line separators).
AWKWARD = [chr(c) for c in range(0x20)] + ['"', "\\", "\x7f", "é", "日本", "\U0001f600", "\u2028", "\\u0041", '\\"']


def _polars(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pl.from_arrow(table).write_ndjson(buffer)
    return buffer.getvalue()


def _text(rng: random.Random) -> str:
    return "".join(rng.choice([*AWKWARD, "a", "b", " ", "xyz"]) for _ in range(rng.randrange(0, 8)))


def _rare(rng: random.Random, n: int) -> list[str]:
    """Long plain text where one row holds one character to escape: at its start, its end, or inside,
    or at the very end of the column's bytes, or before NULs that end them."""
    texts = ["".join(rng.choice("abc xyz.") for _ in range(rng.randrange(0, 400))) for _ in range(n)]
    row = rng.choice([0, n - 1, rng.randrange(n)])
    at = rng.choice([0, len(texts[row]), rng.randrange(len(texts[row]) + 1)])
    texts[row] = texts[row][:at] + rng.choice(AWKWARD) + texts[row][at:]
    if rng.random() < 0.3:
        texts[-1] += "\x00" * rng.randrange(1, 3)
    return texts


def _nearly_same(rng: random.Random, n: int) -> list[str]:
    """One value in every row but one, of the same length: the odd row is neither the first nor the last."""
    same = rng.choice(["x", "files", "train/part-00000.jsonl"])
    odd = rng.randrange(1, n - 1)
    at = rng.randrange(len(same))
    return [same] * odd + [same[:at] + "?" + same[at + 1 :]] + [same] * (n - odd - 1)


def _tables(rng: random.Random) -> list[pa.Table]:
    n = 300
    texts = [_text(rng) for _ in range(n)]
    sources = [
        None
        if rng.random() < 0.1
        else {"connector": "files", "uri": rng.choice(["s3://b/é.jsonl", 'a"\\b']), "line": i, "page": None}
        for i in range(n)
    ]
    full = pa.table(
        {
            "text": pa.array(texts),
            "nullable": pa.array([None if rng.random() < 0.3 else t for t in texts]),
            "large": pa.array(texts, pa.large_string()),
            "same": pa.array(["train/part-00000.jsonl"] * n),
            "same_escaped": pa.array(['sa"me\n'] * n),
            "empty": pa.array([""] * n),
            "number": pa.array([rng.randrange(-(2**63), 2**63) for _ in range(n)], pa.int64()),
            "small": pa.array([None if rng.random() < 0.2 else rng.randrange(256) for _ in range(n)], pa.uint8()),
            "flag": pa.array([rng.choice([True, False, None]) for _ in range(n)]),
            "nothing": pa.array([None] * n, pa.string()),
            "source": pa.array(sources, SOURCE_TYPE),
            'key "with" \\ \t escapes é': pa.array(texts),
            "rare": pa.array(_rare(rng, n)),
            "nearly_same": pa.array(_nearly_same(rng, n)),
            "plain": pa.array(
                ["".join(rng.choice("abc xyz.é") for _ in range(rng.randrange(0, 400))) for _ in range(n)]
            ),
        }
    )
    chunked = pa.concat_tables([full.slice(0, 7), full.slice(7, 100), full.slice(250)])  # several batches, offsets
    return [full, full.slice(13, 200), chunked, full.select(["same", "nothing"]), full.select(["flag"]).slice(5, 1)]


@pytest.mark.parametrize("seed", range(5))
def test_lines_equal_polars_write_ndjson(seed: int) -> None:
    for table in _tables(random.Random(seed)):
        assert to_ndjson(table) == _polars(table)


@pytest.mark.parametrize("seed", range(3))
def test_each_value_of_the_column_of_lines_is_one_line(seed: int) -> None:
    # A writer cuts shards at the column's offsets: each value must be a whole line, in order.
    for table in _tables(random.Random(seed)):
        lines = ndjson_lines(table)
        assert isinstance(lines, pa.ChunkedArray) and lines.type == pa.string()
        expected = _polars(table).split(b"\n")[:-1]
        assert [value.encode() for value in lines.to_pylist()] == [line + b"\n" for line in expected]


def test_types_it_does_not_write_go_to_polars() -> None:
    # A float, a list, a timestamp or a dictionary column: polars writes the whole table, as before.
    table = pa.table(
        {
            "text": ["a", 'b"'],
            "score": [0.1, 1e300],
            "tags": [["x"], []],
            "at": pa.array([0, 10**12], pa.timestamp("us")),
            "label": pa.array(["x", "y"]).dictionary_encode(),
        }
    )
    for name in ["score", "tags", "at", "label"]:
        part = table.select(["text", name])
        assert to_ndjson(part) == _polars(part)


def test_no_rows_no_bytes() -> None:
    assert to_ndjson(pa.table({"a": pa.array([], pa.string())})) == b""


def test_the_writers_tables_are_not_handed_to_polars(monkeypatch: pytest.MonkeyPatch) -> None:
    # Text rows and lineage rows (the bulk of what a run writes) take the kernels: polars cost 3x the CPU.
    import curation.ndjson

    monkeypatch.setattr(curation.ndjson, "_polars_ndjson", lambda _: pytest.fail("handed to polars"))
    table = _tables(random.Random(0))[0]
    lineage = table.select(["same", "number", "text", "source"]).rename_columns(["shard", "line", "id", "source"])
    assert to_ndjson(lineage).count(b"\n") == lineage.num_rows
    assert to_ndjson(table.select(["text", "nullable"])).count(b"\n") == table.num_rows


@pytest.mark.parametrize("seed", range(5))
def test_a_character_is_found_where_the_rows_hold_it(seed: int) -> None:
    # The search reads a column's bytes as one value: a character at either end of them, in a slice of a
    # column (its offset), only in rows outside the slice, or next to NULs must each give the rows'
    # answer, in short runs and in long ones (searched by memchr).
    rng = np.random.default_rng(seed)
    for _ in range(300):
        data = rng.choice(
            np.array([0x00, 0x01, 0x22, 0x41, 0x5C, 0xC3, 0xA9], np.uint8),
            int(rng.integers(1, rng.choice([16, 3000, 100_000]))),
        )
        data[rng.random(len(data)) < rng.choice([0.0, 0.5, 1.0])] = 0x41  # often none of the character
        if rng.random() < 0.5:  # one, anywhere: often at an end
            data[rng.choice([0, len(data) - 1, int(rng.integers(len(data)))])] = rng.choice([0x22, 0x5C])
        rows = int(rng.integers(1, 50))
        ends = np.sort(rng.integers(0, len(data) + 1, rows - 1))
        offsets = np.concatenate([[0], ends, [len(data)]]).astype(np.int32)
        column = pa.Array.from_buffers(pa.binary(), rows, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
        first = int(rng.integers(0, rows))
        column = column.slice(first, int(rng.integers(1, rows - first + 1)))
        for char in ('"', "\\"):
            assert _holds(column, char) == any(char.encode() in value for value in column.to_pylist())
