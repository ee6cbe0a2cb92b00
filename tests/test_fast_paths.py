"""The hot path's vectorised shortcuts give exactly what the plain per-record code gave."""

from __future__ import annotations

import json
import random
import struct

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.stages.dedup import ExactDedup, normalised_text
from curation.stages.duplicates import resolve_duplicates
from curation.stages.shape import time_texts
from schemas.json_values import float_texts
from schemas.records import SET_ASIDE_SCHEMA, set_aside_rows, source_array

# Every code point up to U+3100 (Latin, Greek, Cyrillic, the Unicode spaces, ...) plus a few beyond.
CHARS = [chr(c) for c in range(1, 0x3100) if not 0xD800 <= c < 0xE000] + ["\u2028", "\u2029", "\ufeff", "\U0001f600"]


def reference_normalised(texts: list[str]) -> pa.Array:
    """What exact dedup's normalisation was before its whitespace shortcut."""
    text = pc.utf8_lower(pc.utf8_normalize(pa.array(texts, pa.string()), "NFKC"))
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(text, r"\s+", " "))


def test_normalisation_matches_the_plain_regex_for_every_whitespace_like_character() -> None:
    texts = [f"a{c}b{c}{c}c {c}d{c} " for c in CHARS] + [f"{c}x  \t y{c}" for c in CHARS] + ["plain text", ""]
    fast = normalised_text(pa.table({"t": texts}), ["t"], normalize=True)
    assert fast.to_pylist() == reference_normalised(texts).to_pylist()
    # Text with nothing to fold takes the shortcut and is still the same.
    plain = ["One Two", "ÉCOLE  ", "ﬁne"]
    assert normalised_text(pa.table({"t": plain}), ["t"], True).to_pylist() == reference_normalised(plain).to_pylist()
    # An all-ASCII batch takes the ASCII kernels and is still the same.
    ascii_only = [chr(c) * 3 + "Ab\tC  d " for c in range(1, 128)]
    assert normalised_text(pa.table({"t": ascii_only}), ["t"], True).to_pylist() == (
        reference_normalised(ascii_only).to_pylist()
    )


def _signatures(stage: ExactDedup, texts: list[str], uri: str) -> pa.Table:
    count = len(texts)
    batch = pa.table(
        {
            "id": [f"{uri}-{i}" for i in range(count)],
            "source": source_array("files", uri, list(range(1, count + 1))),
            "prompt": texts,
            "completion": ["same answer"] * count,
        }
    )
    return stage.signatures(batch)


def test_exact_dedup_clusters_match_the_shared_pairs_and_components_step() -> None:
    stage = ExactDedup(["prompt", "completion"])
    first = _signatures(stage, ["Hello", "hello ", "Other", "HELLO", "x", "other", "unique"], "s3://b/a.jsonl")
    second = _signatures(stage, ["x", "Unique", "new", "hello"], "s3://b/0.jsonl")  # sorts before a.jsonl
    fast = stage.resolve([first, second])
    shared = resolve_duplicates(stage, [first, second])
    assert fast.num_rows == 6  # "hello " too: each field's ends are trimmed, not only the joined text's
    assert fast.to_pylist() == shared.to_pylist()
    kept = dict(zip(fast["id"].to_pylist(), fast["duplicate_of"].to_pylist(), strict=True))
    assert kept["s3://b/a.jsonl-0"] == "s3://b/0.jsonl-3"  # the first in input order is kept


def test_blank_line_check_agrees_with_bytes_strip() -> None:
    from connectors.files import blank_lines

    samples = [b'{"a": 1}', b"", b" ", b"\t\r", b"\x0b\x0c ", b'  {"a": 2}  ', b"\xc2\xa0", b"x"]
    for first in samples:
        for second in samples:
            for lines in ([b'{"z": 0}', first, second], [second, first, b'{"z": 0}'], [first, b'{"z": 0}', second]):
                data = b"".join(line + b"\n" for line in lines)
                ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
                starts = np.concatenate(([0], ends[:-1] + 1))
                assert blank_lines(data, starts, ends).tolist() == [not line.strip() for line in lines], lines


