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


# The 128-bit digest as 16 bytes, most significant first: its hex is ``xxh3_128_hexdigest``.
_DIGEST = plh.col("value").nchash.xxh3_128(return_binary=True, byte_order="big")


def _hashed(column: Column, expression: pl.Expr) -> pl.DataFrame:
    return pl.DataFrame({"value": pl.from_arrow(column)}).select(expression)


def xxh3_64(column: Column) -> pa.Array:
    """``xxhash.xxh3_64_intdigest`` of each value's UTF-8 (or raw) bytes, as uint64; null stays null."""
    if len(column) == 0:
        return pa.array([], pa.uint64())
    return _hashed(column, plh.col("value").nchash.xxh3_64()).to_series().to_arrow()


def xxh3_128_hex(column: Column) -> pa.Array:
    """``xxhash.xxh3_128_hexdigest`` of each value's UTF-8 (or raw) bytes, as strings."""
    if len(column) == 0:
        return pa.array([], pa.string())
    return _hashed(column, _DIGEST.bin.encode("hex")).to_series().to_arrow().cast(pa.string())


def xxh3_128_hex_keyed(column: Column) -> tuple[pa.Array, pa.Array]:
    """``xxh3_128_hex`` of each value and the digest's first 16 hex digits as a uint64 (a key to count equal
    values by), from one hash of the column; null stays null."""
    if len(column) == 0:
        return pa.array([], pa.string()), pa.array([], pa.uint64())
    digest = pl.col("digest")
    both = _hashed(column, _DIGEST.alias("digest")).select(  # hashed once, read two ways
        digest.bin.encode("hex").alias("hex"),
        digest.bin.slice(0, 8).bin.reinterpret(dtype=pl.UInt64, endianness="big").alias("key"),
    )
    return both.to_series(0).to_arrow().cast(pa.string()), both.to_series(1).to_arrow()
