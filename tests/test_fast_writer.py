"""The writer's column-at-a-time paths give exactly what the per-record code gave: split sides,
shard cuts and record counts, lineage rows."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
import xxhash

from curation.formats import output_format
from curation.split import NO_VALUE, Splitter
from curation.writer import DatasetWriter, ShardSeries

# Ids and keys that stress the byte-level join: non-ASCII, empty, odd whitespace, the separator itself, long.
TRICKY = ["", " ", "\t\n", "é", "日本語", "\U0001f600", "a\x1fb", "x" * 5000, "  padded  ", "\u00a0nbsp", '\\"q"']
KEYS = TRICKY + [f"id-{i}" for i in range(2000)]


def _old_side(seed: str, key: str, fraction: float) -> bool:
    """The per-record formula the splits were published with."""
    return xxhash.xxh3_64_intdigest(seed.encode() + b"\x1f" + key.encode()) < int(fraction * 2**64)


@pytest.mark.parametrize("seed", ["curation", "", "sé\x1fed"])
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.999999])
def test_plain_split_sides_equal_the_per_record_formula(seed: str, fraction: float) -> None:
    ids = pa.chunked_array([pa.array(KEYS[:7], pa.large_string()), pa.array(KEYS[7:], pa.large_string())])
    splitter = Splitter(fraction, seed)
    sides = splitter.assign(pa.table({"id": ids}))
    expected = [_old_side(seed, key, fraction) for key in KEYS]
    assert sides.to_pylist() == expected
    assert splitter.report()["records"] == {"train": expected.count(False), "validation": expected.count(True)}


def test_null_ids_are_refused_rather_than_lost() -> None:
    with pytest.raises(ValueError, match="null"):
        Splitter(0.5, "s").assign(pa.table({"id": pa.array(["a", None])}))


def test_grouped_split_sides_equal_the_per_record_formula() -> None:
    rng = random.Random(3)
    groups = [rng.choice([None, "", "é", "acme", 7, "x" * 300]) for _ in KEYS]
    splitter = Splitter(0.3, "seed", group_by="customer")
    sides = splitter.assign(
        pa.table({"id": KEYS, "customer": pa.array([None if g is None else str(g) for g in groups])})
    )
    keys = [key if group is None else f"g\x1f{group}" for key, group in zip(KEYS, groups, strict=True)]
    expected = [_old_side("seed", key, 0.3) for key in keys]
    assert sides.to_pylist() == expected
    report = splitter.report()
    assert report["groups"] == {
        "train": len({k for k, s in zip(keys, expected, strict=True) if not s}),
        "validation": len({k for k, s in zip(keys, expected, strict=True) if s}),
    }


def test_stratified_sides_follow_each_labels_counter() -> None:
    rng = random.Random(5)
    labels = [rng.choice(["billing", "cards", "é", None]) for _ in KEYS]
    splitter = Splitter(0.2, "seed", stratify_by="label")
    batch = pa.table({"id": KEYS, "label": labels})
    sides = splitter.assign(batch.slice(0, 900)).to_pylist() + splitter.assign(batch.slice(900)).to_pylist()
    # The k-th record of a label goes to validation when floor(k * f + phase) steps up.
    seen: dict[str, int] = {}
    expected = []
    for label in (NO_VALUE if v is None else v for v in labels):
        phase = xxhash.xxh3_64_intdigest(b"seed\x1f" + f"label\x1f{label}".encode()) / 2**64
        seen[label] = seen.get(label, 0) + 1
        expected.append(math.floor(seen[label] * 0.2 + phase) > math.floor((seen[label] - 1) * 0.2 + phase))
    assert sides == expected


def _lines(rng: random.Random, count: int) -> list[bytes]:
    """JSON lines from empty to longer than the smallest shard."""
    sizes = [0, 1, 30, 600, 3000]
    return [json.dumps({"t": "é" * rng.choice(sizes)}, ensure_ascii=False).encode() + b"\n" for _ in range(count)]


@pytest.mark.parametrize("max_bytes", [1024, 4096, 1 << 20])
def test_shards_are_cut_the_same_whether_lines_are_counted_or_given(tmp_path: Path, max_bytes: int) -> None:
    rng = random.Random(max_bytes)
    writes = [_lines(rng, rng.choice([1, 2, 5, 40])) for _ in range(30)]
    fs = pafs.LocalFileSystem()
    counted = ShardSeries(fs, str(tmp_path), "counted", max_bytes)
    given = ShardSeries(fs, str(tmp_path), "given", max_bytes)
    for lines in writes:
        assert counted.write(b"".join(lines)) == [
            (path.replace("given", "counted"), first) for path, first in given.write(b"".join(lines), len(lines))
        ]
    counted.close(), given.close()
    assert [s.model_dump(exclude={"path"}) for s in counted.shards] == [
        s.model_dump(exclude={"path"}) for s in given.shards
    ]
    assert len(given.shards) > 1 or max_bytes == 1 << 20
    assert sum(s.records for s in given.shards) == sum(map(len, writes))
    for shard in given.shards:
        body = (tmp_path / shard.path).read_bytes()
        assert body.count(b"\n") == shard.records and len(body) == shard.bytes


def test_lineage_rows_point_at_the_line_that_holds_each_record(tmp_path: Path) -> None:
    """Small shards, so batches straddle shard ends: every lineage row names the shard and line of its record."""
    writer = DatasetWriter(str(tmp_path), "d", output_format("text", "document"), 1024, 0.3, "seed")
    rng = random.Random(1)
    expected = {}
    for batch_number in range(6):
        ids = [f"r{batch_number}-{i}" for i in range(rng.choice([1, 7, 60, 90]))]
        texts = [f"{i} " + "ü" * rng.choice([0, 5, 200]) for i in ids]
        expected.update(zip(ids, texts, strict=True))
        sources = [{"connector": "files", "uri": "in.jsonl", "line": n, "page": None} for n in range(len(ids))]
        writer.write(pa.table({"id": ids, "source": sources, "text": texts}))
    for series in (*writer.splits.values(), writer.lineage):
        series.close()
    assert sum(len(series.shards) for series in writer.splits.values()) > 3
    rows = [json.loads(line) for s in writer.lineage.shards for line in (Path(writer.staging) / s.path).open()]
    assert sorted(row["id"] for row in rows) == sorted(expected)
    files: dict[str, list[str]] = {}
    for row in rows:
        if row["shard"] not in files:
            files[row["shard"]] = (Path(writer.staging) / row["shard"]).read_text().splitlines()
        assert json.loads(files[row["shard"]][row["line"] - 1]) == {"text": expected[row["id"]]}
    assert list(rows[0]) == ["shard", "line", "id", "source"]