def test_float_texts_are_pythons_repr_of_every_kind_of_double() -> None:
    """Arrow's cast gives a float's shortest digits laid out its own way (``1``, ``1e-7``, ``1e+10``); the
    texts are Python's (``1.0``, ``1e-07``, ``10000000000.0``), as a template writes them, with JSON's
    ``NaN`` where asked: random bit patterns, every power of ten and the edges of each notation."""
    rng = random.Random(7)
    values: list[float | None] = [struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0] for _ in range(20000)]
    values += [rng.random() * 10.0 ** rng.randint(-25, 25) * rng.choice([1, -1]) for _ in range(20000)]
    values += [round(rng.random() * 1000, rng.randint(0, 4)) for _ in range(5000)]
    values += [m * 10.0**k for k in range(-323, 308) for m in (1, -1.5, 9.999999999999999, 0.1 + 0.2)]
    values += [0.0, -0.0, 1e-4, 9.999999999999999e-05, 1e16, 9999999999999998.0, 5e-324, float("nan"), None]
    values += [float("inf"), -float("inf"), 1.7976931348623157e308, 1e-06, 1e10]
    column = pa.chunked_array([pa.array(values[:100], pa.float64()), pa.array(values[100:], pa.float64())])
    assert float_texts(column).to_pylist() == [None if v is None else repr(v) for v in values]
    assert float_texts(column, json.dumps).to_pylist() == [None if v is None else json.dumps(v) for v in values]


def test_time_texts_are_pythons_str_in_every_unit() -> None:
    """A field naming a timestamp or time column writes what a template writes (Python's ``str`` of the
    value): whole seconds without a fraction, others in microseconds, before 1970 too, in each unit."""
    rng = random.Random(3)
    seconds = [rng.randint(-2_000_000_000, 4_000_000_000) for _ in range(3000)]
    kinds = [pa.timestamp(unit) for unit in ("s", "ms", "us", "ns")] + [pa.timestamp("us", "Asia/Kolkata")]
    for kind in kinds:
        per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[kind.unit]
        ticks = [
            s * per_second + rng.choice([0, 0, rng.randrange(per_second), rng.randrange(per_second) // 1000 * 1000])
            for s in seconds
        ] + [None, -1]
        column = pa.chunked_array([pa.array(ticks[:7], pa.int64()), pa.array(ticks[7:], pa.int64())]).cast(kind)
        assert time_texts(column).to_pylist() == [None if v is None else str(v) for v in column.to_pylist()], kind
    for kind, per_day in [(pa.time32("s"), 86400), (pa.time32("ms"), 86400 * 10**3), (pa.time64("us"), 86400 * 10**6)]:
        ticks = [rng.randrange(per_day) // rng.choice([1, 1000]) * rng.choice([1, 1000]) % per_day for _ in range(3000)]
        column = pa.chunked_array([pa.array([*ticks, None], pa.int32() if kind.bit_width == 32 else pa.int64())]).cast(
            kind
        )
        assert time_texts(column).to_pylist() == [None if v is None else str(v) for v in column.to_pylist()], kind


def test_set_aside_rows_equal_the_per_row_lists_they_were_made_from() -> None:
    rng = random.Random(2)
    for count in (0, 1, 7):
        ids = [f"r{n}" for n in range(count)]
        sources = source_array("files", "a.jsonl", list(range(1, count + 1)))
        texts = [rng.choice([None, "", "x", "é", "dup of r1"]) for _ in range(count)]
        for reasons in ("exact_duplicate", [rng.choice(["schema", "missing_column"]) for _ in range(count)]):
            for optional in (None, texts, pa.array(texts, pa.string())):
                table = set_aside_rows(
                    pa.array(ids, pa.string()), sources, "st", "duplicate", reasons, optional, optional, optional
                )
                each = [reasons] * count if isinstance(reasons, str) else reasons
                listed = texts if optional is not None else [None] * count
                expected = [
                    {
                        "id": i,
                        "stage": "st",
                        "outcome": "duplicate",
                        "reason": r,
                        "detail": t,
                        "record": t,
                        "duplicate_of": t,
                    }
                    for i, r, t in zip(ids, each, listed, strict=True)
                ]
                assert table.drop_columns(["source"]).to_pylist() == expected
                assert table.schema == SET_ASIDE_SCHEMA and table["source"].combine_chunks().equals(sources)
