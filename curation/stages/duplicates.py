"""The global step shared by every deduplication stage: candidate groups by key, confirmed pairs,
connected components, one kept record per cluster.

The embedded executor runs ``resolve_duplicates`` in one process; a distributed executor runs the
same ``DuplicateStage.pairs`` per key group after a shuffle and the same ``set_aside_for_clusters``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from curation.stages.base import DuplicateStage
from schemas.records import SOURCE_TYPE, empty_set_aside, set_aside_rows

PAIR_SCHEMA = pa.schema([pa.field("a", pa.string()), pa.field("b", pa.string())])


def one_key_each(keys: pa.Array) -> pa.ListArray:
    """The ``keys`` column of signature rows that hold one key each (exact dedup's content hash)."""
    return pa.ListArray.from_arrays(pa.array(np.arange(len(keys) + 1, dtype=np.int32)), keys)


def holds_one_key_each(keys: pa.Array | pa.ChunkedArray) -> bool:
    """Whether every row of a ``keys`` column holds exactly one key (False for no rows)."""
    return len(keys) > 0 and bool(pc.all(pc.equal(pc.list_value_length(keys), 1)).as_py())


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


def set_aside_for_clusters(stage: DuplicateStage, clusters: pa.Table, sources: pa.Table) -> pa.Table:
    """Keep the first record of each cluster in input order; set the others aside, naming it."""
    if clusters.num_rows == 0:
        return empty_set_aside()
    # Only the clustered records' sources: converting every signature's source costs memory that grows with input.
    sources = sources.select(["id", "source"]).filter(
        pc.is_in(sources["id"], value_set=clusters["id"].combine_chunks())
    )
    return keep_first(stage, pl.from_arrow(clusters).join(pl.from_arrow(sources).unique("id"), on="id"))


def keep_first(stage: DuplicateStage, members: pl.DataFrame) -> pa.Table:
    """``set_aside_for_clusters`` once each clustered record's ``source`` is known: ``members`` has
    ``id``, ``source`` and ``cluster`` (any value that is equal within a cluster). A record in the
    stage's ``kept_apart`` (ids an annotator marked "not a duplicate") is not set aside."""
    if members.height == 0:
        return empty_set_aside()
    order = ["_uri", "_line", "_page", "id"]
    # In input order, the first member of a cluster is the one kept, and the rest are already in the
    # order they are set aside in: one sort.
    frame = (
        members.with_columns(
            pl.col("source").struct.field("uri").alias("_uri"),
            pl.col("source").struct.field("line").alias("_line"),
            pl.col("source").struct.field("page").alias("_page"),
        )
        .sort(order, nulls_last=True)
        .with_columns(pl.col("id").first().over("cluster").alias("kept"))
    )
    dupes = frame.filter(pl.col("id") != pl.col("kept"))
    kept_apart = getattr(stage, "kept_apart", None)
    if kept_apart:
        # An annotator said "not a duplicate": the record is published. Taken out after the clusters are
        # made, so the others of its cluster keep the record they kept (and stay set aside).
        dupes = dupes.filter(~pl.col("id").is_in(sorted(kept_apart)))
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
