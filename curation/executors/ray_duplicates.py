"""The global step of a ``DuplicateStage``, distributed on Ray Data.

Signatures are computed where the rows are (``map_batches``), their ``keys`` exploded to one row
per key, rows that share a key brought together by a shuffle (``groupby(key).map_groups``) where
the stage confirms pairs. Only the pairs (few: one per duplicate) come back to the driver, which
joins them into clusters (connected components) and picks the kept record of each with the same
``set_aside_for_clusters`` the embedded executor uses, so both executors keep the same records.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from curation.executors.envelope import ENVELOPE_SCHEMA, unpack
from curation.stages.base import DuplicateStage, GlobalStage
from curation.stages.duplicates import PAIR_SCHEMA, clusters_from_pairs, set_aside_for_clusters
from schemas.records import empty_set_aside

KEY = "_key"  # the exploded key column; a name no signature uses


def signatures_of(envelopes: pa.Table, stage: GlobalStage) -> Iterator[pa.Table]:
    """Per block of envelopes: the stage's signature rows of every kept row."""
    for data in envelopes["rows"].to_pylist():
        rows = unpack(data)
        if rows.num_rows:
            yield stage.signatures(rows)


def explode_keys(signatures: pa.Table) -> pa.Table:
    """One row per (key, signature row): the rows a shuffle on ``KEY`` brings together."""
    keys = signatures["keys"].combine_chunks()
    parents = pc.list_parent_indices(keys)
    exploded = signatures.take(parents)
    return exploded.append_column(KEY, pc.list_flatten(keys).cast(pa.uint64()))


def pairs_in_group(group: pa.Table, stage: DuplicateStage) -> pa.Table:
    """The stage's confirmed pairs among the rows that share one key (a row listed once)."""
    if group.num_rows < 2:
        return PAIR_SCHEMA.empty_table()
    ids = group["id"].to_pylist()
    first = sorted({value: index for index, value in reversed(list(enumerate(ids)))}.values())
    if len(first) < 2:
        return PAIR_SCHEMA.empty_table()
    members = group.take(pa.array(first, pa.int64())).drop_columns([KEY])
    return stage.pairs(members).select(["a", "b"]).cast(PAIR_SCHEMA)


def members_of(signatures: pa.Table, ids: pa.Array) -> pa.Table:
    return signatures.filter(pc.is_in(signatures["id"], value_set=ids)).select(["id", "source"])


def drop_rows(envelopes: pa.Table, drop: pa.Array) -> pa.Table:
    """The envelopes' kept rows less the ids set aside; side outputs were already handed over."""
    from curation.executors.envelope import Letter, seal_all

    letters = []
    for data in envelopes["rows"].to_pylist():
        rows = unpack(data)
        if rows.num_rows and len(drop):
            rows = rows.filter(pc.invert(pc.is_in(rows["id"], value_set=drop)))
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
    pairs_ds = (
        signatures.map_batches(explode_keys, batch_format="pyarrow", batch_size=None)
        .groupby(KEY, num_partitions=partitions())
        .map_groups(pairs_in_group, fn_kwargs={"stage": stage}, batch_format="pyarrow")
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
    return set_aside_for_clusters(stage, clusters_from_pairs(sources["id"], pairs), sources)
