"""Exact deduplication on normalised content: the first occurrence in input order is kept.

The per-batch part hashes each record's normalised content (Unicode NFKC, case-folded, runs of
whitespace collapsed); the global part keeps the first record of each hash.
"""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from schemas.records import SOURCE_TYPE, empty_set_aside, set_aside_rows


def normalised_text(batch: pa.Table, fields: list[str], normalize: bool) -> pa.Array:
    """The fields of each row joined into one string, normalised so trivial variants collide."""
    parts = [pc.fill_null(pc.cast(batch[f], pa.string()), "") for f in fields]
    text = pc.binary_join_element_wise(*parts, "\x1f") if len(parts) > 1 else parts[0]
    if normalize:
        text = pc.utf8_normalize(text, "NFKC")
        text = pc.utf8_lower(text)
        text = pc.replace_substring_regex(text, r"\s+", " ")
        text = pc.utf8_trim_whitespace(text)
    return text


def content_hashes(text: pa.Array | pa.ChunkedArray) -> pa.Array:
    hash64 = xxhash.xxh3_64_intdigest
    return pa.array([hash64(value.encode()) for value in text.to_pylist()], pa.uint64())


class ExactDedup:
    name = "exact_dedup"

    def __init__(self, fields: list[str], normalize: bool = True) -> None:
        self.fields = fields
        self.normalize = normalize

    def signatures(self, batch: pa.Table) -> pa.Table:
        hashes = content_hashes(normalised_text(batch, self.fields, self.normalize))
        return pa.table({"id": batch["id"], "source": batch["source"], "hash": hashes})

    def resolve(self, signatures: Iterable[pa.Table]) -> pa.Table:
        tables = [t for t in signatures if t.num_rows]
        if not tables:
            return empty_set_aside()
        frame = pl.from_arrow(pa.concat_tables(tables)).with_row_index("order")
        firsts = frame.group_by("hash").agg(
            pl.col("id").sort_by("order").first().alias("kept_id"), pl.col("order").min().alias("first")
        )
        dupes = frame.join(firsts, on="hash").filter(pl.col("order") != pl.col("first")).sort("order")
        details = [f"same content as {kept}" for kept in dupes["kept_id"].to_list()]
        table = dupes.select("id", "source").to_arrow()
        return set_aside_rows(
            table["id"].cast(pa.string()),
            table["source"].cast(SOURCE_TYPE),
            self.name,
            "duplicate",
            "exact_duplicate",
            details,
        )
