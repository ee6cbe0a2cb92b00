"""Exact deduplication on normalised content: the first occurrence in input order is kept.

The per-batch part hashes each record's normalised content (Unicode NFKC, case-folded, runs of
whitespace collapsed); the hash is the one candidate key, and the shared global step
(``curation.stages.duplicates``) keeps the first record of each cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from curation.stages.base import require_columns
from curation.stages.duplicates import holds_one_key_each, keep_first, one_key_each, resolve_duplicates
from schemas.arrow_bytes import string_buffers
from schemas.hashing import xxh3_64
from schemas.records import empty_set_aside

# What ``\s+`` -> " " did, as Arrow's RE2 reads ``\s`` (ASCII [\t\n\f\r ] only), without rewriting every
# single space: a run of two or more, or one whitespace that is not a space. About 4x faster.
_WHITESPACE_TO_FOLD = r"[\t\n\f\r ]{2,}|[\t\n\f\r]"
_DOUBLE_SPACE = 0x2020  # two spaces read as one 16-bit number (either byte order)


def _string_buffers(text: pa.Array | pa.ChunkedArray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each chunk's bytes and its values' offsets into them, without a copy (``string_buffers``); chunks
    without values left out."""
    for chunk in text.chunks if isinstance(text, pa.ChunkedArray) else [text]:
        if len(chunk):
            offsets, data = string_buffers(chunk)
            yield data, offsets


def _utf8_bytes(text: pa.Array | pa.ChunkedArray) -> list[np.ndarray]:
    """The UTF-8 bytes of each chunk's values end to end, without a copy."""
    # A chunk of only empty strings has nothing to check.
    return [values[offsets[0] : offsets[-1]] for values, offsets in _string_buffers(text) if offsets[-1] > offsets[0]]


def _may_need_folding(text: pa.Array | pa.ChunkedArray) -> bool:
    """False only if no value holds a match of ``_WHITESPACE_TO_FOLD``, found without running the regex
    (about 8x faster). In UTF-8 a byte below 0x80 is always an ASCII character, so a tab, newline,
    form feed or carriage return shows as a byte below 14 (vertical tab and control characters also
    count: a needless fold changes nothing), and two spaces as the bytes 0x20 0x20 at an even or an
    odd position. Two spaces across the end of one value and the start of the next also count."""
    return _ascii_and_folding(text, ascii=False)[1]


# Bytes read at a time by ``_ascii_and_folding``: a block stays in the core's cache for its four passes,
# where a batch's text (megabytes) is fetched from memory for each (a quarter less CPU on its own; under
# a run's other threads the passes over memory cost three times as much).
_BLOCK = 1 << 19


