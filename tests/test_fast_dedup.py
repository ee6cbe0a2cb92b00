"""Exact dedup's column kernels give exactly what its per-record formulas gave: the content hashes are
persisted in the cross-run index, and set-aside rows are published and compared across runs."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from curation.executors.envelope import pack
from curation.stages import dedup
from curation.stages.dedup import ExactDedup, _all_distinct, _duplicated, normalised_text
from curation.stages.dedup_index import (
    _BYTE_OF_DIGITS,
    CrossRunDedup,
    SignatureIndex,
    _hex_ids,
    _id_bytes,
    _packed,
    published_signatures,
)
from curation.stages.duplicates import resolve_duplicates
from schemas.records import SOURCE_TYPE, set_aside_rows

TRICKY = [
    "",
    " ",
    "Plain ASCII",
    "two  spaces",
    "tab\there",
    "line\nbreak\r\nand\fform feed",
    "vertical\x0btab and \x01 control",
    "  leading and trailing \t",
    "ÉCOLE Straße ΣΊΣΥΦΟΣ İstanbul",  # final sigma, dotted capital I
    "ﬁne ｆｕｌｌ　ｗｉｄｔｈ",  # ligature, full-width letters and ideographic space (NFKC)
    "no\u00a0break\u00a0 space",  # NFKC makes a space that then meets another
    "e\u0301 combining",
    "\u2028line separator\u2029",
    "emoji \U0001f600  end ",
    "\x1c\x1d\x1e unit\x1fseparators",
    "x" * 5000 + "  " + "Y" * 3000,
]


def reference_text(values: list[str | None]) -> str:
    """The old normalisation of one row: fields trimmed (with two or more) and joined, NFKC, lower,
    ``\\s+`` folded, trimmed."""
    if len(values) > 1:
        values = pc.utf8_trim_whitespace(pa.array(values, pa.string())).to_pylist()
    joined = pa.array(["\x1f".join(v if v is not None else "" for v in values)], pa.string())
    text = pc.utf8_lower(pc.utf8_normalize(joined, "NFKC"))
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(text, r"\s+", " "))[0].as_py()


def reference_hashes(rows: list[list[str | None]]) -> list[int]:
    """The old content hash: xxh3-64 of each row's normalised UTF-8 bytes, in a Python loop."""
    return [xxhash.xxh3_64_intdigest(reference_text(values).encode()) for values in rows]


