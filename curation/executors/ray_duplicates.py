"""The global step of a ``DuplicateStage``, distributed on Ray Data.

Signatures are computed where the rows are (``map_batches``), their ``keys`` exploded to one row
per key, rows that share a key brought together by a shuffle on the key (the one
``groupby(key)`` runs), and in each partition the stage confirms pairs among them. Only the pairs (few: one per duplicate) come back to the driver, which
joins them into clusters (connected components) and picks the kept record of each with the same
``set_aside_for_clusters`` the embedded executor uses, so both executors keep the same records.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from curation.executors.envelope import ENVELOPE_SCHEMA, carried, unpack
from curation.stages.base import DuplicateStage, GlobalStage
from curation.stages.duplicates import PAIR_SCHEMA, clusters_from_pairs, set_aside_for_clusters
from schemas.records import empty_set_aside

KEY = "_key"  # the exploded key column; a name no signature uses


@carried
def signatures_of(envelopes: pa.Table, stage: GlobalStage) -> Iterator[pa.Table]:
    """Per block of envelopes: the stage's signature rows of every kept row."""
    for data in envelopes["rows"].to_pylist():
        rows = unpack(data)
        if rows.num_rows:
            yield stage.signatures(rows)


@carried
def explode_keys(signatures: pa.Table) -> pa.Table:
    """One row per (key, signature row): the rows a shuffle on ``KEY`` brings together. Without the key
    list, which ``KEY`` replaces: copied into every row of a record (one per band), it was a third of
    what the shuffle moved for near-duplicates."""
    keys = signatures["keys"].combine_chunks()
    parents = pc.list_parent_indices(keys)
    exploded = signatures.drop_columns(["keys"]).take(parents)
    return exploded.append_column(KEY, pc.list_flatten(keys).cast(pa.uint64()))


@carried
def pairs_in_partition(rows: pa.Table, stage: DuplicateStage) -> pa.Table:
    """The stage's confirmed pairs in one shuffle partition, which holds every row of its keys.

    Grouping here is one vectorised pass (polars); only keys shared by two or more records reach
    ``stage.pairs``. (``groupby().map_groups()`` would call Python once per key, and almost every
    key is a singleton: a million calls for a million records.)
    """
    if rows.num_rows < 2:
        return PAIR_SCHEMA.empty_table()
    frame = pl.from_arrow(rows.select([KEY, "id"])).with_row_index("_row")
    shared = frame.group_by(KEY).agg(pl.col("_row"), pl.col("id").n_unique().alias("_ids")).filter(pl.col("_ids") > 1)
    found = [PAIR_SCHEMA.empty_table()]
    body = rows.drop_columns([KEY])
    for members in shared["_row"].to_list():
        group = body.take(pa.array(members, pa.uint32()))
        ids = group["id"].to_pylist()
        first = sorted({value: index for index, value in reversed(list(enumerate(ids)))}.values())
        found.append(stage.pairs(group.take(pa.array(first, pa.uint32()))).select(["a", "b"]).cast(PAIR_SCHEMA))
    return pa.concat_tables(found)


def shuffle_by_key(exploded):
    """Every row of a key in one partition: Ray's hash shuffle on a cluster, a sort on a few CPUs
    (the same two shuffles ``groupby().map_groups()`` runs, chosen the same way)."""
    from ray.data.context import ShuffleStrategy

    if exploded.context.shuffle_strategy in (ShuffleStrategy.HASH_SHUFFLE, ShuffleStrategy.SHUFFLE_V2):
        return exploded.repartition(partitions(), keys=[KEY])
    return exploded.sort(KEY)


@carried
def members_of(signatures: pa.Table, ids: pa.Array) -> pa.Table:
    return signatures.filter(pc.is_in(signatures["id"], value_set=ids)).select(["id", "source"])


