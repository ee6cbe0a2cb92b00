"""The global step of a ``DuplicateStage``, distributed on Ray Data.

Signatures are computed where the rows are (``map_batches``) and kept there (materialised). Finding
which rows can be in a cluster needs only their keys: each key goes into a shuffle with a 64-bit
hash of its row's id, 16 bytes, not with the row's signature (a near-duplicate minhash is 512
bytes, and went once per band: about 19 KB a record at 32 bands). Each partition then holds every
row of its keys and names the rows of keys held by two or more: the candidates. Only their
signature rows come back to the driver, in input order, where the stage's own ``resolve`` confirms
pairs among them, joins them into clusters and picks the kept record of each, as on the embedded
executor. A row that is no candidate shares no key with another row: it forms no pair, so leaving
it out changes no cluster (a hash that two ids share only adds rows, which change nothing either).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from curation.executors.envelope import ENVELOPE_SCHEMA, carried, unpack
from curation.stages.base import DuplicateStage, GlobalStage
from schemas.hashing import xxh3_64
from schemas.records import empty_set_aside

KEY = "_key"  # a key of a signature row, in the shuffle
ROW = "_row"  # the 64-bit hash of that row's id


@carried
def signatures_of(envelopes: pa.Table, stage: GlobalStage) -> Iterator[pa.Table]:
    """Per block of envelopes: the stage's signature rows of every kept row (taken from the column that
    carries them, where ``attach_signatures`` computed them)."""
    for data in envelopes["rows"].to_pylist():
        rows = unpack(data)
        if rows.num_rows:
            yield signature_rows(stage, rows)


def signature_rows(stage: GlobalStage, rows: pa.Table) -> pa.Table:
    column = getattr(stage, "column", None) if hasattr(stage, "with_signatures") else None  # a cross-run stage's
    if column is None or column not in rows.column_names:
        return stage.signatures(rows)
    values = rows[column].combine_chunks()
    names = ["id", "source", *(field.name for field in values.type)]
    return pa.Table.from_arrays(
        [rows["id"].combine_chunks(), rows["source"].combine_chunks(), *values.flatten()], names
    )


def attach_signatures(envelopes: pa.Table, stage: Any) -> pa.Table:
    """A cross-run stage's signatures, computed once before its global step, on each kept row in the
    column that carries them to the recorder: the step reads them there (``signatures_of``) and the rows
    it keeps go on with them (``drop_rows``), as the embedded executor reuses what it computed."""
    from curation.executors.envelope import Letter, carrying_errors, collecting_notes, open_all, seal_all, taken

    def signed(letter: Letter, notes: list[list[Any]]) -> Letter:
        if letter.error is None and letter.rows.num_rows and stage.column not in letter.rows.column_names:
            rows = letter.rows
            letter.rows = stage.with_signatures(rows, stage.signatures(rows).drop_columns(["source"]))
            letter.notes += taken(notes)
        return letter

    def run() -> pa.Table:
        with collecting_notes() as notes:
            return seal_all([signed(letter, notes) for letter in open_all(envelopes)])

    return carrying_errors(run)


def row_hashes(signatures: pa.Table) -> pa.Array:
    return xxh3_64(signatures["id"])


@carried
def row_keys(signatures: pa.Table) -> pa.Table:
    """One (``KEY``, ``ROW``) row per key of each signature row: all the shuffle on keys moves."""
    keys = signatures["keys"].combine_chunks()
    rows = row_hashes(signatures).take(pc.list_parent_indices(keys))
    return pa.table({KEY: pc.list_flatten(keys).cast(pa.uint64()), ROW: rows})


@carried
def candidates_in_partition(rows: pa.Table) -> pa.Table:
    """The rows (hashes) of the keys held by two or more rows in a shuffle partition, which holds every
    row of its keys. One vectorised pass; almost every key is a singleton."""
    if rows.num_rows < 2:
        return pa.table({ROW: pa.array([], pa.uint64())})
    frame = pl.from_arrow(rows)
    return frame.filter(pl.col(KEY).is_duplicated()).select(pl.col(ROW).unique()).to_arrow()


def shuffle_by_key(exploded):
    """Every row of a key in one partition: Ray's hash shuffle on a cluster, a sort on a few CPUs
    (the same two shuffles ``groupby().map_groups()`` runs, chosen the same way)."""
    from ray.data.context import ShuffleStrategy

    if exploded.context.shuffle_strategy in (ShuffleStrategy.HASH_SHUFFLE, ShuffleStrategy.SHUFFLE_V2):
        return exploded.repartition(partitions(), keys=[KEY])
    return exploded.sort(KEY)


@carried
def holding_rows(signatures: pa.Table, rows: pa.Array) -> pa.Table:
    """The signature rows whose id hashes to one of ``rows``."""
    return signatures.filter(pc.is_in(row_hashes(signatures), value_set=rows))


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
        if stage is not None and rows.num_rows and stage.column not in rows.column_names:
            rows = stage.with_signatures(rows, stage.signatures(rows).drop_columns(["source"]))
        letters.append(Letter(rows=rows))
    return seal_all(letters) if letters else ENVELOPE_SCHEMA.empty_table()


def partitions() -> int:
    """Shuffle partitions: a couple per CPU (Ray's default of 200 drowns a small cluster in actors)."""
    import ray

    return max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))


