"""xxh3 over whole Arrow columns, giving exactly the values of the ``xxhash`` package.

Ids, dedup keys and split sides are persisted (review decisions are keyed by id, the cross-run
index holds content hashes), so their hash must never change with a library upgrade: xxh3's output
is fixed by its specification. polars-hash computes it in Rust over a whole column, where a Python
call per record cost more than everything else a run does to that record.
"""

from __future__ import annotations

import binascii

import numpy as np
import polars as pl
import polars_hash as plh
import pyarrow as pa
import pyarrow.compute as pc

Column = pa.Array | pa.ChunkedArray


# The 128-bit digest as an integer (cheaper than as 16 binary bytes, which polars builds one row at a
# time), and its halves: ``high`` is the digest's first 8 bytes read big-endian, ``low`` the last 8.
_DIGEST = plh.col("value").nchash.xxh3_128().alias("digest")
_HALVES = (
    (pl.col("digest") // pl.lit(1 << 64, pl.UInt128)).cast(pl.UInt64).alias("high"),
    pl.col("digest").cast(pl.UInt64, wrap_numerical=True).alias("low"),
)


def _hashed(column: Column, expression: pl.Expr) -> pl.DataFrame:
    return pl.DataFrame({"value": pl.from_arrow(column)}).select(expression)


def prefixed(prefix: str | bytes, column: Column) -> Column:
    """``prefix`` put before each value of a string or binary column (a null stays null), as a hash takes a
    seed or a record's place: about a third of the CPU of ``binary_join_element_wise``, which builds each
    value from a list of pieces."""
    return pc.binary_replace_slice(column, 0, 0, prefix)


def xxh3_64(column: Column) -> pa.Array:
    """``xxhash.xxh3_64_intdigest`` of each value's UTF-8 (or raw) bytes, as uint64; null stays null."""
    if len(column) == 0:
        return pa.array([], pa.uint64())
    return _hashed(column, plh.col("value").nchash.xxh3_64()).to_series().to_arrow()


def xxh3_128_hex(column: Column) -> pa.Array:
    """``xxhash.xxh3_128_hexdigest`` of each value's UTF-8 (or raw) bytes, as strings; null stays null."""
    return hex_digests(*xxh3_128_digests(column))


def xxh3_128_digests(column: Column) -> tuple[np.ndarray, np.ndarray | None]:
    """``xxhash.xxh3_128_digest`` of each value as a row of a new (n, 2) big-endian uint64 array (its first
    half, then its second), and which values are null (None where none is; their row is zeros)."""
    digests = np.zeros((len(column), 2), ">u8")
    if len(column) == 0:
        return digests, None
    halves = _hashed(column, _DIGEST).select(*_HALVES)
    null = None
    if column.null_count:
        null = halves.select(pl.col("high").is_null()).to_series().to_numpy()
        halves = halves.fill_null(0)
    digests[:, 0], digests[:, 1] = halves.to_series(0).to_numpy(), halves.to_series(1).to_numpy()
    return digests, null


def hex_digests(digests: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    """``xxh3_128_digests``' rows as 32 lowercase hex digits each (null where ``null`` says)."""
    if 32 * len(digests) > np.iinfo(np.int32).max:  # a string array's offsets would wrap: refused, not corrupt
        raise pa.ArrowInvalid(f"{len(digests)} hex digests exceed a string array's 2 GiB")
    return pa.StringArray.from_buffers(
        len(digests),
        pa.py_buffer(np.arange(0, 32 * len(digests) + 1, 32, dtype=np.int32)),
        pa.py_buffer(binascii.hexlify(digests)),  # bytes' own hex: polars' bin.encode cost 4 times as much
        None if null is None else pa.py_buffer(np.packbits(~null, bitorder="little")),
    )
