"""The writer's column-at-a-time paths give exactly what the per-record code gave: split sides,
shard cuts and record counts, lineage rows."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import xxhash

from curation.formats import output_format
from curation.split import NO_VALUE, Splitter
from curation.writer import LINEAGE_ARROW, DatasetWriter, LineageSeries, ShardSeries

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
    groups = [rng.choice([None, "", "é", "acme", 7, "x" * 300, "(none)"]) for _ in KEYS]  # "(none)" is a key
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
    named = [NO_VALUE if v is None else v for v in labels]
    assert splitter.report()["labels"] == {
        side: dict(sorted(Counter(label for label, s in zip(named, sides, strict=True) if s == to).items()))
        for side, to in (("train", False), ("validation", True))
    }


def _lines(rng: random.Random, count: int) -> list[bytes]:
    """JSON lines from empty to longer than the smallest shard."""
    sizes = [0, 1, 30, 600, 3000]
    return [json.dumps({"t": "é" * rng.choice(sizes)}, ensure_ascii=False).encode() + b"\n" for _ in range(count)]


Write = Callable[[ShardSeries, list[bytes], random.Random], list[tuple[str, int]]]


def _written_two_ways(
    tmp_path: Path, max_bytes: int, ways: dict[str, Write]
) -> tuple[list[list[bytes]], ShardSeries, ShardSeries]:
    """The same random writes to a ShardSeries per way (the series named by it): both place each write's pieces
    alike and cut the same shards. The writes, and the two series."""
    rng = random.Random(max_bytes)
    writes = [_lines(rng, rng.choice([1, 2, 5, 40])) for _ in range(30)]
    fs = pafs.LocalFileSystem()
    (one, write_one), (other, write_other) = ways.items()
    first, second = ShardSeries(fs, str(tmp_path), one, max_bytes), ShardSeries(fs, str(tmp_path), other, max_bytes)
    for lines in writes:
        placed = write_one(first, lines, rng)
        assert placed == [(path.replace(other, one), line) for path, line in write_other(second, lines, rng)]
    first.close(), second.close()
    assert [s.model_dump(exclude={"path"}) for s in first.shards] == [
        s.model_dump(exclude={"path"}) for s in second.shards
    ]
    assert len(second.shards) > 1 or max_bytes == 1 << 20
    return writes, first, second


@pytest.mark.parametrize("max_bytes", [1024, 4096, 1 << 20])
def test_shards_are_cut_the_same_whether_lines_are_counted_or_given(tmp_path: Path, max_bytes: int) -> None:
    writes, _, given = _written_two_ways(
        tmp_path,
        max_bytes,
        {
            "counted": lambda series, lines, _: series.write(b"".join(lines)),
            "given": lambda series, lines, _: series.write(b"".join(lines), len(lines)),
        },
    )
    assert sum(s.records for s in given.shards) == sum(map(len, writes))
    for shard in given.shards:
        body = (tmp_path / shard.path).read_bytes()
        assert body.count(b"\n") == shard.records and len(body) == shard.bytes


def test_lines_written_after_one_longer_than_a_shard_start_the_next_shard(tmp_path: Path) -> None:
    # The long line's shard is over its bound: the next write's room was negative, which Python's rfind
    # reads from the end, and the shard took the whole write (41 kB in a 1 kB shard).
    series = ShardSeries(pafs.LocalFileSystem(), str(tmp_path), "train", 1024)
    long, short = b'"' + b"x" * 2000 + b'"\n', b'"' + b"y" * 400 + b'"\n'
    assert series.write(long, 1) == [("train/part-00000.jsonl", 1)]
    assert series.write(short * 4) == [("train/part-00001.jsonl", 1), ("train/part-00002.jsonl", 1)]
    series.close()
    assert [(s.records, s.bytes) for s in series.shards] == [(1, len(long)), (2, 2 * len(short)), (2, 2 * len(short))]


def _line_column(rng: random.Random, lines: list[bytes]) -> pa.ChunkedArray:
    """The lines as ``ndjson_lines`` gives them: a string column, a value a line, in chunks, some sliced
    out of a longer array (their offsets do not start at 0)."""
    chunks, at = [], 0
    while at < len(lines):
        size = rng.randrange(1, len(lines) - at + 1)
        before, after = [b"{}\n"] * rng.choice([0, 3]), [b"{}\n"] * rng.choice([0, 2])
        values = [line.decode() for line in before + lines[at : at + size] + after]
        chunks.append(pa.array(values, rng.choice([pa.string(), pa.large_string()])).slice(len(before), size))
        at += size
    return pa.chunked_array([chunk.cast(pa.string()) for chunk in chunks], pa.string())


@pytest.mark.parametrize("max_bytes", [1024, 4096, 1 << 20])
def test_shards_are_cut_the_same_from_a_column_of_lines_as_from_their_bytes(tmp_path: Path, max_bytes: int) -> None:
    # The writer hands the encoder's column of lines over without joining its bytes: its offsets give the
    # cuts and counts the bytes gave, also where a write's chunks end inside a shard or one line fills one.
    _, from_column, _ = _written_two_ways(
        tmp_path,
        max_bytes,
        {
            "column": lambda series, lines, rng: series.write(_line_column(rng, lines), len(lines)),
            "bytes": lambda series, lines, _: series.write(b"".join(lines)),
        },
    )
    for shard in from_column.shards:
        assert (tmp_path / shard.path).read_bytes() == (tmp_path / shard.path.replace("column", "bytes")).read_bytes()


def test_lineage_rows_point_at_the_line_that_holds_each_record(tmp_path: Path) -> None:
    """Small shards, so batches straddle shard ends: every lineage row names the shard and line of its record."""
    # Instruction pairs: a text split is one file whatever its size (JumpStart reads one per channel).
    writer = DatasetWriter(str(tmp_path), "d", output_format("jumpstart-instruction", "instruction"), 1024, 0.3, "s")
    rng = random.Random(1)
    expected = {}
    for batch_number in range(6):
        ids = [f"r{batch_number}-{i}" for i in range(rng.choice([1, 7, 60, 90]))]
        texts = [f"{i} " + "ü" * rng.choice([0, 5, 200]) for i in ids]
        expected.update(zip(ids, texts, strict=True))
        sources = [{"connector": "files", "uri": "in.jsonl", "line": n, "page": None} for n in range(len(ids))]
        writer.write(pa.table({"id": ids, "source": sources, "prompt": texts, "completion": ids}))
    writer.flush()
    for series in (*writer.splits.values(), writer.lineage):
        series.close()
    assert sum(len(series.shards) for series in writer.splits.values()) > 3
    rows = [row for s in writer.lineage.shards for row in pq.read_table(Path(writer.staging) / s.path).to_pylist()]
    assert sorted(row["id"] for row in rows) == sorted(expected)
    files: dict[str, list[str]] = {}
    for row in rows:
        if row["shard"] not in files:
            files[row["shard"]] = (Path(writer.staging) / row["shard"]).read_text().splitlines()
        assert json.loads(files[row["shard"]][row["line"] - 1]) == {
            "prompt": expected[row["id"]],
            "completion": row["id"],
        }
    assert list(rows[0]) == ["shard", "line", "id", "source", "carried_from"]
    assert {row["carried_from"] for row in rows} == {None}  # the run's own rows: none was carried


# --- the report ------------------------------------------------------------------------------------

FIGURES = {
    "dataset": "d",
    "version": 3,
    "created_at": "2026-01-01T00:00:00+00:00",
    "counts": {"input": 1_000_000, "written": 899_413, "filtered": 12, "duplicate": 100_575, "quarantined": 0},
    "reasons": {},
    "removed_by_stage": [
        {"stage": "exact_dedup", "outcome": "duplicate", "reason": "exact_duplicate", "records": 100_563},
        {"stage": "expectations", "outcome": "filtered", "reason": "in_set:label <'é'> & " + "x" * 80, "records": 12},
    ],
    "duplicate_cluster_sizes": {"2": 500, "3": 40, "17": 1},
    "lengths": {"prompt": {"16": 3, "32": 400, "64": 90_000}, "completion": {"64": 300_000, "128": 599_413}},
    "labels": {**{f"label {i}": 1000 * i for i in range(11)}, "it's <b>": 7},
    "pii": {"pii": {"PERSON": 4000, "EMAIL_ADDRESS": 2, "note": "not a count"}},
    "stage_stats": {},
    "splits": {},
    "carried": {},
}


def test_each_plot_carries_its_figures_in_chromium(tmp_path: Path) -> None:
    """Every bar (and length point) is drawn with its label and value, and the value is written as text."""
    from curation.report import plots, render_html
    from tests.conftest import chromium

    page = tmp_path / "report.html"
    page.write_text(render_html(FIGURES, plots(FIGURES)))
    with chromium() as browser:
        tab = browser.new_page()
        tab.goto(page.as_uri())
        found = tab.eval_on_selector_all(
            "figure.plot",
            """figs => figs.map(f => ({
                name: f.dataset.plot,
                title: f.querySelector('svg > title').textContent,
                named: f.querySelector('svg').getAttribute('aria-labelledby') === f.querySelector('svg > title').id,
                marks: [...f.querySelectorAll('.bar, .point')].map(b => {
                    const box = b.getBoundingClientRect();
                    return [b.dataset.label, Number(b.dataset.value), box.width, box.height];
                }),
                values: [...f.querySelectorAll('text.value')].map(t => t.textContent),
                axes: [...f.querySelectorAll('text.axis-label')].map(t => t.textContent),
            }))""",
        )
    plotted = {f["name"]: f for f in found}
    counts = FIGURES["counts"]
    expected = {  # plot -> (its figures, the names on its axes)
        "outcomes": ({n: counts[n] for n in ("written", "filtered", "duplicate", "quarantined")}, ["records"]),
        "removed": ({f"{r['stage']}: {r['reason']}": r["records"] for r in FIGURES["removed_by_stage"]}, ["records"]),
        "lengths": (
            {
                f"{field} ≤{u}": bins.get(str(u), 0)
                for field, bins in FIGURES["lengths"].items()
                for u in (16, 32, 64, 128)
            },
            ["characters", "records"],
        ),
        "labels": (FIGURES["labels"], ["records"]),
        "clusters": (FIGURES["duplicate_cluster_sizes"], ["size", "clusters"]),
        "pii": ({"PERSON": 4000, "EMAIL_ADDRESS": 2}, ["found"]),
    }
    assert list(plotted) == list(expected)
    for name, (figure, axes) in expected.items():
        plot = plotted[name]
        assert {label: value for label, value, _, _ in plot["marks"]} == figure, name
        assert sorted(plot["values"]) == sorted(f"{v:,}" for v in figure.values()), name
        assert plot["named"] and plot["title"] and plot["axes"] == axes, name
        if name != "lengths":  # bars are to scale: a bigger figure, a longer bar
            horizontal = len({round(height, 2) for _, _, _, height in plot["marks"]}) == 1
            size = {label: width if horizontal else height for label, _, width, height in plot["marks"]}
            in_order = [size[label] for label in sorted(figure, key=figure.get)]
            assert in_order == sorted(in_order) and in_order[-1] > 100, name
    assert plotted["outcomes"]["title"] == "What happened to 1,000,000 input records"


def test_the_reports_set_aside_columns_equal_the_published_rows(tmp_path: Path) -> None:
    """The writer keeps what the report counts of each set-aside table; it equals a parse of the rows written."""
    import polars as pl

    from curation.report import SET_ASIDE_COLUMNS, set_aside_frame

    # Instruction pairs: a text split is one file whatever its size (JumpStart reads one per channel).
    writer = DatasetWriter(str(tmp_path), "d", output_format("jumpstart-instruction", "instruction"), 1024, 0.3, "s")
    assert set_aside_frame(writer.set_aside_reported).columns == list(SET_ASIDE_COLUMNS)
    writer.scrub = lambda table: table.set_column(4, "reason", pa.array(["[scrubbed]"] * table.num_rows))
    source = {"connector": "files", "uri": "é", "line": 1, "page": None}
    writer.write_set_aside(
        pa.table(
            {
                "id": ["a", "b", "c"],
                "source": [source] * 3,
                "stage": ["exact_dedup", "s\t", "日本"],
                "outcome": ["duplicate", "filtered", "quarantined"],
                "reason": ["x", "y", "z"],
                "record": [None, '{"q": "\\n"}', ""],
                "duplicate_of": ["d", None, ""],
            }
        )
    )
    writer.scrub = None
    writer.write_set_aside(pa.table({"stage": pa.array(["expectations"], pa.large_string()), "outcome": ["filtered"]}))
    writer.flush()
    writer.set_aside.close()
    published = pl.concat(
        [
            pl.read_ndjson(Path(writer.staging) / shard.path, schema=dict.fromkeys(SET_ASIDE_COLUMNS, pl.String))
            for shard in writer.set_aside.shards
        ]
    )
    kept = set_aside_frame(writer.set_aside_reported)
    assert kept.equals(published) and kept["reason"].to_list() == ["[scrubbed]"] * 3 + [None]
    assert kept["stage"].to_list() == ["exact_dedup", "s\t", "日本", "expectations"]


def test_a_large_set_aside_table_is_written_in_pieces_with_the_bytes_of_one(tmp_path: Path) -> None:
    from curation.ndjson import to_ndjson
    from curation.writer import SET_ASIDE_PIECE_ROWS

    writer = DatasetWriter(str(tmp_path), "d", output_format("text", "document"), 1 << 30, 0.3, "seed")
    count = 2 * SET_ASIDE_PIECE_ROWS + 5
    table = pa.table({"id": [f"{n:032x}" for n in range(count)], "detail": [f"duplicate of {n}" for n in range(count)]})
    pieces = []
    # The lines as bytes, or as a column of one line a value (``ndjson_lines``).
    as_bytes = lambda data: data if isinstance(data, bytes) else "".join(data.to_pylist()).encode()  # noqa: E731
    writer.set_aside.write = lambda data, lines: pieces.append((as_bytes(data), lines))
    writer.write_set_aside(table)
    writer.flush()
    assert [lines for _, lines in pieces] == [SET_ASIDE_PIECE_ROWS, SET_ASIDE_PIECE_ROWS, 5]
    assert b"".join(data for data, _ in pieces) == to_ndjson(table)


@pytest.mark.parametrize("failing", [3, 10])  # a write in the middle of the run, and the run's last one
def test_a_write_that_fails_on_the_writer_thread_fails_the_run_and_leaves_nothing(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, failing: int
) -> None:
    from curation.pipeline import run_recipe
    from curation.published import published_versions
    from schemas.config import load_recipe
    from tests.helpers import write_jsonl, write_recipe

    write_jsonl(workdir / "docs.jsonl", [{"text": f"document {i}"} for i in range(500)])
    recipe = load_recipe(
        write_recipe(
            workdir,
            {
                "dataset": "docs",
                "sources": [{"path": "docs.jsonl"}],
                "record": {"kind": "document"},
                "batch_rows": 50,  # 10 batches, all to train: 10 lineage writes
                "output": {"validation_fraction": 0.0},
            },
        )
    )
    original, original_lineage, calls = ShardSeries.write, LineageSeries.write, []

    def counted(self: ShardSeries, data: bytes, lines: int | None = None) -> list[tuple[str, int]]:
        calls.append(self.relative)
        return original(self, data, lines)

    def disk_full(self: LineageSeries, rows: pa.Table) -> None:
        calls.append(self.relative)
        if calls.count("lineage") == failing:
            raise OSError("No space left on device")
        original_lineage(self, rows)

    monkeypatch.setattr(ShardSeries, "write", counted)
    monkeypatch.setattr(LineageSeries, "write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_recipe(recipe)
    assert calls.count("lineage") == failing  # no lineage was written after the failure
    # The lineage's thread overlaps the writer's next job, which fails on the error before it hands the
    # lineage more (at most its own train shard written, to the staging the failed run removes); or publish.
    assert failing <= calls.count("train") <= min(failing + 1, 10)
    assert published_versions(str(workdir / "output"), "docs") == []
    assert not (workdir / "output" / "docs" / "_staging").exists()


# --- conversation formats ----------------------------------------------------------------------------


def _old_rows(name: str, batch: pa.Table, system_prompt: str | None) -> pa.Table:
    """The per-record renderers the conversation formats were published with: a dict per turn."""
    from curation.formats import BEDROCK_MESSAGE, BEDROCK_SCHEMA_VERSION, DIALOG_TURN, MESSAGE, TEXT_BLOCK

    pairs = list(zip(batch["prompt"].to_pylist(), batch["completion"].to_pylist(), strict=True))
    if name == "bedrock-conversation":
        system = [[{"text": system_prompt}] if system_prompt else [] for _ in pairs]
        messages = [
            [{"role": "user", "content": [{"text": p}]}, {"role": "assistant", "content": [{"text": c}]}]
            for p, c in pairs
        ]
        return pa.table(
            {
                "schemaVersion": pa.array([BEDROCK_SCHEMA_VERSION] * len(pairs), pa.string()),
                "system": pa.array(system, pa.list_(TEXT_BLOCK)),
                "messages": pa.array(messages, pa.list_(BEDROCK_MESSAGE)),
            }
        )
    turn_type, column = (DIALOG_TURN, "dialog") if name == "jumpstart-chat" else (MESSAGE, "messages")
    turns = []
    for prompt, completion in pairs:
        turn = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        if system_prompt:
            turn.insert(0, {"role": "system", "content": system_prompt})
        turns.append(turn)
    return pa.table({column: pa.array(turns, pa.list_(turn_type))})


@pytest.mark.parametrize("name", ["jumpstart-chat", "messages", "bedrock-conversation"])
@pytest.mark.parametrize("system_prompt", [None, "", 'Be brief: "quoted", ünïcode\n'])
def test_conversation_rows_equal_the_per_record_renderer(name: str, system_prompt: str | None) -> None:
    from curation.formats import FormatOptions
    from curation.ndjson import to_ndjson

    prompts = [*TRICKY, None, "last"]
    completions = [*reversed(TRICKY), "answer", None]
    halves = len(prompts) // 2
    batch = pa.table(  # two chunks, and large strings: what a concatenated or sliced batch can hold
        {
            "prompt": pa.chunked_array([prompts[:halves], prompts[halves:]]),
            "completion": pa.chunked_array([pa.array(completions, pa.large_string())]),
        }
    )
    fmt = output_format(name, "instruction", FormatOptions(system_prompt=system_prompt))
    for rows in (batch, batch.slice(3, 5), batch.slice(0, 0)):
        new, old = fmt.rows(rows), _old_rows(name, rows, system_prompt)
        assert new.schema == old.schema and new.to_pylist() == old.to_pylist()
        assert to_ndjson(new) == to_ndjson(old)


@pytest.mark.parametrize("max_rows", [1, 7, 1000])
def test_parquet_lineage_reads_back_the_rows_written_in_order_across_files(tmp_path: Path, max_rows: int) -> None:
    # Random rows (null pages, carried or not, text to escape, a batch split over files): what the readers get
    # is what was written, in order, and each file's manifest entry is its own rows, bytes and sha256.
    import hashlib

    from curation.writer import _lineage_files

    rng = random.Random(max_rows)
    series = LineageSeries(pafs.LocalFileSystem(), str(tmp_path), "lineage", 1 << 30)
    series.max_rows = max_rows
    written = []
    for _ in range(12):
        rows = [
            {
                "shard": f"train/part-{rng.randrange(3):05d}.jsonl",
                "line": rng.randrange(1, 10**6),
                "id": rng.choice([f"{rng.getrandbits(128):032x}", "", "ü" * rng.randrange(300), "a\nb"]),
                "source": {
                    "connector": rng.choice(["files", "sql"]),
                    "uri": rng.choice(["/in/a.jsonl", '/in/"ü\\n".pdf', "postgresql://h/db"]),
                    "line": rng.randrange(10**9),
                    "page": rng.choice([None, rng.randrange(500)]),
                },
                "carried_from": rng.choice([None, 1, 2]),
            }
            for _ in range(rng.choice([0, 1, 5, 40]))
        ]
        table = pa.Table.from_pylist(rows, schema=LINEAGE_ARROW)
        series.write(table if any(row["carried_from"] for row in rows) else table.drop_columns(["carried_from"]))
        written += rows
    series.close()
    read = [
        row
        for frame in _lineage_files(pafs.LocalFileSystem(), str(tmp_path), series.shards)
        for row in frame.to_dicts()
    ]
    assert read == written
    assert sum(shard.records for shard in series.shards) == len(written)
    assert all(0 < shard.records <= max_rows for shard in series.shards)
    for shard in series.shards:
        data = (tmp_path / shard.path).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (shard.bytes, shard.sha256)
        assert pq.read_table(tmp_path / shard.path).num_rows == shard.records
        # Ids without a length before each: zstd compresses their hex text alone, smaller and at less CPU.
        encodings = pq.ParquetFile(tmp_path / shard.path).metadata.row_group(0).column(2).encodings
        assert "DELTA_LENGTH_BYTE_ARRAY" in encodings


@pytest.mark.parametrize("stored", ["parquet", "jsonl"])
def test_lineage_read_for_some_columns_gives_those_of_the_whole_read(tmp_path: Path, stored: str) -> None:
    # A scheduled run's lookups read only the columns they use (``source.uri`` one field of the struct): what
    # they get is the whole read's columns, from Parquet lineage and from JSONL lineage of older versions.
    from curation.writer import _lineage_files
    from schemas.manifest import Shard

    rng = random.Random(stored)
    rows = [
        {
            "shard": f"train/part-{rng.randrange(3):05d}.jsonl",
            "line": line,
            "id": f"{rng.getrandbits(128):032x}",
            "source": {
                "connector": rng.choice(["files", "sql"]),
                "uri": rng.choice(["/in/a.jsonl", '/in/"ü\\n".pdf', None]),
                "line": rng.randrange(10**9),
                "page": rng.choice([None, rng.randrange(500)]),
            },
            "carried_from": rng.choice([None, 1]),
        }
        for line in range(1, 3001)
    ]
    if stored == "parquet":
        series = LineageSeries(pafs.LocalFileSystem(), str(tmp_path), "lineage", 1 << 30)
        series.max_rows = 1000
        series.write(pa.Table.from_pylist(rows, schema=LINEAGE_ARROW))
        series.close()
        shards = series.shards
    else:
        (tmp_path / "part-00000.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        shards = [Shard(path="part-00000.jsonl", records=len(rows), bytes=0, sha256="")]
    fs = pafs.LocalFileSystem()
    for columns in [("id",), ("shard", "id"), ("shard", "id", "source.uri"), ("source.page", "line")]:
        read = [row for frame in _lineage_files(fs, str(tmp_path), shards, columns) for row in frame.to_dicts()]
        expected = []
        for row in rows:
            picked = {}
            for name, value in row.items():
                inner = (
                    {key: part for key, part in value.items() if f"{name}.{key}" in columns} if name == "source" else {}
                )
                if name in columns or inner:
                    picked[name] = inner or value
            expected.append(picked)
        assert read == expected


@pytest.mark.parametrize("stored", ["parquet", "jsonl"])
def test_a_versions_own_lineage_rows_are_those_its_run_wrote(tmp_path: Path, stored: str) -> None:
    # A walk down a chain reads of each earlier version only the rows its run wrote (``carried_from`` null): a
    # Parquet file's row groups of carried rows are skipped, and a bad row is still named by its place in the file.
    from curation.writer import _lineage_files
    from schemas.manifest import Shard

    def rows(first: int, count: int, carried: int | None) -> list[dict]:
        source = {"connector": "files", "uri": "/in/a.jsonl", "line": None, "page": None}
        return [
            {"shard": "train/part-00000.jsonl", "line": n, "id": f"{n:032x}", "source": source, "carried_from": carried}
            for n in range(first, first + count)
        ]

    def stored_in(folder: Path) -> list[Shard]:
        if stored == "jsonl":
            (folder / "part-00000.jsonl").write_text(
                "".join(json.dumps(row) + "\n" for piece in pieces for row in piece)
            )
            return [Shard(path="part-00000.jsonl", records=150, bytes=0, sha256="")]
        series = LineageSeries(pafs.LocalFileSystem(), str(folder), "lineage", 1 << 30)
        for piece in pieces:  # a run writes its rows and a carry its own apart
            series.write(pa.Table.from_pylist(piece, schema=LINEAGE_ARROW))
        series.close()
        return series.shards

    fs = pafs.LocalFileSystem()
    pieces = [rows(1, 50, 3), rows(51, 20, None), rows(71, 40, 3), rows(111, 30, None), rows(141, 10, 3)]
    pieces[3][-1]["id"] = None  # row 140 of the file
    with pytest.raises(ValueError, match="lineage row 140 has no shard, line or id"):
        list(_lineage_files(fs, str(tmp_path), stored_in(tmp_path), ("id",), own=True))
    pieces[3][-1]["id"] = "f" * 32
    (again := tmp_path / "again").mkdir()
    frames = _lineage_files(fs, str(again), stored_in(again), ("id",), own=True)
    assert [i for frame in frames for i in frame["id"]] == [
        row["id"] for piece in (pieces[1], pieces[3]) for row in piece
    ]


@pytest.mark.parametrize("statistics", [True, False])
def test_a_shards_lineage_rows_are_read_past_row_groups_of_other_shards_alone(tmp_path: Path, statistics: bool) -> None:
    # A one-file format's carry reads each shard's rows in a pass of its own: a row group whose statistics say it
    # holds other shards alone is not read; one holding several shards interleaved, one between others' names, a
    # shard over several groups, and every group of a file without statistics are, and each shard gets its rows.
    from curation.writer import LINEAGE_PARQUET, _lineage_files, _row_groups_holding
    from schemas.manifest import Shard

    source = {"connector": "files", "uri": "/in/a.jsonl", "line": None, "page": None}
    groups = [["b", "b"], ["c", "b", "c"], ["a", "a"], ["c"], ["a", "c"], ["b"]]  # a shard's letter a row
    lines: Counter[str] = Counter()
    pieces = []
    for group in groups:
        piece = []
        for letter in group:
            lines[letter] += 1
            row = {"shard": f"{letter}/metadata.jsonl", "line": lines[letter], "id": f"{letter}{lines[letter]}"}
            piece.append({**row, "source": source, "carried_from": None})
        pieces.append(piece)
    options = {**LINEAGE_PARQUET, "write_statistics": ["shard", "line", "carried_from"] if statistics else False}
    with pq.ParquetWriter(tmp_path / "part-00000.parquet", LINEAGE_ARROW, **options) as out:
        for piece in pieces:
            out.write_table(pa.Table.from_pylist(piece, schema=LINEAGE_ARROW))
    shards = [Shard(path="part-00000.parquet", records=sum(map(len, groups)), bytes=0, sha256="")]
    fs = pafs.LocalFileSystem()
    metadata = pq.ParquetFile(tmp_path / "part-00000.parquet").metadata
    for letter, read in {"a": [2, 4], "b": [0, 1, 4, 5], "c": [1, 3, 4]}.items():
        shard = f"{letter}/metadata.jsonl"
        ids = [
            i
            for frame in _lineage_files(fs, str(tmp_path), shards, ("shard", "id"), of_shard=shard)
            for i in frame["id"]
        ]
        assert ids == [f"{letter}{n}" for n in range(1, lines[letter] + 1)]
        chosen = [group for _, group in _row_groups_holding(metadata, False, shard)]
        assert chosen == (read if statistics else list(range(len(groups))))


def test_carried_lineage_keeps_fields_that_first_appear_deep_in_a_file(tmp_path: Path) -> None:
    # Lineage is read as columns: a page number or ``carried_from`` seen only after the first rows
    # (a PDF after 150 text records, rows carried from an earlier version) must survive the read.
    from curation.writer import _lineage_files
    from schemas.manifest import Shard

    def row(line: int, page: int | None, **more: int) -> dict:
        source = {"connector": "files", "uri": f"/in/{'b.pdf' if page else 'a.txt'}", "line": line, "page": page}
        return {"shard": "train/part-00000.jsonl", "line": line, "id": f"{line:032x}", "source": source, **more}

    rows = [row(n, None) for n in range(1, 151)] + [row(151, 3, carried_from=1), row(152, 4)]
    (tmp_path / "part-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shard = Shard(path="part-00000.jsonl", records=len(rows), bytes=0, sha256="")
    (frame,) = _lineage_files(pafs.LocalFileSystem(), str(tmp_path), [shard])
    read = frame.to_dicts()
    assert [r["line"] for r in read] == list(range(1, 153))
    assert [r["source"]["page"] for r in read[-3:]] == [None, 3, 4]
    assert [r["carried_from"] for r in read[-3:]] == [None, 1, None]


def test_a_stratified_split_without_any_label_says_so(caplog: pytest.LogCaptureFixture) -> None:
    splitter = Splitter(0.2, "seed", stratify_by="label")
    splitter.assign(pa.table({"id": KEYS[:50], "label": pa.nulls(50, pa.string())}))
    with caplog.at_level("WARNING", logger="curation.split"):
        splitter.report()
    assert "no record has a value in 'label'" in caplog.text
    caplog.clear()
    labelled = Splitter(0.2, "seed", stratify_by="label")
    labelled.assign(pa.table({"id": KEYS[:50], "label": ["a", None] * 25}))
    with caplog.at_level("WARNING", logger="curation.split"):
        labelled.report()
    assert caplog.text == ""


def test_carried_lines_are_cut_at_newlines_alone_as_shards_number_them(tmp_path: Path) -> None:
    # A raw carriage return inside a line (a shard written by another tool) made two lines of one, so every
    # later line met the lineage row of the line before it.
    from curation.writer import _read_lines

    shard = tmp_path / "part.jsonl"
    shard.write_bytes(b'{"q":"Par\rcel"}\n{"q":"two"}\r\n{"q":"last"}')
    lines = list(_read_lines(pafs.LocalFileSystem(), str(shard)))
    assert lines == [b'{"q":"Par\rcel"}\n', b'{"q":"two"}\r\n', b'{"q":"last"}\n']


def test_a_failed_write_names_its_file_by_its_uri_and_an_s3_error_has_no_errno() -> None:
    # S3's errors carry no errno: re-raised with one, they read "[Errno None] cannot write bkt/out/...", the bucket
    # path without its scheme.
    from pyarrow import fs as pafs

    from curation.writer import writing

    s3 = pafs.S3FileSystem(anonymous=True, endpoint_override="http://127.0.0.1:9", region="us-east-1")
    with pytest.raises(OSError) as raised, writing("bkt/out/part-00000.jsonl", fs=s3):
        raise OSError("When uploading part for key 'out/part-00000.jsonl': AWS Error NETWORK_CONNECTION")
    assert str(raised.value) == (
        "cannot write s3://bkt/out/part-00000.jsonl: When uploading part for key 'out/part-00000.jsonl': "
        "AWS Error NETWORK_CONNECTION"
    )
    with pytest.raises(OSError) as raised, writing("/data/out/part-00000.jsonl", " (full)"):
        raise OSError(28, "Error writing bytes to file")
    assert raised.value.errno == 28
    assert str(raised.value) == "[Errno 28] cannot write /data/out/part-00000.jsonl: No space left on device (full)"