def resolve_distributed(stage: DuplicateStage, kept) -> tuple[pa.Table, list[pa.Table]]:
    """The rows ``stage`` sets aside among the envelopes of ``kept`` (``SET_ASIDE_SCHEMA``), and the
    signature rows it compared (those of every record in a cluster: what its review flags show)."""
    signatures = kept.map_batches(
        signatures_of, fn_kwargs={"stage": stage}, batch_format="pyarrow", batch_size=None
    ).materialize()
    if signatures.count() == 0:
        return empty_set_aside(), []
    earlier = published_rows(stage, signatures)
    exploded = signatures.map_batches(row_keys, batch_format="pyarrow", batch_size=None)
    if earlier is not None:  # cross-run dedup: published records join the shuffle
        import ray

        exploded = exploded.union(ray.data.from_arrow(row_keys(earlier)))
    # batch_size=None: a whole partition per call, so no key's rows are split between calls.
    found = shuffle_by_key(exploded).map_batches(candidates_in_partition, batch_format="pyarrow", batch_size=None)
    shared = [t[ROW].combine_chunks() for t in found.iter_batches(batch_size=None, batch_format="pyarrow")]
    shared = pc.unique(pa.concat_arrays([pa.array([], pa.uint64()), *shared]))
    if len(shared) == 0:
        return empty_set_aside(), []
    # In input order (the executor preserves it), as the embedded executor's resolve sees them (a key held
    # by too many rows to compare all pairs takes its representatives in id order, whatever the order).
    chosen = signatures.map_batches(holding_rows, fn_kwargs={"rows": shared}, batch_format="pyarrow", batch_size=None)
    candidates = [t for t in chosen.iter_batches(batch_size=None, batch_format="pyarrow") if t.num_rows]
    if earlier is not None:
        return stage.resolve_among(holding_rows(earlier, shared), candidates), candidates
    return stage.resolve(candidates), candidates


@carried
def distinct_keys(signatures: pa.Table) -> pa.Table:
    return pa.table({KEY: pc.unique(pc.list_flatten(signatures["keys"]).cast(pa.uint64()))})


def published_rows(stage: DuplicateStage, signatures) -> pa.Table | None:
    """A cross-run stage's published signature rows (None for other stages, or none published): for a
    stage whose cluster is one key (exact dedup), only those holding one of this run's keys, as the
    embedded executor loads them (a scheduled run adding a few records to millions loads a few)."""
    if not hasattr(stage, "earlier"):
        return None
    keys = None
    if stage.loads_by_key:
        found = signatures.map_batches(distinct_keys, batch_format="pyarrow", batch_size=None)
        parts = [t[KEY].combine_chunks() for t in found.iter_batches(batch_size=None, batch_format="pyarrow")]
        keys = pc.unique(pa.concat_arrays([pa.array([], pa.uint64()), *parts]))
    return stage.earlier(signatures.take_batch(1, batch_format="pyarrow").schema, keys)


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


def review_flags(
    stage: GlobalStage, dropped: pa.Table, kept, compared: list[pa.Table] | None = None
) -> pa.Table | None:
    """The stage's review flags for what it set aside: only the signatures and records those flags
    show (each set-aside row and the record it duplicates) travel to the driver. ``compared``: the
    signature rows the resolve had on the driver, which hold those (else they are computed again)."""
    make = getattr(stage, "review_flags", None)
    if make is None or dropped.num_rows == 0:
        return None
    ids = pc.unique(pa.concat_arrays([dropped["id"].combine_chunks(), dropped["duplicate_of"].combine_chunks()]))
    ids = pc.drop_null(ids)

    def gather(dataset) -> list[pa.Table]:
        blocks = dataset.iter_batches(batch_size=None, batch_format="pyarrow")
        return [block for block in blocks if block.num_rows]

    if compared is not None:
        picked = [table for table in (with_ids(t, ids) for t in compared) if table.num_rows]
    else:
        signatures = kept.map_batches(
            signatures_of, fn_kwargs={"stage": stage}, batch_format="pyarrow", batch_size=None
        )
        picked = gather(
            signatures.map_batches(with_ids, fn_kwargs={"ids": ids}, batch_format="pyarrow", batch_size=None)
        )
    records = gather(kept.map_batches(rows_with_ids, fn_kwargs={"ids": ids}, batch_format="pyarrow", batch_size=None))
    return make(dropped, picked, records)
