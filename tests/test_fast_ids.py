"""Record ids from whole columns give exactly the per-record formula: ids are persisted (review decisions,
queue items and split sides are keyed by them), so no batching, repeat or size may change one."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
import xxhash

from schemas.hashing import hex_digests, xxh3_128_digests, xxh3_128_hex
from schemas.records import InputIds, record_ids

URI = "s3://bucket/part-0000.jsonl"
EDGES = [b"", b"\x1f", b"0", b"0\x1f", b"\xff\xfe not UTF-8", "é ✓ 😀".encode(), b'{"a": 1}', b"\x00" * 40]


def formula(uri: str, contents: list[bytes]) -> list[str]:
    """Each record's id: its uri, how many records before it held its content, and its content."""
    seen: Counter[bytes] = Counter()
    ids = []
    for content in contents:
        ids.append(xxhash.xxh3_128_hexdigest(b"\x1f".join([uri.encode(), str(seen[content]).encode(), content])))
        seen[content] += 1
    return ids


def random_batches(rng: random.Random, batches: int, most: int, distinct: int) -> list[list[bytes]]:
    """Batches of contents drawn from ``distinct`` ones (repeats within and across batches) and edge cases."""
    pool = [*EDGES, *(f"record {i}".encode() for i in range(distinct))]
    return [[rng.choice(pool) for _ in range(rng.randrange(0, most))] for _ in range(batches)]


def test_ids_of_random_batches_are_the_formulas() -> None:
    rng = random.Random(11)
    for distinct in (3, 50, 5000):
        ids, contents, got = InputIds(URI), [], []
        for batch in random_batches(rng, 40, 400, distinct):
            contents += batch
            given = pa.array(batch, pa.binary()) if rng.random() < 0.5 else batch
            got += ids(given).to_pylist()
        assert got == formula(URI, contents)


def test_many_repeats_in_one_batch_are_numbered_in_input_order() -> None:
    rng = random.Random(3)
    batch = [rng.choice([b"a", b"b", b""]) for _ in range(5000)]  # runs of equal keys an unstable sort reorders
    assert InputIds(URI)(batch).to_pylist() == formula(URI, batch)


def test_ids_stay_the_formulas_as_the_slots_grow() -> None:
    # Past 4096 contents the slots grow (from the runs), and again at each doubling.
    rng = random.Random(5)
    ids, contents, got = InputIds(URI), [], []
    for size in (1, 3000, 2000, 9000, 30000, 1, 0, 70000):
        batch = [f"line {rng.randrange(120_000)}".encode() for _ in range(size)]
        contents += batch
        chunked = pa.chunked_array(
            [pa.array(batch[: size // 2], pa.binary()), pa.array(batch[size // 2 :], pa.binary())]
        )
        got += ids(chunked).to_pylist()
    assert got == formula(URI, contents)


def test_occurrences_count_the_contents_before() -> None:
    rng = random.Random(9)
    ids, seen = InputIds(URI), Counter[bytes]()
    for batch in random_batches(rng, 30, 200, 40):
        expected = []
        for content in batch:
            expected.append(seen[content])
            seen[content] += 1
        assert ids.occurrences(batch).tolist() == expected


def test_the_digests_are_the_hex_digest_and_their_first_half_the_key() -> None:
    values = [*EDGES, b"x" * 1000]
    column = pa.chunked_array([pa.array(values[:3], pa.large_binary()), pa.array(values[3:], pa.large_binary())])
    digests, null = xxh3_128_digests(column)
    hexes = hex_digests(digests, null)
    expected = [xxhash.xxh3_128_hexdigest(value) for value in values]
    assert null is None and hexes.type == pa.string() and hexes.to_pylist() == expected
    assert digests[:, 0].astype(np.uint64).tolist() == [int(digest[:16], 16) for digest in expected]


def test_an_instance_counts_ids_or_occurrences_not_both() -> None:
    # The two count by different hashes: mixed, a content seen by one would be new to the other.
    ids = InputIds(URI)
    ids([b"a"])
    with pytest.raises(ValueError, match="counts ids already"):
        ids.occurrences([b"a"])


def as_column(rng: random.Random, batch: list[bytes]) -> pa.Array | pa.ChunkedArray:
    """``batch`` as a reader may hand it over: binary, large_binary or (where it is UTF-8) string, whole,
    sliced out of a longer array (its offsets start past 0) or in chunks, some empty."""
    text = all(_is_utf8(content) for content in batch) and rng.random() < 0.5
    kind = rng.choice([pa.string(), pa.large_string()] if text else [pa.binary(), pa.large_binary()])
    values: list = [content.decode() for content in batch] if text else batch
    shape = rng.randrange(3)
    if shape == 0:
        return pa.array(values, kind)
    if shape == 1:
        padded = pa.array([*values[:1], *values, *values[:1]], kind)  # a neighbour each side of the slice
        return padded.slice(1 if values else 0, len(values))
    cuts = sorted(rng.randrange(len(values) + 1) for _ in range(rng.randrange(1, 4)))
    return pa.chunked_array(
        [pa.array(values[a:b], kind) for a, b in zip([0, *cuts], [*cuts, len(values)], strict=True)], kind
    )


def _is_utf8(content: bytes) -> bool:
    try:
        content.decode()
    except UnicodeDecodeError:
        return False
    return True


def test_ids_of_any_column_are_record_ids_per_record() -> None:
    # The published formula one record at a time (record_ids, given how many records before held the content),
    # and xxhash's own digest of it, whatever column type, slice or chunks a batch comes in.
    rng = random.Random(17)
    for distinct in (2, 30, 3000):
        ids, seen, contents, got, expected = InputIds(URI), Counter[bytes](), [], [], []
        for batch in [*random_batches(rng, 15, 200, distinct), [], [EDGES[4]] * 3, [b"\x80"], []]:
            got += ids(as_column(rng, batch)).to_pylist()
            for content in batch:
                expected += record_ids(URI, [seen[content]], [content]).to_pylist()
                seen[content] += 1
            contents += batch
        assert got == expected == formula(URI, contents)


def test_hex_digests_of_any_column_keep_nulls() -> None:
    values = [*EDGES, None, b"x" * 300, None]
    column = pa.chunked_array([pa.array(values[:4], pa.large_binary()), pa.array(values[4:], pa.large_binary())])
    expected = [None if value is None else xxhash.xxh3_128_hexdigest(value) for value in values]
    assert xxh3_128_hex(column).to_pylist() == expected
    assert xxh3_128_hex(column.slice(3, 6)).to_pylist() == expected[3:9]
    assert xxh3_128_hex(pa.array([], pa.string())).to_pylist() == []