def _ascii_and_folding(text: pa.Array | pa.ChunkedArray, ascii: bool = True) -> tuple[bool, bool]:
    """(whether ``text`` is ASCII, when ``ascii`` asks; whether it may need folding, as ``_may_need_folding``)
    in one pass, block by block. Lowering ASCII changes no whitespace, so the fold of ASCII text is known
    before it; that of other text is decided on NFKC's (True here). Each block takes one byte more: two
    spaces across two blocks."""
    fold = False
    for values in _utf8_bytes(text):
        for start in range(0, len(values), _BLOCK):
            block = values[start : start + _BLOCK + 1]
            if ascii and block.max() >= 0x80:
                return False, True
            if not fold:
                even = block[: len(block) // 2 * 2].view(np.uint16)
                odd = block[1 : 1 + (len(block) - 1) // 2 * 2].view(np.uint16)
                fold = bool(block.min() < 14 or (even == _DOUBLE_SPACE).any() or (odd == _DOUBLE_SPACE).any())
            if fold and not ascii:
                return False, True
    return ascii, fold


def _may_need_trimming(text: pa.Array | pa.ChunkedArray) -> bool:
    """False only if no value starts or ends with whitespace as ``utf8_trim_whitespace`` reads it, found from
    each value's first and last byte (about 2/3 of the CPU of the trim, which copies every value). Its
    ASCII whitespace is all below 0x21; a byte of 0x80 or above is part of a character that may be one."""
    for values, offsets in _string_buffers(text):
        if not values.size:
            continue
        offsets = offsets.astype(np.intp)
        # An empty value's "edges" are bytes of its neighbours (clipped at the ends): at worst a needless trim.
        edges = np.concatenate([values.take(offsets[:-1], mode="clip"), values.take(offsets[1:] - 1, mode="clip")])
        if ((edges - np.uint8(0x21)) > np.uint8(0x7F - 0x21)).any():
            return True
    return False


def _trimmed(text: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    return pc.utf8_trim_whitespace(text) if _may_need_trimming(text) else text


def normalised_text(batch: pa.Table, fields: list[str], normalize: bool) -> pa.Array:
    """The fields of each row joined into one string, normalised so trivial variants collide."""
    parts = [pc.fill_null(pc.cast(batch[f], pa.string()), "") for f in fields]
    if normalize and len(parts) > 1:  # whitespace at a field's edge would stay, beside the separator
        parts = [_trimmed(part) for part in parts]
    text = pc.binary_join_element_wise(*parts, "\x1f") if len(parts) > 1 else parts[0]
    if normalize:
        ascii, fold = _ascii_and_folding(text)
        # NFKC leaves ASCII as it is, and the ASCII kernel lowers it the same, about 10x faster.
        text = pc.ascii_lower(text) if ascii else pc.utf8_lower(pc.utf8_normalize(text, "NFKC"))
        if fold if ascii else _may_need_folding(text):  # most text has nothing to fold
            text = pc.replace_substring_regex(text, _WHITESPACE_TO_FOLD, " ")
        # ASCII fields, trimmed, keep their edges through lowering and folding: only an empty one leaves
        # the separator (whitespace to the trim) at an edge. NFKC can make one ("¨" -> space, mark).
        if not ascii or len(parts) == 1:
            text = _trimmed(text)
        elif any(pc.min(pc.binary_length(part)).as_py() == 0 for part in parts):
            text = pc.utf8_trim_whitespace(text)
    return text


def _mixed(text: pa.Array, image: pa.Array) -> pa.Array:
    """One 64-bit key from a text hash and an image hash (a row without an image keeps its text hash)."""
    extra = pc.fill_null(image, 0).to_numpy(zero_copy_only=False).astype(np.uint64)
    with np.errstate(over="ignore"):  # wrapping multiplication is the point
        mixed = text.to_numpy(zero_copy_only=False).astype(np.uint64) ^ (extra * np.uint64(0x9E3779B97F4A7C15))
    return pa.array(mixed, pa.uint64())


def _words(ids: pa.Array) -> np.ndarray | None:
    """A chunk's ids as rows of 64-bit words (no copy) when all are of one width, a multiple of 8 bytes
    (32 hex digits: ``record_ids``), and none is null; else None."""
    if ids.null_count or not len(ids) or not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        return None
    offsets, data = string_buffers(ids)
    width, rest = divmod(int(offsets[-1] - offsets[0]), len(ids))
    if rest or not width or width % 8 or not (np.diff(offsets) == width).all():
        return None
    return data[offsets[0] : offsets[-1]].view(np.uint64).reshape(len(ids), width // 8)


def _mixed_words(words: np.ndarray) -> np.ndarray:
    mixed = words[:, 0].copy()
    for column in range(1, words.shape[1]):  # wrapping multiply-add: every byte reaches the top bits
        mixed *= np.uint64(0x9E3779B97F4A7C15)
        mixed += words[:, column]
    return mixed


def _all_distinct(ids: pa.ChunkedArray) -> bool:
    # Distinct 64-bit hashes prove distinct ids, about 5x faster than counting distinct strings: the
    # strings are compared only when two hashes collide (they are never stored). Ids all of one width (in
    # every chunk: equal ids must meet one formula) are read as words and mixed, half the CPU of polars'
    # hash, which first converts the strings to its own layout. Chunk by chunk: polars would otherwise copy
    # every id at once, at the run's memory peak. Sorted hashes hold a repeat only side by side: numpy's
    # sort takes about a third of polars' n_unique.
    words = [_words(chunk) for chunk in ids.chunks if len(chunk)]
    if words and all(w is not None and w.shape[1] == words[0].shape[1] for w in words):
        chunks = [_mixed_words(w) for w in words if w is not None]
    else:
        chunks = [pl.from_arrow(chunk).hash().to_numpy() for chunk in ids.chunks]
    hashes = np.sort(np.concatenate(chunks)) if chunks else np.array([], np.uint64)
    return not (hashes[1:] == hashes[:-1]).any() or pc.count_distinct(ids).as_py() == len(ids)


def _duplicated(keys: pl.Series) -> pl.Series:
    """``keys.is_duplicated()`` for keys without nulls, about 3x faster: the sorted keys give the repeated
    values (few), and one look-up in them marks every row that holds one."""
    ordered = np.sort(keys.to_numpy())
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    return keys.is_in(pl.Series(repeated, dtype=keys.dtype).implode())


class ExactDedup:
    """Records whose normalised content is identical form one cluster; the first is kept."""

    name = "exact_dedup"
    reason = "exact_duplicate"

    def __init__(self, fields: list[str], normalize: bool = True, name: str | None = None) -> None:
        self.name = name or self.name  # a second stage of its type in the recipe: ``own_name``
        self.fields = fields
        self.normalize = normalize
        if "image" in fields:
            # An image is compared by its bytes, not by the path it came from (a picture copied under
            # another name is the same picture, and published once). A setting of the signatures, so
            # those stored when the path counted are not compared with these.
            self.image = "bytes"

    def signatures(self, batch: pa.Table) -> pa.Table:
        images = "image_bytes" in batch.column_names
        fields = [field for field in self.fields if field != "image"] if images else self.fields
        require_columns(batch, fields, f"{self.name} fields")
        if fields:
            hashes = xxh3_64(normalised_text(batch, fields, self.normalize))
        else:
            hashes = pa.array(np.zeros(batch.num_rows, np.uint64))  # the image alone (see _mixed)
        if images:
            # An image is content too: the same question about another picture (a file changed in place
            # keeps its name) is a new record, not a repeat.
            hashes = _mixed(hashes, xxh3_64(batch["image_bytes"]))
        return pa.table({"id": batch["id"], "source": batch["source"], "keys": one_key_each(hashes)})

    def pairs(self, group: pa.Table) -> pa.Table:
        # One key is the whole content hash: every member duplicates every other one.
        ids = group["id"].to_pylist()
        return pa.table({"a": [ids[0]] * (len(ids) - 1), "b": ids[1:]})

    def resolve(self, signatures: Iterable[pa.Table]) -> pa.Table:
        tables = [t for t in signatures if t.num_rows]
        if not tables:
            return empty_set_aside()
        everything = pa.concat_tables(tables)
        if not holds_one_key_each(everything["keys"]) or not _all_distinct(everything["id"]):
            return resolve_duplicates(self, [everything])
        # Each row holds one key and ids are unique, so a cluster is exactly the rows sharing a key:
        # the same clusters the shared pairs + connected-components step finds, without a group per key.
        keys = pl.from_arrow(pc.list_flatten(everything["keys"]))
        clustered = _duplicated(keys) if not keys.null_count() else keys.is_duplicated()
        # A mask filters chunk by chunk; a take would first join every chunk of ids and sources.
        members = pl.from_arrow(everything.select(["id", "source"]).filter(clustered.to_arrow()))
        return keep_first(self, members.with_columns(cluster=keys.filter(clustered)))
