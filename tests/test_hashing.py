"""Column hashing gives the xxhash package's values byte for byte: persisted ids and keys depend on it."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from schemas.hashing import prefixed, xxh3_64, xxh3_128_hex

# Lengths around xxh3's internal block sizes (16, 128, 240 bytes and its 1024-byte stripes), and non-ASCII.
TEXTS = ["", "a", "héllo wörld", "日本語のテキスト", "\U0001f600 emoji"] + [
    "x" * n for n in (15, 16, 17, 128, 129, 240, 241, 1025, 5000)
]


def test_64_bit_hashes_equal_xxhash() -> None:
    assert xxh3_64(pa.array(TEXTS)).to_pylist() == [xxhash.xxh3_64_intdigest(t.encode()) for t in TEXTS]
    as_binary = pa.chunked_array([pa.array([t.encode() for t in TEXTS[:3]], pa.binary()), pa.array([b"\xff\x00"])])
    assert xxh3_64(as_binary).to_pylist() == [
        xxhash.xxh3_64_intdigest(b) for b in [*(t.encode() for t in TEXTS[:3]), b"\xff\x00"]
    ]
    assert xxh3_64(pa.array([], pa.string())).type == pa.uint64()


def test_128_bit_hex_digests_equal_xxhash() -> None:
    assert xxh3_128_hex(pa.array(TEXTS)).to_pylist() == [xxhash.xxh3_128_hexdigest(t.encode()) for t in TEXTS]
    assert xxh3_128_hex(pa.array([], pa.string())).to_pylist() == []


def test_split_unit_hashes_equal_the_per_value_formula_for_every_column_layout() -> None:
    # Split sides are persisted (a record keeps its side in later versions): the column path must give
    # ``_unit_hash`` exactly, whatever layout the ids or group keys come in.
    from curation.split import _unit_hash, _unit_hashes

    seed = "sééd"
    expected = [_unit_hash(seed, text) for text in TEXTS]
    layouts = [
        pa.array(TEXTS, pa.string()),
        pa.array(TEXTS, pa.large_string()),
        pa.array(TEXTS, pa.string_view()),
        pa.array(["skipped", *TEXTS], pa.string()).slice(1),  # an offset into the buffers
        pa.chunked_array([pa.array(TEXTS[:4], pa.string()), pa.array([], pa.string()), pa.array(TEXTS[4:])]),
    ]
    for values in layouts:
        assert _unit_hashes(seed, values).to_pylist() == expected, values.type


def test_prefixed_values_equal_the_join_they_replace() -> None:
    # Nulls stay null (a VQA record without image bytes falls back to its id), binary stays binary.
    values = pa.chunked_array([pa.array(["a", None, ""]), pa.array(["日本", "x" * 300])])
    joined = pc.binary_join_element_wise("p\x1f", values, "")
    assert (
        prefixed("p\x1f", values).to_pylist()
        == joined.to_pylist()
        == ["p\x1fa", None, "p\x1f", "p\x1f日本", "p\x1f" + "x" * 300]
    )
    raw = pa.array([b"\xff\x00", None], pa.large_binary())
    assert prefixed(b"u\x1f0\x1f", raw).to_pylist() == [b"u\x1f0\x1f\xff\x00", None]
