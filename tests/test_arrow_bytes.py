"""``string_buffers``: the NumPy views the byte-level checks (dedup, profile, JSON lines, reader) share."""

from __future__ import annotations

import pyarrow as pa
import pytest

from schemas.arrow_bytes import string_buffers


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string()])
def test_each_value_is_its_slice_of_the_data_in_sliced_and_empty_arrays(kind: pa.DataType) -> None:
    values = ["", "héllo", None, "日本", "x" * 300, ""]
    array = pa.array(values, kind)
    for start, length in [(0, 6), (1, 3), (4, 2), (3, 0), (6, 0)]:
        part = array.slice(start, length)
        offsets, data = string_buffers(part)
        assert len(offsets) == length + 1
        texts = [bytes(data[offsets[i] : offsets[i + 1]]).decode() for i in range(length)]
        assert texts == [v or "" for v in values[start : start + length]]  # a null's slot here holds no bytes
    offsets, data = string_buffers(pa.array([], kind))
    assert offsets.tolist() == [0] and data.size == 0