def _batch(prompts: list[str | None], completions: list[str | None], chunks: int = 1) -> pa.Table:
    count = len(prompts)
    step = -(-count // chunks) or 1

    def chunked(values: list[str | None]) -> pa.ChunkedArray:
        return pa.chunked_array(
            [pa.array(values[i : i + step], pa.string()) for i in range(0, count, step)], pa.string()
        )

    return pa.table(
        {
            "id": [f"r{i}" for i in range(count)],
            "source": pa.array([{"connector": "files", "uri": "a", "line": i, "page": None} for i in range(count)]),
            "prompt": chunked(prompts),
            "completion": chunked(completions),
        }
    ).cast(
        pa.schema([("id", pa.string()), ("source", SOURCE_TYPE), ("prompt", pa.string()), ("completion", pa.string())])
    )


def _hashes(batch: pa.Table) -> list[int]:
    return pc.list_flatten(ExactDedup(["prompt", "completion"]).signatures(batch)["keys"]).to_pylist()


def test_content_hashes_equal_the_per_record_xxhash_of_the_old_normalisation() -> None:
    rng = random.Random(5)
    prompts: list[str | None] = [*TRICKY, None, "ascii", None]
    completions: list[str | None] = [rng.choice(TRICKY) for _ in TRICKY] + ["x", None, None]
    rows = [[p, c] for p, c in zip(prompts, completions, strict=True)]
    expected = reference_hashes(rows)
    assert _hashes(_batch(prompts, completions)) == expected
    assert _hashes(_batch(prompts, completions, chunks=4)) == expected
    # A slice: the skipped rows' bytes (non-ASCII, double spaces) stay in the buffers, never in the values.
    assert _hashes(_batch(prompts, completions).slice(3, 6)) == expected[3:9]
    # One field is hashed as it comes (no join makes a new array): the checks must read the slice's
    # bytes, not those of the rows before it (plain ASCII with nothing to fold).
    texts = ["plain", "ascii", "x  Y", "ÉCOLE ﬁ", "a\tb"]
    one_field = pa.table({"id": ["a", "b", "c", "d", "e"], "source": pa.nulls(5, SOURCE_TYPE), "text": texts})
    keys = ExactDedup(["text"]).signatures(one_field.slice(2, 3))["keys"]
    assert pc.list_flatten(keys).to_pylist() == reference_hashes([[t] for t in texts[2:]])
    # All-ASCII batches take the ASCII shortcuts: with and without anything to fold.
    for ascii_rows in (
        [["Hello World", "Fine"], ["a b", "c"], ["", ""]],
        [["Hello  World", "x\ty"], ["A\nB", " c "], ["\x0b", "\x01"]],
    ):
        prompts, completions = [r[0] for r in ascii_rows], [r[1] for r in ascii_rows]
        assert _hashes(_batch(prompts, completions)) == reference_hashes(ascii_rows)


def test_the_byte_checks_never_skip_a_fold() -> None:
    # Two spaces at an odd and at an even byte offset, a space that meets one of the next value only
    # (a needless fold: same text), a tab as the very last byte, and values that are all empty.
    for texts in (
        ["ab  c"],
        ["a  bc"],
        ["x ", " y"],
        ["abc\t"],
        ["a\tb"],
        ["a\rb"],
        ["", ""],
        ["\u00e9  x", "\u00e9\u00a0 x"],
    ):
        fast = normalised_text(pa.table({"t": pa.array(texts, pa.string())}), ["t"], normalize=True)
        assert fast.to_pylist() == [reference_text([t]) for t in texts], texts


def reference_ascii_and_folding(text: pa.Array | pa.ChunkedArray) -> tuple[bool, bool]:
    """The checks as one pass over each chunk's bytes each (before they went block by block): ASCII, and
    a byte below 14 or two spaces at an even or an odd offset."""
    ascii, fold = True, False
    for chunk in text.chunks if isinstance(text, pa.ChunkedArray) else [text]:
        values = "".join(v or "" for v in chunk.to_pylist()).encode()  # a null holds no bytes (pa.array)
        ascii &= values.isascii()
        fold |= any(b < 14 for b in values) or b"  " in values
    return ascii, fold


def test_the_blocked_checks_equal_one_pass_over_the_bytes_at_every_block_boundary(monkeypatch) -> None:
    rng = random.Random(11)
    pieces = ["a", "B", " ", "  ", "\t", "\n", "\x0b", "\x1f", "é", "Σ", "\u00a0", "\u3000", "\U0001f600", "~"]

    def value() -> str | None:
        return rng.choice([None, "", *["".join(rng.choices(pieces, k=rng.randrange(1, 9)))] * 6])

    for block in (1, 2, 3, 4, 5, 8, 13, 1 << 19):
        monkeypatch.setattr(dedup, "_BLOCK", block)
        for _ in range(100):
            values = [value() for _ in range(rng.randrange(0, 7))]
            kind = rng.choice([pa.string(), pa.large_string()])
            cut = rng.randrange(len(values) + 1)
            text = pa.chunked_array([pa.array(values[:cut], kind), pa.array(values[cut:], kind)], kind)
            start = rng.randrange(len(values) + 1)
            sliced = pa.array(values, kind).slice(start)  # the bytes before the slice are never read
            for column in (text, sliced):
                ascii, fold = reference_ascii_and_folding(column)
                # Text that is not ASCII is folded (or not) as NFKC makes it: True says "look again".
                assert dedup._ascii_and_folding(column) == (ascii, fold or not ascii), (block, values, start)
                assert dedup._may_need_folding(column) == fold, (block, values, start)
            rows = [[rng.choice(values or [""]), v] for v in values]
            batch = _batch([r[0] for r in rows], [r[1] for r in rows], chunks=rng.choice([1, 2, 3]))
            fast = normalised_text(batch, ["prompt", "completion"], True).to_pylist()
            assert fast == [reference_text(r) for r in rows], (block, rows)


# Every character Arrow's utf8_trim_whitespace takes off an edge (the separators 0x1c-0x1f among them).
TRIMMED = [c for c in map(chr, range(0x3001)) if pc.utf8_trim_whitespace(pa.array([f"{c}x{c}"]))[0].as_py() == "x"]


def test_trimming_is_skipped_only_where_no_value_has_whitespace_at_an_edge() -> None:
    assert {"\t", "\x1c", "\x1f", " ", "\x85", "\u00a0", "\u2028", "\u3000"} <= set(TRIMMED)
    rng = random.Random(3)
    # "¨" and "´" are no whitespace, but NFKC makes them a space and a combining mark.
    words = ["plain", "ÉCOLE", "ﬁne", "a\u00a0b", "x  y", "e\u0301", "\U0001f600", "~!", "\x7f", "\u00a8", "\u00b4"]

    def value() -> str | None:
        text = " ".join(rng.choices(words, k=rng.randrange(3)))
        if rng.random() < 0.2:
            text = rng.choice(TRIMMED) + text
        if rng.random() < 0.2:
            text += rng.choice(TRIMMED)
        return rng.choice([text, text, text, "", None])

    # One or two rows a batch: each decision to skip rests on a value or two (most batches hold no edge
    # whitespace at all), and the empty values' neighbours and a slice's leftover bytes are in play.
    for _ in range(1500):
        rows = [[value(), value()] for _ in range(rng.choice([1, 2, 3]))]
        batch = _batch([r[0] for r in rows], [r[1] for r in rows])
        start = rng.randrange(len(rows))
        expected = [reference_text(r) for r in rows[start:]]
        assert normalised_text(batch.slice(start), ["prompt", "completion"], True).to_pylist() == expected, rows
        single = [reference_text(r[:1]) for r in rows[start:]]
        assert normalised_text(batch.slice(start), ["prompt"], True).to_pylist() == single, rows
    for edge in TRIMMED:  # each one alone, at either end, beside empty values
        for text in (f"{edge}ab", f"ab{edge}", f"{edge}", f"a{edge}{edge}"):
            for values in ([text], ["", text, ""], ["ab", text]):
                table = pa.table({"t": pa.array(values, pa.string())})
                assert normalised_text(table, ["t"], True).to_pylist() == [reference_text([v]) for v in values]


def _signatures(rows: list[tuple[str, str, int | None, int | None, int]]) -> pa.Table:
    """Signature rows from (id, uri, line, page, key)."""
    return pa.table(
        {
            "id": pa.array([r[0] for r in rows], pa.string()),
            "source": pa.array(
                [{"connector": "files", "uri": r[1], "line": r[2], "page": r[3]} for r in rows], SOURCE_TYPE
            ),
            "keys": pa.array([[r[4]] for r in rows], pa.list_(pa.uint64())),
        }
    )


def reference_resolve(stage: ExactDedup, rows: list[tuple[str, str, int | None, int | None, int]]) -> list[dict]:
    """Per cluster (rows sharing a key) the first in input order is kept; the others are set aside in
    input order. Input order: URI, line, page (missing ones last), then id."""

    def order(row: tuple[str, str, int | None, int | None, int]) -> tuple:
        record_id, uri, line, page, _ = row
        return (uri, line is None, line or 0, page is None, page or 0, record_id)

    clusters: dict[int, list] = {}
    for row in rows:
        clusters.setdefault(row[4], []).append(row)
    aside = []
    for members in clusters.values():
        members = sorted(members, key=order)
        aside += [(row, members[0][0]) for row in members[1:]]
    aside.sort(key=lambda pair: order(pair[0]))
    table = set_aside_rows(
        [row[0] for row, _ in aside],
        _signatures([row for row, _ in aside])["source"],
        stage.name,
        "duplicate",
        stage.reason,
        [f"duplicate of {kept}" for _, kept in aside],
        duplicate_of=[kept for _, kept in aside],
    )
    return table.to_pylist()


def test_resolve_sets_aside_the_rows_of_the_per_record_formula_in_its_order() -> None:
    rng = random.Random(11)
    uris = ["s3://b/a.jsonl", "s3://b/0.jsonl", "s3://b/b.jsonl"]
    rows = [
        (f"id{n:03d}", rng.choice(uris), rng.choice([None, *range(8)]), rng.choice([None, 1, 2]), rng.randrange(40))
        for n in range(300)
    ]
    stage = ExactDedup(["prompt", "completion"])
    signatures = [_signatures(rows[:100]), _signatures(rows[100:250]), _signatures(rows[250:])]
    fast = stage.resolve(signatures)
    assert fast.num_rows == 260
    assert fast.to_pylist() == reference_resolve(stage, rows)
    assert fast.to_pylist() == resolve_duplicates(stage, signatures).to_pylist()
    # An id seen twice takes the shared pairs + components step, as before.
    twice = [*rows[:50], rows[0]]
    assert stage.resolve([_signatures(twice)]).equals(resolve_duplicates(stage, [_signatures(twice)]))
    apart = [_signatures(rows[:50]), _signatures(rows[:1])]  # the same id in two batches (ids are checked per batch)
    assert stage.resolve(apart).equals(resolve_duplicates(stage, apart))


def reference_all_distinct(ids: pa.ChunkedArray) -> bool:
    """The old check: polars' distinct hashes, else Arrow's distinct strings (a null counts once, or not)."""
    hashes = pl.concat([pl.from_arrow(chunk).hash() for chunk in ids.chunks])
    return hashes.n_unique() == len(ids) or pc.count_distinct(ids).as_py() == len(ids)


def test_the_sorted_kernels_of_resolve_equal_polars_and_arrow_counts() -> None:
    rng = np.random.default_rng(7)
    top = np.iinfo(np.uint64).max
    for size, spread in [(0, 1), (1, 1), (2, 1), (5, top), (1000, 50), (1000, top), (5000, 4000), (300, 2)]:
        values = rng.integers(0, spread, size, dtype=np.uint64, endpoint=True)
        values[: size // 10] = top  # the top value (and signed -1) repeated
        keys = pl.Series("keys", values, dtype=pl.UInt64)
        assert _duplicated(keys).to_list() == keys.is_duplicated().to_list()
        chunked = pl.from_arrow(pa.chunked_array([pa.array(values[: size // 3]), pa.array(values[size // 3 :])]))
        assert _duplicated(chunked).to_list() == chunked.is_duplicated().to_list()
    words = [f"{n:032x}" for n in range(200)] + ["", "é", "a" * 100]
    for _ in range(300):
        ids = [str(rng.choice(words)) for _ in range(rng.integers(0, 8))]
        if rng.random() < 0.2:
            ids.append(None)
        cut = int(rng.integers(0, len(ids) + 1))
        column = pa.chunked_array(
            [pa.array(ids[:cut], pa.string()), pa.array([], pa.string()), pa.array(ids[cut:], pa.string())]
        )
        assert _all_distinct(column) == reference_all_distinct(column), ids
    assert _all_distinct(pa.chunked_array([], pa.string()))
    # Ids of one width (32 hex digits, as record_ids makes them) are read as words: a repeat across chunks,
    # in large_string chunks or in a slice is found; ids of other widths, or two widths, take polars' hash.
    hexes = [f"{int(n):032x}" for n in rng.integers(0, 2**63, 50)] + ["0" * 24 + f"{n:08x}" for n in range(20)]
    for kind in (pa.string(), pa.large_string()):
        for chunks in (
            [hexes[:20], hexes[20:]],
            [hexes[:20], [], hexes[20:] + hexes[5:6]],
            [hexes[:30] + hexes[60:61], hexes[30:]],
            [["a" * 8, "b" * 8], ["a" * 16]],
            [["a" * 8, "b" * 8], ["b" * 8]],
            [["ab" * 5, "ba" * 5, "ab" * 5]],
        ):
            column = pa.chunked_array([pa.array(c, kind) for c in chunks], kind)
            assert _all_distinct(column) == reference_all_distinct(column), chunks
        for start in (1, 31):  # the repeat of hexes[30] is in the first slice only
            sliced = pa.chunked_array([pa.array(hexes + hexes[30:31], kind).slice(start)])
            assert _all_distinct(sliced) == reference_all_distinct(sliced) == (start > 30)


def reference_relabel(aside: pa.Table) -> list[dict]:
    """The old ``relabel``, row by row."""
    rows = [row for row in aside.to_pylist() if not row["id"].startswith("published:")]
    for row in rows:
        kept = row["duplicate_of"]
        if kept and kept.startswith("published:"):
            version, original = kept[len("published:") :].split(":", 1)
            row.update(
                reason="earlier_version",
                duplicate_of=original,
                detail=f"duplicate of {original} published in v{version}",
            )
    return rows


def test_relabel_matches_the_per_row_formula() -> None:
    ids = ["a", "published:1:x", "b", "c", "d", "e", "f"]
    kept = ["published:3:abc", "published:3:abc", "a", None, "published:12:id:with:colons", "published:2:", "é"]
    aside = set_aside_rows(
        ids,
        _signatures([(i, "u", n, None, 0) for n, i in enumerate(ids)])["source"],
        "exact_dedup",
        "duplicate",
        "exact_duplicate",
        [f"duplicate of {k}" if k else None for k in kept],
        duplicate_of=kept,
    )
    exact = CrossRunDedup(ExactDedup(["text"]), SignatureIndex("sqlite://", "d"))
    assert exact.relabel(aside).to_pylist() == reference_relabel(aside)
    unchanged = aside.filter(pc.invert(pc.starts_with(aside["id"], "published:"))).slice(1, 2)
    assert exact.relabel(unchanged).equals(unchanged)


def test_a_run_resolves_against_only_the_published_rows_that_share_its_keys(tmp_path: Path) -> None:
    rng = random.Random(5)
    hex_ids = [f"{rng.getrandbits(128):032x}" for _ in range(3000)]
    published = _stored(hex_ids, [[rng.randrange(10_000)] for _ in hex_ids])
    index = SignatureIndex(f"sqlite:///{tmp_path}/state.db", "d")
    index.stage_pending("exact_dedup", "p", published)
    index.published(1)
    new = [
        (f"n{n}", "s3://b/new.jsonl", n, None, rng.choice([rng.randrange(10_000), 20_000 + n % 7])) for n in range(60)
    ]
    stage = CrossRunDedup(ExactDedup(["prompt", "completion"]), index)
    stage.params = "p"
    seen = []
    resolve = stage.inner.resolve
    stage.inner.resolve = lambda signatures: seen.append(sum(t.num_rows for t in signatures)) or resolve(signatures)
    signatures = [_signatures(new[:30]), _signatures(new[30:])]
    fast = stage.resolve(signatures)
    everything = stage.relabel(resolve([stage.earlier(signatures[0].schema), *signatures]))
    assert fast.equals(everything) and fast.num_rows > 0
    assert {r["reason"] for r in fast.to_pylist()} == {"earlier_version", "exact_duplicate"}
    new_keys = {key for *_, key in new}
    assert seen == [60 + sum(key in new_keys for [key] in published["keys"].to_pylist())]


def _stored(ids: list[str], keys: list[list[int]]) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "source": pa.array([{"connector": "files", "uri": "u", "line": n} for n in range(len(ids))], SOURCE_TYPE),
            "keys": pa.array(keys, pa.list_(pa.uint64())),
        }
    )


def test_stored_signatures_load_as_given_and_rows_stored_before_still_load(tmp_path: Path) -> None:
    rng = random.Random(3)
    hex_ids = [f"{rng.getrandbits(128):032x}" for _ in range(500)] + ["0" * 32, "f" * 32]
    exact = _stored(hex_ids, [[rng.getrandbits(64)] for _ in hex_ids])
    # Not every id is 32 lowercase hex digits, or not one key per row: stored as they are.
    other_ids = _stored(["A" * 32, "0" * 31, "r1", "é" * 16], [[1], [2], [3], [4]])
    other_keys = _stored(hex_ids[:3], [[1, 2], [], [2**64 - 1]])
    before = _stored(hex_ids[:2], [[5], [6]])
    assert len(pack(_packed(exact))) < 0.6 * len(pack(exact.drop_columns(["source"])))

    index = SignatureIndex(f"sqlite:///{tmp_path}/state.db", "d")
    for table in (exact, other_ids, other_keys, exact.slice(0, 0)):
        index.stage_pending("exact_dedup", "p", table)
    with index.engine.begin() as db:  # a row as the code before packing stored it
        row = {"dataset": "d", "stage": "exact_dedup", "params": "p", "token": index.token}
        db.execute(published_signatures.insert().values(**row, data=pack(before.drop_columns(["source"]))))
    index.published(1)
    loaded = index.load("exact_dedup", "p")
    tables = (exact, other_ids, other_keys, before)
    assert loaded["id"].to_pylist() == [f"published:1:{i}" for t in tables for i in t["id"].to_pylist()]
    assert loaded["keys"].to_pylist() == [k for t in tables for k in t["keys"].to_pylist()]
    assert loaded.schema.field("keys").type == pa.list_(pa.uint64())
    # Asked for some keys: rows of one key each holding none of them stay out, packed or stored before;
    # rows of several keys (or none) all come, since a cluster can reach them through any key.
    wanted = [exact["keys"][0][0].as_py(), 6, 1]
    holding = index.load("exact_dedup", "p", pa.array(wanted, pa.uint64()))
    assert holding["id"].to_pylist() == [f"published:1:{i}" for i in (hex_ids[0], "A" * 32, *hex_ids[:3], hex_ids[1])]


def test_a_null_keys_row_does_not_hold_one_key() -> None:
    # A null list has no key: counted as one, ``_packed`` would store a key column a row shorter than its ids.
    from curation.stages.duplicates import holds_one_key_each

    keys = pa.array([[1], None, [3]], pa.list_(pa.uint64()))
    assert not holds_one_key_each(keys)
    assert not holds_one_key_each(pa.chunked_array([keys.slice(0, 1), keys.slice(1)]))
    assert holds_one_key_each(pa.array([[1], [None], [3]], pa.list_(pa.uint64())))
    table = _stored(["a" * 32, "b" * 32, "c" * 32], keys.to_pylist())
    packed = _packed(table)
    assert "keys" in packed.column_names and packed["keys"].to_pylist() == keys.to_pylist()


def _id_bytes_by_numpy(ids: pa.Array) -> pa.Array | None:
    """``_id_bytes`` as it was: NumPy's fancy index over the uint16 digit pairs."""
    if len(ids) == 0 or ids.null_count:
        return None
    offsets = np.frombuffer(ids.buffers()[1], np.int32)[ids.offset : ids.offset + len(ids) + 1]
    if not (np.diff(offsets) == 32).all():
        return None
    packed = _BYTE_OF_DIGITS[np.frombuffer(ids.buffers()[2], "<u2", len(ids) * 16, offsets[0])]
    if packed.max() > 255:
        return None
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(ids), [None, pa.py_buffer(packed.astype(np.uint8))])


def test_id_bytes_equal_the_numpy_formula_and_read_back_as_given() -> None:
    rng = random.Random(11)
    hex_ids = [f"{rng.getrandbits(128):032x}" for _ in range(3000)] + ["0" * 32, "f" * 32]
    odd = ["0123456789abcdeF" * 2, "g" + "0" * 31, "é" * 16, "0" * 33, "0" * 31, ":" * 32, "`" * 32, "G" * 32]
    cases = [pa.array([], pa.string()), pa.array(hex_ids[:1]), pa.array(hex_ids), pa.array(hex_ids[:5] * 3)]
    cases += [pa.array(hex_ids).slice(7, 100), pa.array(["x", *hex_ids[:9]]).slice(1)]  # odd data offset
    cases += [pa.array(["abc", *hex_ids[:9]]).slice(1, 4), pa.array([*hex_ids[:3], None])]
    cases += [pa.array([*hex_ids[:20], bad, *hex_ids[20:40]]) for bad in odd]
    for bad in odd:  # one wrong pair anywhere in a row
        row = list(hex_ids[0])
        row[rng.randrange(32)] = bad[0] if len(bad[0].encode()) == 1 else "z"
        cases.append(pa.array([hex_ids[1], "".join(row)]))
    for ids in cases:
        expected = _id_bytes_by_numpy(ids)
        got = _id_bytes(ids)
        assert (got is None) == (expected is None), ids
        if got is not None:
            assert got.equals(expected) and _hex_ids(got).to_pylist() == ids.to_pylist()
    # A large_string column is stored as it is (the formula read its offsets as int32).
    assert _id_bytes(pa.array(hex_ids, pa.large_string())) is None
    # Chunked: the chunks of a table's column, one at a time.
    chunked = pa.chunked_array([hex_ids[:10], hex_ids[10:11], hex_ids[11:]])
    assert pa.concat_arrays([_id_bytes(chunk) for chunk in chunked.chunks]).equals(
        _id_bytes_by_numpy(pa.array(hex_ids))
    )


def test_hex_ids_equal_each_ids_own_hex() -> None:
    rng = random.Random(12)
    packed = _id_bytes(pa.array([f"{rng.getrandbits(128):032x}" for _ in range(2000)] + ["0" * 32, "f" * 32]))
    for part in (packed.slice(0, 0), packed.slice(0, 1), packed, packed.slice(3, 500), packed.slice(1999)):
        assert _hex_ids(part).equals(pa.array([value.hex() for value in part.to_pylist()], pa.string()))
