"""The bytes behind an Arrow string column, as NumPy views (no copy): checks that look at every byte of a
column (ASCII, whitespace, quotes, colons, lengths) run as one vectorised pass over them, where Arrow's
kernels go value by value."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def string_buffers(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The offsets of ``array``'s values (``len(array) + 1`` of them) into its data, and the data: value i is
    ``data[offsets[i]:offsets[i + 1]]``. ``array`` is ``pa.string()`` or ``pa.large_string()``; a null's slot
    may span bytes (Arrow does not forbid it)."""
    _, offsets, data = array.buffers()
    width = np.int64 if pa.types.is_large_string(array.type) else np.int32
    ends = (
        np.frombuffer(offsets, width)[array.offset : array.offset + len(array) + 1]
        if offsets is not None
        else np.zeros(1, width)
    )
    return ends, np.frombuffer(data, np.uint8) if data is not None else np.empty(0, np.uint8)
