"""Record ids from whole columns give exactly the per-record formula: ids are persisted (review decisions,
queue items and split sides are keyed by them), so no batching, repeat or size may change one."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
import xxhash

from schemas.hashing import xxh3_128_hex_keyed
from schemas.records import InputIds

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


def test_the_keyed_hash_is_the_hex_digest_and_its_first_half() -> None:
    values = [*EDGES, b"x" * 1000]
    column = pa.chunked_array([pa.array(values[:3], pa.large_binary()), pa.array(values[3:], pa.large_binary())])
    hexes, keys = xxh3_128_hex_keyed(column)
    expected = [xxhash.xxh3_128_hexdigest(value) for value in values]
    assert hexes.type == pa.string() and hexes.to_pylist() == expected
    assert keys.to_numpy().tolist() == [int(digest[:16], 16) for digest in expected]
    assert np.asarray(keys).dtype == np.uint64


def test_an_instance_counts_ids_or_occurrences_not_both() -> None:
    # The two count by different hashes: mixed, a content seen by one would be new to the other.
    ids = InputIds(URI)
    ids([b"a"])
    with pytest.raises(ValueError, match="counts ids already"):
        ids.occurrences([b"a"])