@carried
def drop_rows(envelopes: pa.Table, drop: pa.Array, stage: Any = None) -> pa.Table:
    """The envelopes' kept rows less the ids set aside; side outputs were already handed over. A
    cross-run ``stage`` gives the kept rows their signatures to carry to the recorder."""
    from curation.executors.envelope import Letter, seal_all

    letters = []
    for data in envelopes["rows"].to_pylist():
        rows = unpack(data)
        if rows.num_rows and len(drop):
            rows = rows.filter(pc.invert(pc.is_in(rows["id"], value_set=drop)))
        if stage is not None and rows.num_rows:
            rows = stage.with_signatures(rows, stage.signatures(rows).drop_columns(["source"]))
        letters.append(Letter(rows=rows))
    return seal_all(letters) if letters else ENVELOPE_SCHEMA.empty_table()


def partitions() -> int:
    """Shuffle partitions: a couple per CPU (Ray's default of 200 drowns a small cluster in actors)."""
    import ray

    return max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))


def resolve_distributed(stage: DuplicateStage, kept) -> pa.Table:
    """The rows ``stage`` sets aside among the envelopes of ``kept`` (``SET_ASIDE_SCHEMA``)."""
    signatures = kept.map_batches(
        signatures_of, fn_kwargs={"stage": stage}, batch_format="pyarrow", batch_size=None
    ).materialize()
    if signatures.count() == 0:
        return empty_set_aside()
    earlier = (
        stage.earlier(signatures.take_batch(1, batch_format="pyarrow").schema) if hasattr(stage, "earlier") else None
    )
    if earlier is not None:  # cross-run dedup: published records join the shuffle (and sort first)
        import ray

        signatures = signatures.union(ray.data.from_arrow(earlier))
    exploded = signatures.map_batches(explode_keys, batch_format="pyarrow", batch_size=None)
    # batch_size=None: a whole partition per call, so no key's rows are split between calls.
    pairs_ds = shuffle_by_key(exploded).map_batches(
        pairs_in_partition, fn_kwargs={"stage": stage}, batch_format="pyarrow", batch_size=None
    )
    found = [t for t in pairs_ds.iter_batches(batch_size=None, batch_format="pyarrow") if t.num_rows]
    if not found:
        return empty_set_aside()
    pairs = pa.concat_tables([t.cast(PAIR_SCHEMA) for t in found])
    paired = pc.unique(pa.concat_arrays([pairs["a"].combine_chunks(), pairs["b"].combine_chunks()]))
    members = [
        t
        for t in signatures.map_batches(
            members_of, fn_kwargs={"ids": paired}, batch_format="pyarrow", batch_size=None
        ).iter_batches(batch_size=None, batch_format="pyarrow")
        if t.num_rows
    ]
    sources = pa.concat_tables(members)
    aside = set_aside_for_clusters(stage, clusters_from_pairs(sources["id"], pairs), sources)
    return stage.relabel(aside) if hasattr(stage, "relabel") else aside


@carried
def with_ids(table: pa.Table, ids: pa.Array) -> pa.Table:
    return table.filter(pc.is_in(table["id"], value_set=ids))


@carried
def rows_with_ids(envelopes: pa.Table, ids: pa.Array) -> Iterator[pa.Table]:
    """The kept rows of these envelopes whose id is one of ``ids``."""
    for data in envelopes["rows"].to_pylist():
        rows = unpack(data)
        if rows.num_rows:
            yield with_ids(rows, ids)


def review_flags(stage: GlobalStage, dropped: pa.Table, kept) -> pa.Table | None:
    """The stage's review flags for what it set aside: only the signatures and records those flags
    show (each set-aside row and the record it duplicates) travel to the driver."""
    make = getattr(stage, "review_flags", None)
    if make is None or dropped.num_rows == 0:
        return None
    ids = pc.unique(pa.concat_arrays([dropped["id"].combine_chunks(), dropped["duplicate_of"].combine_chunks()]))
    ids = pc.drop_null(ids)

    def gather(dataset) -> list[pa.Table]:
        blocks = dataset.iter_batches(batch_size=None, batch_format="pyarrow")
        return [block for block in blocks if block.num_rows]

    signatures = kept.map_batches(signatures_of, fn_kwargs={"stage": stage}, batch_format="pyarrow", batch_size=None)
    picked = gather(signatures.map_batches(with_ids, fn_kwargs={"ids": ids}, batch_format="pyarrow", batch_size=None))
    records = gather(kept.map_batches(rows_with_ids, fn_kwargs={"ids": ids}, batch_format="pyarrow", batch_size=None))
    return make(dropped, picked, records)
