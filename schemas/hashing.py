"""xxh3 over whole Arrow columns, giving exactly the values of the ``xxhash`` package.

Ids, dedup keys and split sides are persisted (review decisions are keyed by id, the cross-run
index holds content hashes), so their hash must never change with a library upgrade: xxh3's output
is fixed by its specification. polars-hash computes it in Rust over a whole column, where a Python
call per record cost more than everything else a run does to that record.
"""

from __future__ import annotations

import polars as pl
import polars_hash as plh
import pyarrow as pa

Column = pa.Array | pa.ChunkedArray


def _hashed(column: Column, expression: pl.Expr) -> pa.Array:
    frame = pl.DataFrame({"value": pl.from_arrow(column)})
    return frame.select(expression).to_series().to_arrow()


def xxh3_64(column: Column) -> pa.Array:
    """``xxhash.xxh3_64_intdigest`` of each value's UTF-8 (or raw) bytes, as uint64; null stays null."""
    if len(column) == 0:
        return pa.array([], pa.uint64())
    return _hashed(column, plh.col("value").nchash.xxh3_64())


def xxh3_128_hex(column: Column) -> pa.Array:
    """``xxhash.xxh3_128_hexdigest`` of each value's UTF-8 (or raw) bytes, as strings."""
    if len(column) == 0:
        return pa.array([], pa.string())
    digest = plh.col("value").nchash.xxh3_128(return_binary=True, byte_order="big")
    return _hashed(column, digest.bin.encode("hex")).cast(pa.string())


def xxh3_128_hex_keyed(column: Column) -> tuple[pa.Array, pa.Array]:
    """``xxh3_128_hex`` of each value and the digest's first 16 hex digits as a uint64 (a key to count equal
    values by), from one hash of the column; null stays null."""
    if len(column) == 0:
        return pa.array([], pa.string()), pa.array([], pa.uint64())
    digest = plh.col("value").nchash.xxh3_128(return_binary=True, byte_order="big").alias("digest")
    frame = pl.DataFrame({"value": pl.from_arrow(column)}).lazy().select(digest)
    both = frame.select(
        pl.col("digest").bin.encode("hex").alias("hex"),
        pl.col("digest").bin.slice(0, 8).bin.reinterpret(dtype=pl.UInt64, endianness="big").alias("key"),
    ).collect()
    return both.to_series(0).to_arrow().cast(pa.string()), both.to_series(1).to_arrow()
