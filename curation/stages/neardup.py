"""Near-duplicate removal: MinHash signatures, LSH banding, confirmed pairs, one kept record per cluster.

The per-batch part (``signatures``) is vectorised over the whole batch with numpy, with no Python
loop per record or per shingle:

- text is normalised (NFKC, case-folded, whitespace collapsed) and cut into word or character
  shingles; words are hashed once per distinct word (xxh3, fixed by specification, so signatures
  stored in the state store stay valid across library upgrades) and shingle hashes are mixed from
  them with 64-bit arithmetic;
- the MinHash is *one-permutation hashing* with optimal densification (Shrivastava, ICML 2017):
  each shingle hash falls in one of ``num_perm`` bins and each bin keeps its minimum, so the cost is
  one pass over the shingles instead of ``num_perm``; empty bins borrow from a fixed pseudo-random
  sequence of other bins. The share of equal bins estimates Jaccard similarity, as with classic
  MinHash;
- ``bands`` LSH keys per record: rows that share a key are candidates.

The global part is the shared dedup step: ``pairs`` confirms candidates whose estimated Jaccard
similarity reaches ``threshold``; clusters are connected components; the first record of each in
input order is kept. Images: ``ImageNearDedup`` below, perceptual hash with a Hamming threshold.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping
from functools import lru_cache
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from curation.stages.base import (
    StageError,
    StageSettingError,
    flag_payloads,
    require_columns,
    scrubbed_as_records,
    with_payloads,
)
from curation.stages.dedup import normalised_text
from curation.stages.duplicates import PAIR_SCHEMA, clusters_from_pairs, resolve_duplicates, set_aside_for_clusters
from schemas.hashing import xxh3_64
from schemas.records import FLAG_SCHEMA, empty_set_aside

EMPTY = np.uint64(1 << 32)  # a bin no shingle fell in (bin values are 32-bit)
_MIX = np.uint64(0x9E3779B97F4A7C15)
_DENSIFY_ATTEMPTS = 64
# Above this many candidates sharing one key, members are compared with a few representatives
# instead of with each other, so one huge cluster of copies cannot make ``pairs`` quadratic.
_ALL_PAIRS_MAX = 512


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A bijective 64-bit finaliser (splitmix64): turns structured values into uniform ones."""
    with np.errstate(over="ignore"):
        x = x.astype(np.uint64, copy=True)
        x += _MIX
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _hash_strings(values: pa.Array) -> np.ndarray:
    """xxh3-64 of each string; each distinct value is hashed once."""
    encoded = pc.dictionary_encode(values)
    distinct = encoded.dictionary.to_pylist()
    hash64 = xxhash.xxh3_64_intdigest
    table = np.fromiter((hash64(v.encode()) for v in distinct), np.uint64, len(distinct))
    return table[encoded.indices.to_numpy(zero_copy_only=False)]


