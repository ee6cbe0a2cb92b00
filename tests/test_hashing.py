"""Column hashing gives the xxhash package's values byte for byte: persisted ids and keys depend on it."""

from __future__ import annotations

import pyarrow as pa
import xxhash

from schemas.hashing import xxh3_64, xxh3_128_hex

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
