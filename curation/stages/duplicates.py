"""The global step shared by every deduplication stage: candidate groups by key, confirmed pairs,
connected components, one kept record per cluster.

The embedded executor runs ``resolve_duplicates`` in one process; a distributed executor runs the
same ``DuplicateStage.pairs`` per key group after a shuffle and the same ``set_aside_for_clusters``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from curation.stages.base import DuplicateStage
from schemas.records import SOURCE_TYPE, empty_set_aside, set_aside_rows

# The ids of published records' rows in a resolve across runs (``curation.stages.dedup_index``):
# "published:<version>:<record id>"; never a record's own id.
PUBLISHED_PREFIX = "published:"
# Such an id's parts, for Arrow's extract_regex and Python's re alike.
PUBLISHED_ID = rf"(?s)^{re.escape(PUBLISHED_PREFIX)}(?P<version>[^:]*):(?P<original>.*)"
PAIR_SCHEMA = pa.schema([pa.field("a", pa.string()), pa.field("b", pa.string())])


def one_key_each(keys: pa.Array) -> pa.ListArray:
    """The ``keys`` column of signature rows that hold one key each (exact dedup's content hash)."""
    return pa.ListArray.from_arrays(pa.array(np.arange(len(keys) + 1, dtype=np.int32)), keys)


def holds_one_key_each(keys: pa.Array | pa.ChunkedArray) -> bool:
    """Whether every row of a ``keys`` column holds exactly one key (False for no rows, or a null row)."""
    # Not skipping nulls: a null row's length is null, and the answer then null, not True.
    return len(keys) > 0 and bool(pc.all(pc.equal(pc.list_value_length(keys), 1), skip_nulls=False).as_py())


def candidate_groups(signatures: pa.Table) -> list[pa.Table]:
    """Signature rows grouped by shared key, only groups with two or more rows."""
    frame = pl.from_arrow(signatures.select(["keys"])).with_row_index("_row")  # only the keys: ids stay in Arrow
    exploded = frame.explode("keys")
    shared = exploded.group_by("keys").agg(pl.col("_row").unique().sort()).filter(pl.col("_row").list.len() > 1)
    # Near-duplicates share many keys (LSH bands): each distinct candidate set is checked once.
    shared = shared.unique("_row", maintain_order=True)
    # One take for all groups, then zero-copy slices: a take per group costs a pass over every chunk.
    groups = shared["_row"].to_list()
    ordered = signatures.take(pa.array([row for rows in groups for row in rows], pa.uint32()))
    starts = np.cumsum([0, *(len(rows) for rows in groups)])[:-1]
    return [ordered.slice(start, len(rows)) for start, rows in zip(starts, groups, strict=True)]


def clusters_from_pairs(ids: pa.Array | pa.ChunkedArray, pairs: pa.Table) -> pa.Table:
    """``id`` and ``cluster`` (a component number) for every id that is in at least one pair."""
    if pairs.num_rows == 0:
        return pa.table({"id": pa.array([], pa.string()), "cluster": pa.array([], pa.int64())})
    index = pl.DataFrame({"id": pl.Series(ids.to_pylist(), dtype=pl.String)}).with_row_index("n")
    edges = (
        pl.from_arrow(pairs)
        .join(index, left_on="a", right_on="id")
        .join(index, left_on="b", right_on="id", suffix="_b")
    )
    size = index.height
    graph = coo_matrix(
        (np.ones(edges.height, dtype=np.int8), (edges["n"].to_numpy(), edges["n_b"].to_numpy())), shape=(size, size)
    )
    _, labels = connected_components(graph, directed=False)
    members = np.unique(np.concatenate([edges["n"].to_numpy(), edges["n_b"].to_numpy()]))
    return pa.table(
        {"id": pa.array(index["id"].to_numpy()[members], pa.string()), "cluster": pa.array(labels[members], pa.int64())}
    )


def set_aside_for_clusters(stage: DuplicateStage, clusters: pa.Table, signatures: pa.Table) -> pa.Table:
    """Keep the first record of each cluster in input order; set the others aside, naming it. ``signatures``
    come in the input's order (the embedded executor's batches, Ray's with ``preserve_order``)."""
    if clusters.num_rows == 0:
        return empty_set_aside()
    # Only the clustered records' sources: converting every signature's source costs memory that grows with input.
    sources = signatures.select(["id", "source"]).filter(
        pc.is_in(signatures["id"], value_set=clusters["id"].combine_chunks())
    )
    members = (
        pl.from_arrow(sources)
        .unique("id", keep="first", maintain_order=True)
        .join(pl.from_arrow(clusters), on="id", maintain_order="left")
    )
    return keep_first(stage, members, signatures)


def keep_first(stage: DuplicateStage, members: pl.DataFrame, signatures: pa.Table | None = None) -> pa.Table:
    """``set_aside_for_clusters`` once each clustered record's ``source`` is known: ``members`` has
    ``id``, ``source`` and ``cluster`` (any value that is equal within a cluster), in the order the
    signatures came in (see ``set_aside_for_clusters``). A record in the stage's ``kept_apart`` (an annotator marked it "not a duplicate" of the records it maps to) is
    not set aside, unless it is a near copy of another record its cluster publishes (see
    ``_kept_apart``; ``signatures``, the stage's rows of the members, say which are near)."""
    if members.height == 0:
        return empty_set_aside()
    # In input order, the first member of a cluster is the one kept, and the rest are already in the
    # order they are set aside in: one sort. Records of one source, line and page (an HTML page's
    # sections, a PDF page's chunks) keep the order they came in, their order in the input: by id, the
    # kept one was any of them. Published records (``CrossRunDedup``) sort first by their URI.
    frame = (
        members.with_columns(
            pl.col("source").struct.field("uri").alias("_uri"),
            pl.col("source").struct.field("line").alias("_line"),
            pl.col("source").struct.field("page").alias("_page"),
        )
        .sort(["_uri", "_line", "_page"], nulls_last=True, maintain_order=True)
        .with_columns(pl.col("id").first().over("cluster").alias("kept"))
    )
    dupes = frame.filter(pl.col("id") != pl.col("kept"))
    kept_apart = getattr(stage, "kept_apart", None)
    if kept_apart:
        dupes = _kept_apart(stage, frame, dupes, kept_apart, signatures)
    dupes = dupes.select("id", "source", "kept", pl.concat_str(pl.lit("duplicate of "), "kept").alias("detail"))
    table = dupes.to_arrow().cast(
        pa.schema([("id", pa.string()), ("source", SOURCE_TYPE), ("kept", pa.string()), ("detail", pa.string())])
    )
    return set_aside_rows(
        table["id"].combine_chunks(),
        table["source"],
        stage.name,
        "duplicate",
        stage.reason,
        table["detail"].combine_chunks(),
        duplicate_of=table["kept"].combine_chunks(),
    )


def _kept_apart(
    stage: DuplicateStage,
    frame: pl.DataFrame,
    dupes: pl.DataFrame,
    kept_apart: Mapping[str, Iterable[str]],
    signatures: pa.Table | None,
) -> pl.DataFrame:
    """``dupes`` (``frame``'s members set aside, in input order) less the records annotators kept apart.

    A decision is on a pair: the record is not a copy of the one its item showed. So in input order, a
    record kept apart is published unless it is near (``stage.close`` on their signature rows) a record
    its cluster already publishes (the kept one, one published in an earlier version, one kept apart
    before it) that it was not kept apart from: then it is set aside as a copy of that one, which its
    review flag shows, and the annotator can mark it not a duplicate of that one too. The others of
    its cluster keep the record they kept (and stay set aside): the clusters are made as before.

    A pair holds both ways: the record the item kept is not a copy of the one kept apart from it either,
    for when it comes later in a cluster (read again alone, the other one published: it sorts first)."""
    kept_apart = _both_ways(kept_apart)
    asked = dupes.filter(pl.col("id").is_in(sorted(kept_apart)))
    if asked.height == 0:
        return dupes
    clusters = frame.filter(pl.col("cluster").is_in(asked["cluster"].unique().implode()))
    published = {
        cluster: [record for record in (kept, *ids_in) if record == kept or record.startswith(PUBLISHED_PREFIX)]
        for cluster, kept, ids_in in clusters.group_by("cluster", maintain_order=True)
        .agg(pl.col("kept").first(), pl.col("id"))
        .iter_rows()
    }
    copy_of = _copies(stage, asked, kept_apart, published, clusters["id"].to_list(), signatures)
    decided = pl.DataFrame(
        {"id": list(copy_of), "_copy_of": list(copy_of.values())}, schema={"id": pl.String, "_copy_of": pl.String}
    )
    dupes = dupes.join(decided, on="id", how="left", maintain_order="left")
    dupes = dupes.filter(~pl.col("id").is_in(decided["id"].implode()) | pl.col("_copy_of").is_not_null())
    return dupes.with_columns(pl.coalesce("_copy_of", "kept").alias("kept")).drop("_copy_of")


def _copies(
    stage: DuplicateStage,
    asked: pl.DataFrame,
    kept_apart: Mapping[str, set[str]],
    published: dict[Any, list[str]],
    ids: list[str],
    signatures: pa.Table | None,
) -> dict[str, str | None]:
    """Each record kept apart (``asked``, in input order, with its ``cluster``) -> the record its cluster
    publishes that it is a copy of, or None when it is published (then added to ``published``, per
    cluster the records it publishes so far; ``ids``: the clusters' members)."""
    holding: dict[str, list[str]] = {}  # a record id -> the members holding it (itself, its published rows)
    for member in ids:
        holding.setdefault(_original(member), []).append(member)
    close = getattr(stage, "close", None)
    found, row = pa.table({}), {}  # the members' signature rows, and each member's row in them
    if close is not None and signatures is not None:
        found = signatures.filter(pc.is_in(signatures["id"], value_set=pa.array(ids, pa.string()))).combine_chunks()
        row = {record: n for n, record in enumerate(found["id"].to_pylist())}
    copy_of: dict[str, str | None] = {}  # a record kept apart -> the record it is a copy of (None: published)
    # Each record kept apart is compared with every record its cluster published before it; the loop
    # does that in a few calls over the published rows (no table of them rebuilt one row at a time):
    # a cluster of thousands of records kept apart would otherwise spend its time in Python.
    for record, cluster in asked.select("id", "cluster").iter_rows():
        apart = {record, *(member for other in kept_apart[record] for member in holding.get(other, ()))}
        others = list(itertools.filterfalse(apart.__contains__, published[cluster]))
        if others and record in row and row.keys() >= set(others):
            near = close(found.slice(row[record], 1), found.take(list(map(row.__getitem__, others))))
            others = list(itertools.compress(others, near))
        copy_of[record] = others[0] if others else None
        if not others:
            published[cluster].append(record)
    return copy_of


def _both_ways(kept_apart: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    """Each record of a pair an annotator kept apart -> the records it was kept apart from, either side."""
    pairs: dict[str, set[str]] = {}
    for record, others in kept_apart.items():
        pairs.setdefault(record, set()).update(others)
        for other in others:
            pairs.setdefault(other, set()).add(record)
    return pairs


def _original(record: str) -> str:
    """The record id of a published row's id (``CrossRunDedup``); any other id as it is."""
    published = re.match(PUBLISHED_ID, record)
    return published["original"] if published else record


def resolve_duplicates(stage: DuplicateStage, signatures: Iterable[pa.Table]) -> pa.Table:
    tables = [t for t in signatures if t.num_rows]
    if not tables:
        return empty_set_aside()
    everything = pa.concat_tables(tables)
    found = [stage.pairs(group) for group in candidate_groups(everything)]
    pairs = (
        pa.concat_tables([p.select(["a", "b"]).cast(PAIR_SCHEMA) for p in found])
        if found
        else PAIR_SCHEMA.empty_table()
    )
    return set_aside_for_clusters(stage, clusters_from_pairs(everything["id"], pairs), everything)
