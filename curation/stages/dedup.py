"""Exact deduplication on normalised content: the first occurrence in input order is kept.

The per-batch part hashes each record's normalised content (Unicode NFKC, case-folded, runs of
whitespace collapsed); the hash is the one candidate key, and the shared global step
(``curation.stages.duplicates``) keeps the first record of each cluster.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from curation.stages.duplicates import resolve_duplicates


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
        return resolve_duplicates(self, signatures)
