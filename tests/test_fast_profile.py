"""The profile stage's length bins, read from the string buffers, equal what the per-value Arrow kernels gave."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curation.report import Profile, length_bin

# ASCII, two-, three- and four-byte characters, and spaces.
ALPHABET = ["a", "Z", " ", "\t", "é", "ß", "Ж", "€", "中", "\u2028", "\U0001f600", "\U00010348"]


def reference_stats(batch: pa.Table, fields: list[str], label: str | None = "label") -> dict[str, int]:
    """Profile's figures as they were computed before: utf8_length and value_counts per field, binned in Python."""
    stats: Counter[str] = Counter({"records": batch.num_rows})
    for field in (f for f in fields if f in batch.column_names):
        lengths = pc.fill_null(pc.utf8_length(pc.cast(batch[field], pa.string())), 0)
        counted = pc.value_counts(lengths)
        for length, count in zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(), strict=True):
            stats[f"chars:{field}:{length_bin(length)}"] += count
    if label and label in batch.column_names:
        counted = pc.value_counts(batch[label])
        for value, count in zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(), strict=True):
            if value is not None:
                stats[f"label:{value}"] += count
    return dict(stats)


def _texts(rng: random.Random, count: int, ascii_only: bool) -> list[str | None]:
    alphabet = ALPHABET[:4] if ascii_only else ALPHABET
    # Lengths across many power-of-two bins, bin edges included (0, 1, 2, 3, 4, 5, ..., 1024, 1025).
    lengths = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1023, 1024, 1025]
    return [None if rng.random() < 0.1 else "".join(rng.choices(alphabet, k=rng.choice(lengths))) for _ in range(count)]


def _column(rng: random.Random, texts: list[Any], kind: pa.DataType) -> pa.ChunkedArray:
    """The texts in a few chunks, some sliced (a chunk's offset past 0), of type ``kind``."""
    array = pa.array(["pad", *texts, "pad"], kind).slice(1, len(texts))
    cuts = sorted(rng.sample(range(len(texts) + 1), k=min(3, len(texts) + 1)))
    bounds = [0, *cuts, len(texts)]
    return pa.chunked_array([array.slice(a, b - a) for a, b in itertools.pairwise(bounds)], kind)


def test_profile_equals_the_per_value_kernels_on_random_text() -> None:
    rng = random.Random(7)
    for trial in range(40):
        count = rng.choice([0, 1, 5, 300])
        kind = rng.choice([pa.string(), pa.large_string(), pa.string_view()])
        prompt = _column(rng, _texts(rng, count, ascii_only=trial % 2 == 0), kind)
        labels = [rng.choice([None, "billing", "cärds", "中文"]) for _ in range(count)]
        batch = pa.table(
            {
                "prompt": prompt,
                "completion": pa.array(_texts(rng, count, ascii_only=False), pa.string()),
                "label": pa.array(labels, pa.string()),
            }
        )
        fields = ["prompt", "completion", "text"]  # "text" is not in the batch
        assert Profile(fields)(batch).stats == reference_stats(batch, fields), (trial, kind)


def test_profile_counts_nulls_and_empty_text_as_length_zero() -> None:
    batch = pa.table(
        {
            "prompt": pa.array([None, "", "", "x", None], pa.string()),
            "completion": pa.nulls(5, pa.string()),
            "label": pa.nulls(5, pa.string()),
        }
    )
    stats = Profile(["prompt", "completion"])(batch).stats
    assert stats == {"records": 5, "chars:prompt:0": 4, "chars:prompt:1": 1, "chars:completion:0": 5}
    assert stats == reference_stats(batch, ["prompt", "completion"])


def test_a_null_slot_spanning_bytes_still_counts_as_length_zero() -> None:
    """Arrow lets a null's offsets span bytes (a kernel may leave them): the length read from the offsets is not used."""
    for text in ("abcde", "abcdé"):  # ASCII (lengths from the offsets) and not (Arrow's kernel)
        data = text.encode()
        offsets = pa.array([0, 3, len(data)], pa.int32()).buffers()[1]
        validity = pa.array([False, True]).buffers()[1]  # the first value is null though it spans "abc"
        values = pa.StringArray.from_buffers(2, offsets, pa.py_buffer(data), validity, null_count=1)
        batch = pa.table({"prompt": values})
        assert (
            Profile(["prompt"])(batch).stats
            == reference_stats(batch, ["prompt"])
            == {
                "records": 2,
                "chars:prompt:0": 1,
                "chars:prompt:2": 1,
            }
        )


def test_a_column_of_another_type_is_counted_as_its_text() -> None:
    batch = pa.table({"prompt": pa.array([1, 22, None, 4444], pa.int64()), "label": pa.array([1, None, 1, 2])})
    assert Profile(["prompt"])(batch).stats == reference_stats(batch, ["prompt"])
