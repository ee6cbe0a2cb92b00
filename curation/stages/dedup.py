"""Exact deduplication on normalised content: the first occurrence in input order is kept.

The per-batch part hashes each record's normalised content (Unicode NFKC, case-folded, runs of
whitespace collapsed); the hash is the one candidate key, and the shared global step
(``curation.stages.duplicates``) keeps the first record of each cluster.
"""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from curation.stages.duplicates import resolve_duplicates, set_aside_for_clusters
from schemas.records import empty_set_aside

# What ``\s+`` -> " " did, as Arrow's RE2 reads ``\s`` (ASCII [\t\n\f\r ] only), without rewriting every
# single space: a run of two or more, or one whitespace that is not a space. About 4x faster.
_WHITESPACE_TO_FOLD = r"[\t\n\f\r ]{2,}|[\t\n\f\r]"


def normalised_text(batch: pa.Table, fields: list[str], normalize: bool) -> pa.Array:
    """The fields of each row joined into one string, normalised so trivial variants collide."""
    parts = [pc.fill_null(pc.cast(batch[f], pa.string()), "") for f in fields]
    text = pc.binary_join_element_wise(*parts, "\x1f") if len(parts) > 1 else parts[0]
    if normalize:
        text = pc.utf8_normalize(text, "NFKC")
        # All-ASCII text lowers the same either way, and the ASCII kernel is about 10x faster.
        text = pc.ascii_lower(text) if pc.all(pc.string_is_ascii(text)).as_py() else pc.utf8_lower(text)
        if pc.any(pc.match_substring_regex(text, _WHITESPACE_TO_FOLD)).as_py():  # most text has none
            text = pc.replace_substring_regex(text, _WHITESPACE_TO_FOLD, " ")
        text = pc.utf8_trim_whitespace(text)
    return text


def content_hashes(text: pa.Array | pa.ChunkedArray) -> pa.Array:
    hash64 = xxhash.xxh3_64_intdigest
    # Binary values are the UTF-8 bytes already: no str object and no encode per row.
    return pa.array([hash64(value) for value in text.cast(pa.binary()).to_pylist()], pa.uint64())


class ExactDedup:
    """Records whose normalised content is identical form one cluster; the first is kept."""

    name = "exact_dedup"
    reason = "exact_duplicate"

    def __init__(self, fields: list[str], normalize: bool = True) -> None:
        self.fields = fields
        self.normalize = normalize

    def signatures(self, batch: pa.Table) -> pa.Table:
        hashes = content_hashes(normalised_text(batch, self.fields, self.normalize))
        keys = pa.ListArray.from_arrays(pa.array(range(len(hashes) + 1), pa.int32()), hashes)
        return pa.table({"id": batch["id"], "source": batch["source"], "keys": keys})

    def pairs(self, group: pa.Table) -> pa.Table:
        # One key is the whole content hash: every member duplicates every other one.
        ids = group["id"].to_pylist()
        return pa.table({"a": [ids[0]] * (len(ids) - 1), "b": ids[1:]})

    def resolve(self, signatures: Iterable[pa.Table]) -> pa.Table:
        tables = [t for t in signatures if t.num_rows]
        if not tables:
            return empty_set_aside()
        everything = pa.concat_tables(tables)
        one_key = pc.all(pc.equal(pc.list_value_length(everything["keys"]), 1)).as_py()
        if not one_key or pc.count_distinct(everything["id"]).as_py() != everything.num_rows:
            return resolve_duplicates(self, [everything])
        # Each row holds one key and ids are unique, so a cluster is exactly the rows sharing a key:
        # the same clusters the shared pairs + connected-components step finds, without a group per key.
        frame = pl.from_arrow(pa.table({"id": everything["id"], "cluster": pc.list_flatten(everything["keys"])}))
        clusters = frame.filter(pl.len().over("cluster") > 1).to_arrow()
        return set_aside_for_clusters(self, clusters, everything)