def _word_tokens(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(token hashes, owning row) for the words of each text, in order."""
    lists = pc.split_pattern_regex(text, r"[^\pL\pN\pM]+")  # Unicode letters and digits (RE2's \w is ASCII)
    flat = pc.list_flatten(lists)
    owner = pc.list_parent_indices(lists).to_numpy()
    nonempty = pc.greater(pc.utf8_length(flat), 0)
    flat, owner = flat.filter(nonempty), owner[nonempty.to_numpy(zero_copy_only=False)]
    if len(flat) == 0:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    return _hash_strings(flat), owner.astype(np.int64)


def _char_tokens(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(code points, owning row) of each text; one UTF-32 encode for the whole batch."""
    values = text.to_pylist()
    lengths = np.fromiter((len(v) for v in values), np.int64, len(values))
    points = np.frombuffer("".join(values).encode("utf-32-le"), np.uint32).astype(np.uint64)
    owner = np.repeat(np.arange(len(values), dtype=np.int64), lengths)
    return splitmix64(points), owner


def shingle_hashes(tokens: np.ndarray, owner: np.ndarray, rows: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every run of ``size`` consecutive tokens of a row (a shorter row: one run of all of it)."""
    if tokens.size == 0:
        return tokens, owner
    counts = np.bincount(owner, minlength=rows)
    ends = np.cumsum(counts)
    end = ends[owner]  # one past the last token of each token's row
    starts = ends - counts
    position = np.arange(tokens.size)
    whole = (position + size <= end) | ((position == starts[owner]) & (counts[owner] < size))
    padded = np.concatenate([tokens, np.zeros(size, np.uint64)])
    mixed = np.zeros(tokens.size, np.uint64)
    with np.errstate(over="ignore"):
        for offset in range(size):
            inside = position + offset < end
            mixed = np.where(inside, mixed * np.uint64(0x100000001B3) + padded[offset : offset + tokens.size], mixed)
    return splitmix64(mixed[whole]), owner[whole]


@lru_cache(maxsize=8)
def _densify_order(bins: int) -> np.ndarray:
    """For each bin, the fixed sequence of bins an empty one borrows from (the same for every record)."""
    grid = np.arange(bins, dtype=np.uint64)[:, None] * np.uint64(1 << 20) + np.arange(
        _DENSIFY_ATTEMPTS, dtype=np.uint64
    )
    return (splitmix64(grid) % np.uint64(bins)).astype(np.int64)


def one_permutation_minhash(hashes: np.ndarray, owner: np.ndarray, rows: int, bins: int) -> np.ndarray:
    """``rows`` x ``bins`` uint32 signatures; a row with no shingles is all ``EMPTY``."""
    sig = np.full(rows * bins, EMPTY, np.uint64)
    if hashes.size:
        slot = ((hashes >> np.uint64(32)) * np.uint64(bins)) >> np.uint64(32)
        np.minimum.at(sig, owner * bins + slot.astype(np.int64), hashes & np.uint64(0xFFFFFFFF))
    sig = sig.reshape(rows, bins)
    empty = sig == EMPTY
    has_any = ~empty.all(axis=1)
    row, col = np.nonzero(empty & has_any[:, None])
    out = sig.copy()
    order = _densify_order(bins)
    for attempt in range(_DENSIFY_ATTEMPTS):
        if row.size == 0:
            break
        take = order[col, attempt]
        found = ~empty[row, take]
        out[row[found], col[found]] = sig[row[found], take[found]]
        row, col = row[~found], col[~found]
    for r, c in zip(row.tolist(), col.tolist(), strict=True):  # rare: the nearest filled bin to the right
        filled = np.flatnonzero(~empty[r])
        out[r, c] = sig[r, filled[np.searchsorted(filled, c) % filled.size]]
    return out


def band_keys(signature: np.ndarray, bands: int) -> np.ndarray:
    """``rows`` x ``bands`` uint64 LSH keys; the band number is mixed in so bands never collide."""
    rows, bins = signature.shape
    per_band = signature.reshape(rows, bands, bins // bands)
    key = np.broadcast_to(splitmix64(np.arange(bands, dtype=np.uint64)), (rows, bands)).copy()
    with np.errstate(over="ignore"):
        for column in range(per_band.shape[2]):
            key = splitmix64(key ^ per_band[:, :, column])
    return key


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity: the share of equal bins (rows of ``b`` against ``a``)."""
    return (np.asarray(b) == np.asarray(a)).mean(axis=-1)


class NearDedup:
    """Records whose shingle sets are similar (estimated Jaccard >= ``threshold``) form one cluster."""

    name = "near_dedup"
    reason = "near_duplicate"

    def __init__(
        self,
        fields: list[str],
        shingle: Literal["word", "char"] = "word",
        shingle_size: int = 3,
        num_perm: int = 128,
        bands: int = 32,
        threshold: float = 0.7,
        kept_apart: Mapping[str, Collection[str]] | None = None,
        *,
        name: str | None = None,
    ) -> None:
        if num_perm % bands:
            raise ValueError(f"num_perm ({num_perm}) must be a multiple of bands ({bands})")
        self.fields, self.shingle, self.shingle_size = fields, shingle, shingle_size
        self.num_perm, self.bands, self.threshold = num_perm, bands, threshold
        self.name = name or self.name  # a second stage of its type in the recipe: ``own_name``
        # Records an annotator marked "not a duplicate", each with the records it is not a copy of
        # (``RunDecisions.kept_apart_in``): published unless near another one (``keep_first``).
        self.kept_apart = dict(kept_apart or {})

    def minhash(self, batch: pa.Table) -> np.ndarray:
        require_columns(batch, self.fields, f"{self.name} fields")
        if self.shingle == "word":  # words split on anything but letters, so whitespace needs no collapsing
            text = pc.utf8_lower(pc.utf8_normalize(normalised_text(batch, self.fields, normalize=False), "NFKC"))
        else:
            text = normalised_text(batch, self.fields, normalize=True)
        text = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
        tokens, owner = (_word_tokens if self.shingle == "word" else _char_tokens)(text)
        hashes, owner = shingle_hashes(tokens, owner, batch.num_rows, self.shingle_size)
        return one_permutation_minhash(hashes, owner, batch.num_rows, self.num_perm)

    def signatures(self, batch: pa.Table) -> pa.Table:
        sig = self.minhash(batch)
        keys = band_keys(sig, self.bands)
        has_any = ~(sig == EMPTY).all(axis=1)  # a record with no words is never a near duplicate
        key_lists = pa.ListArray.from_arrays(
            pa.array(np.concatenate([[0], np.cumsum(np.where(has_any, self.bands, 0))]).astype(np.int32)),
            pa.array(keys[has_any].ravel(), pa.uint64()),
        )
        minhash = pa.FixedSizeListArray.from_arrays(pa.array(sig.astype(np.uint32).ravel()), self.num_perm)
        return pa.table({"id": batch["id"], "source": batch["source"], "keys": key_lists, "minhash": minhash})

    def pairs(self, group: pa.Table) -> pa.Table:
        # A large group's representatives are taken in the order of ids, not rows: which pairs it finds
        # depends on its records, not on the order they came in (files listed, batches, a shuffle).
        group = group.take(pc.sort_indices(group["id"])) if len(group) > _ALL_PAIRS_MAX else group
        ids = np.array(group["id"].to_pylist(), dtype=object)
        sig = _matrix(group["minhash"], self.num_perm)
        left, right = [], []
        every = len(ids) <= _ALL_PAIRS_MAX
        # Each row with those after it; in a large group, each representative with every other member.
        for i in range(len(ids)) if every else range(0, len(ids), len(ids) // 8):
            start = i + 1 if every else 0
            close = np.flatnonzero(similarity(sig[i], sig[start:]) >= self.threshold) + start
            close = close[close != i]
            left += [ids[i]] * close.size
            right += ids[close].tolist()
        return pa.table({"a": pa.array(left, pa.string()), "b": pa.array(right, pa.string())}, schema=PAIR_SCHEMA)

    def close(self, one: pa.Table, others: pa.Table) -> np.ndarray:
        """Which of the signature rows ``others`` the row ``one`` is a near duplicate of, as ``pairs`` confirms."""
        return similarity(_matrix(one["minhash"], self.num_perm)[0], _matrix(others["minhash"], self.num_perm)) >= (
            self.threshold
        )

    def resolve(self, signatures: Iterable[pa.Table]) -> pa.Table:
        """The shared dedup step, with the candidate pairs of all key groups confirmed at once.

        Same pairs, clusters and kept records as ``resolve_duplicates(self, signatures)`` (which a
        distributed executor runs group by group), without a table and a Python call per key group.
        """
        tables = [t for t in signatures if t.num_rows]
        if not tables:
            return empty_set_aside()
        everything = pa.concat_tables(tables).combine_chunks()
        pairs = self.confirmed_pairs(everything)
        return set_aside_for_clusters(self, clusters_from_pairs(everything["id"], pairs), everything)

    def confirmed_pairs(self, signatures: pa.Table) -> pa.Table:
        """Every pair of rows that share an LSH key and reach the threshold (what ``pairs`` finds per group)."""
        keys = signatures["keys"].combine_chunks()
        owner = pc.list_parent_indices(keys).to_numpy()
        values = pc.list_flatten(keys).to_numpy()
        order = np.lexsort((owner, values))
        values, owner = values[order], owner[order]
        starts = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))
        sizes = np.diff(np.concatenate([starts, [values.size]]))
        ids = np.array(signatures["id"].to_pylist(), dtype=object)
        sig = _matrix(signatures["minhash"], self.num_perm)
        found = [self._large_groups(signatures, owner, starts, sizes)]
        small = (sizes > 1) & (sizes <= _ALL_PAIRS_MAX)
        group_end = np.repeat(starts + sizes, sizes)
        position = np.flatnonzero(np.repeat(small, sizes))
        left, right = [], []
        for offset in range(1, int(sizes[small].max()) if small.any() else 1):
            position = position[position + offset < group_end[position]]
            left.append(owner[position])
            right.append(owner[position + offset])
        if left:
            a, b = np.concatenate(left), np.concatenate(right)
            a, b = np.minimum(a, b), np.maximum(a, b)
            unique = np.unique(a.astype(np.int64) * len(ids) + b)
            a, b = unique // len(ids), unique % len(ids)
            keep = np.zeros(a.size, bool)
            for chunk in range(0, a.size, 65536):  # bounded memory: pairs x num_perm comparisons per chunk
                part = slice(chunk, chunk + 65536)
                keep[part] = similarity(sig[a[part]], sig[b[part]]) >= self.threshold
            found.append(pa.table({"a": ids[a[keep]].tolist(), "b": ids[b[keep]].tolist()}, schema=PAIR_SCHEMA))
        return pa.concat_tables(found)

    def _large_groups(self, signatures: pa.Table, owner: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> pa.Table:
        """Groups too large to compare all pairs go through ``pairs`` (representatives)."""
        large = [owner[s : s + n] for s, n in zip(starts, sizes, strict=True) if n > _ALL_PAIRS_MAX]
        found = [self.pairs(signatures.take(pa.array(np.sort(rows)))) for rows in large]
        return pa.concat_tables(found) if found else PAIR_SCHEMA.empty_table()

    def review_flags(self, dropped: pa.Table, signatures: list[pa.Table], batches: Iterable[pa.Table]) -> pa.Table:
        """One ``near_duplicate`` flag per record set aside, with both texts and their similarity."""
        dropped = dropped.filter(pc.equal(dropped["reason"], self.reason))
        return near_duplicate_flags(self, dropped, signatures, batches)


def _matrix(column: pa.ChunkedArray | pa.Array, width: int) -> np.ndarray:
    values = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return values.flatten().to_numpy().reshape(-1, width)


def near_duplicate_flags(
    stage: NearDedup, dropped: pa.Table, signatures: list[pa.Table], batches: Iterable[pa.Table]
) -> pa.Table:
    if dropped.num_rows == 0:
        return FLAG_SCHEMA.empty_table()
    wanted = set(dropped["id"].to_pylist()) | set(dropped["duplicate_of"].to_pylist())
    sigs: dict[str, np.ndarray] = {}
    for table in signatures:
        picked = table.filter(pc.is_in(table["id"], pa.array(list(wanted), pa.string())))
        for key, row in zip(picked["id"].to_pylist(), _matrix(picked["minhash"], stage.num_perm), strict=True):
            sigs[key] = row

    def score(kept: str, member: str) -> float | None:
        return float(similarity(sigs[kept], sigs[member])) if member in sigs and kept in sigs else None

    return duplicate_flags(stage.name, stage.fields, dropped, batches, score)


def duplicate_flags(
    stage: str,
    fields: list[str],
    dropped: pa.Table,
    batches: Iterable[pa.Table],
    score: Callable[[str, str], float | None],
    what: str = "near duplicate",
) -> pa.Table:
    """One ``near_duplicate`` flag per record of ``dropped``: the kept record's and its own ``fields``
    joined (``text``), the member's fields one by one (an edit starts from them), a VQA record's image
    as a small metadata-free picture (``thumbnail``, a data: URI), and ``score(kept, member)``."""
    if dropped.num_rows == 0:
        return FLAG_SCHEMA.empty_table()
    wanted = set(dropped["id"].to_pylist()) | set(dropped["duplicate_of"].to_pylist())
    texts: dict[str, str] = {}
    thumbnails: dict[str, str | None] = {}
    uris: dict[str, str | None] = {}  # where each kept record was read: read again with its near duplicate
    members = set(dropped["id"].to_pylist())
    values: dict[str, dict[str, str | None]] = {}  # member -> its fields' values, for an edit to start from
    for batch in batches:
        picked = batch.filter(pc.is_in(batch["id"], pa.array(list(wanted), pa.string())))
        names = [f for f in fields if f in picked.column_names]
        parts = [pc.cast(picked[f], pa.string()) for f in names]
        joined = (
            pc.binary_join_element_wise(*parts, "\n", null_handling="skip").to_pylist()
            if parts
            else [""] * picked.num_rows
        )
        ids = picked["id"].to_pylist()
        texts.update(zip(ids, joined, strict=True))
        uris.update(zip(ids, pc.struct_field(picked["source"], "uri").to_pylist(), strict=True))
        if "image_bytes" in picked.column_names:
            thumbnails.update(zip(ids, map(thumbnail, picked["image_bytes"].to_pylist()), strict=True))
        columns = [part.to_pylist() for part in parts]
        for row, record in enumerate(ids):
            if record in members:
                values[record] = {name: column[row] for name, column in zip(names, columns, strict=True)}
    payloads, details = [], []
    for member, kept in zip(dropped["id"].to_pylist(), dropped["duplicate_of"].to_pylist(), strict=True):
        found = score(kept, member)
        sides = {
            "kept": {"id": kept, "text": texts.get(kept, ""), "uri": uris.get(kept)},
            "member": {"id": member, "text": texts.get(member, ""), "fields": values.get(member, {})},
        }
        for side, record in (("kept", kept), ("member", member)):
            if thumbnails.get(record):
                sides[side]["thumbnail"] = thumbnails[record]
        payloads.append(json.dumps({"cluster": kept, **sides, "similarity": found}))
        details.append(f"{what} of {kept}" + (f" (similarity {found:.2f})" if found is not None else ""))
    return pa.table(
        {
            "id": dropped["id"],
            "source": dropped["source"],
            "stage": pa.array([stage] * dropped.num_rows, pa.string()),
            "kind": pa.array(["near_duplicate"] * dropped.num_rows, pa.string()),
            "detail": pa.array(details, pa.string()),
            "payload": pa.array(payloads, pa.string()),
        },
        schema=FLAG_SCHEMA,
    )


THUMBNAIL_SIDE = 480  # pixels: the longer side of a record's image as the review page shows it


def thumbnail(data: bytes | None) -> str | None:
    """An image as the review page shows it: a JPEG (PNG when it has transparency) rebuilt from its
    pixels, its longer side at most ``THUMBNAIL_SIDE``, as a data: URI; None when it does not decode."""
    if not data:
        return None
    import base64

    from PIL import Image, UnidentifiedImageError

    from connectors.images import eight_bit, shows_through

    with warnings.catch_warnings():
        # The connector checked the picture against the recipe's max_pixels, which may be over Pillow's.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as opened:
                image = eight_bit(opened)  # a 16-bit scan, which Pillow's convert would show white
                image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
                clear = shows_through(image)
                picture = image.convert("RGBA" if clear else "RGB")
                buffer = io.BytesIO()
                picture.save(buffer, format="PNG" if clear else "JPEG", **({} if clear else {"quality": 80}))
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
            return None
    kind = "png" if clear else "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def with_published_texts(
    flags: pa.Table, scrub: Callable[[list[str | None], list[int]], list[str | None]], made_by: set[str]
) -> pa.Table:
    """The near-duplicate flags of the stages ``made_by`` with each text's redacted form beside it
    (``published_text``), for a recipe whose PII stage comes after them: their texts were taken before
    it, so they hold raw PII, and the review page shows roles that do not see PII the redacted form.
    The member's fields get theirs too (``published_fields``, scanned with its text as one record, so
    a value found in one is redacted in all): an edit by such a role starts from them."""
    ours = flag_payloads(flags, "near_duplicate", made_by)
    if not ours:
        return flags
    payloads = list(ours.values())
    kept_texts = list(dict.fromkeys(p["kept"]["text"] for p in payloads))
    # One scan: each kept text alone, each member's text with its fields as one record.
    members = [[p["member"]["text"], *p["member"].get("fields", {}).values()] for p in payloads]
    scrubbed = scrubbed_as_records(scrub, [[text] for text in kept_texts] + members)
    published = {text: kept for text, (kept,) in zip(kept_texts, scrubbed[: len(kept_texts)], strict=True)}
    for payload, (text, *fields) in zip(payloads, scrubbed[len(kept_texts) :], strict=True):
        payload["kept"]["published_text"] = published[payload["kept"]["text"]]
        payload["member"]["published_text"] = text
        if fields:
            payload["member"]["published_fields"] = dict(zip(payload["member"]["fields"], fields, strict=True))
    return with_payloads(flags, ours)


# --- images ----------------------------------------------------------------------------------------


def _phash(data: bytes | None) -> int | None:
    import imagehash
    from PIL import Image, UnidentifiedImageError

    from connectors.images import eight_bit

    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            return int(str(imagehash.phash(eight_bit(image))), 16)
    except (UnidentifiedImageError, OSError):
        return None


class ImageNearDedup:
    """Records whose images' 64-bit perceptual hashes differ in at most ``max_distance`` bits, and, with
    ``question`` (a column), whose questions are the same normalised text, form one cluster. Several
    questions about one image are separate examples, so by default only a repeated question about a
    near-duplicate image is one.

    Keys: the hash cut into ``max_distance + 1`` bands of widths differing by at most one bit (an
    empty band would be one key every record shares); by the pigeonhole principle two hashes within
    the distance agree exactly on at least one band, so no close pair is missed. Each band key is
    mixed with the question's hash, so only rows with the same question share one.
    """

    # Part of the stored signatures' params (``signature_params``): raised when the hashes or band
    # keys change, so a run does not compare its signatures with ones made the old way.
    # 2: 16-bit images hashed from their 8-bit rendering (``eight_bit``), bands of even widths.
    SIGNATURE_VERSION = 2

    name = "image_near_dedup"
    reason = "near_duplicate_image"

    def __init__(
        self,
        column: str = "image_bytes",
        max_distance: int = 6,
        question: str | None = None,
        kept_apart: Mapping[str, Collection[str]] | None = None,
        *,
        name: str | None = None,
    ) -> None:
        self.name = name or self.name  # a second stage of its type in the recipe: ``own_name``
        self.column, self.max_distance, self.question = column, max_distance, question
        self.bands = max_distance + 1
        self.signature_version = self.SIGNATURE_VERSION
        self.kept_apart = dict(kept_apart or {})  # as ``NearDedup.kept_apart``

    def check_columns(self, batch: pa.Table) -> None:
        """Raise ``StageSettingError`` where ``column`` holds no bytes: a carried input column of another type
        (the recipe check knows the records' own), a TypeError else. ``curation check`` asks it of the head of
        the input, the run of each batch it compares."""
        kind = batch.schema.field(self.column).type if self.column in batch.column_names else pa.binary()
        if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
            raise StageSettingError(
                f"{self.name} compares images in {self.column!r}, which holds {kind}, not an image's bytes: "
                "compare `image_bytes`"
            )

    def signatures(self, batch: pa.Table) -> pa.Table:
        self.check_columns(batch)
        data = batch[self.column].to_pylist() if self.column in batch.column_names else [None] * batch.num_rows
        hashes = [_phash(d) for d in data]
        asked = self._question_hashes(batch)
        # The last ``wider`` bands take one bit more: the top bit (pHash's DC term, set in almost every
        # image) must not be a band alone, a key nearly every record shares.
        width, wider = divmod(64, self.bands)
        narrow = self.bands - wider
        cuts = [(band * width + max(0, band - narrow), width + (band >= narrow)) for band in range(self.bands)]
        low = (1 << 58) - 1
        keys = [
            []
            if h is None
            else [(band << 58) | ((((h >> at) & ((1 << bits) - 1)) ^ q) & low) for band, (at, bits) in enumerate(cuts)]
            for h, q in zip(hashes, asked, strict=True)
        ]
        return pa.table(
            {
                "id": batch["id"],
                "source": batch["source"],
                "keys": pa.array(keys, pa.list_(pa.uint64())),
                "phash": pa.array(hashes, pa.uint64()),
                "question": pa.array(asked, pa.uint64()),
            }
        )

    def _question_hashes(self, batch: pa.Table) -> list[int]:
        if self.question is None:
            return [0] * batch.num_rows
        if self.question not in batch.column_names:
            raise StageError(
                f"{self.name} matches questions in column {self.question!r}, which the records do not have"
            )
        return xxh3_64(normalised_text(batch, [self.question], normalize=True)).to_pylist()

    def pairs(self, group: pa.Table) -> pa.Table:
        ids = group["id"].to_pylist()
        hashes = group["phash"].to_pylist()
        asked = group["question"].to_pylist() if "question" in group.column_names else [0] * len(ids)
        found = [
            (ids[i], ids[j])
            for i in range(len(ids))
            for j in range(i + 1, len(ids))
            if asked[i] == asked[j] and (hashes[i] ^ hashes[j]).bit_count() <= self.max_distance
        ]
        return pa.table({"a": [a for a, _ in found], "b": [b for _, b in found]}, schema=PAIR_SCHEMA)

    def close(self, one: pa.Table, others: pa.Table) -> np.ndarray:
        """Which of the signature rows ``others`` the row ``one`` is a near duplicate of, as ``pairs`` confirms."""
        (hashed,), hashes = one["phash"].to_pylist(), others["phash"].to_pylist()
        (asked,) = one["question"].to_pylist() if "question" in one.column_names else [0]
        questions = others["question"].to_pylist() if "question" in others.column_names else [0] * len(hashes)
        return np.array(
            [
                hashed is not None and h is not None and q == asked and (hashed ^ h).bit_count() <= self.max_distance
                for h, q in zip(hashes, questions, strict=True)
            ],
            bool,
        )

    def resolve(self, signatures: Iterable[pa.Table]) -> pa.Table:
        return resolve_duplicates(self, signatures)

    def review_flags(self, dropped: pa.Table, signatures: list[pa.Table], batches: Iterable[pa.Table]) -> pa.Table:
        """One ``near_duplicate`` flag per record set aside, with both images, questions and answers;
        the similarity is the share of equal bits of their perceptual hashes."""
        dropped = dropped.filter(pc.equal(dropped["reason"], self.reason))
        if dropped.num_rows == 0:
            return FLAG_SCHEMA.empty_table()
        ids = set(dropped["id"].to_pylist()) | set(dropped["duplicate_of"].to_pylist())
        wanted = pa.array(sorted(ids - {None}), pa.string())
        hashes: dict[str, int | None] = {}
        for table in signatures:
            picked = table.filter(pc.is_in(table["id"], value_set=wanted))
            hashes.update(zip(picked["id"].to_pylist(), picked["phash"].to_pylist(), strict=True))

        def score(kept: str, member: str) -> float | None:
            a, b = hashes.get(kept), hashes.get(member)
            return None if a is None or b is None else 1 - (a ^ b).bit_count() / 64

        fields = ["question", "answer"]
        return duplicate_flags(self.name, fields, dropped, batches, score, "near duplicate image")
