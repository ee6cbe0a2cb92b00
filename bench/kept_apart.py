"""Records kept apart in one near-duplicate cluster: ``_kept_apart`` against the code it replaced.

    python bench/kept_apart.py [--records 2000]

One cluster: a record and ``--records`` near copies of it, each marked "not a duplicate" of it by an
annotator and near few of the others, so most are published and every later one is compared with
all those published before it (``NearDedup.close``). The baseline is the loop as it was (``_copies``):
it concatenated the cluster's published signature rows again, one one-row table each, for every
record kept apart. Both run on one core, timed by this process's CPU time; their results must be equal.
"""

from __future__ import annotations

import os

os.environ.setdefault("POLARS_MAX_THREADS", "1")  # one core for both sides; must precede the import

import argparse
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation.stages import duplicates
from curation.stages.duplicates import _original
from curation.stages.neardup import NearDedup

PERMS = 128


def before(
    stage: NearDedup,
    asked: pl.DataFrame,
    kept_apart: Mapping[str, set[str]],
    published: dict[Any, list[str]],
    ids: list[str],
    signatures: pa.Table | None,
) -> dict[str, str | None]:
    """``curation.stages.duplicates._copies`` as it was: the published rows concatenated for each record."""
    found = signatures.filter(pc.is_in(signatures["id"], value_set=pa.array(ids, pa.string())))
    rows = {record: found.slice(n, 1) for n, record in enumerate(found["id"].to_pylist())}
    copy_of: dict[str, str | None] = {}
    for record, cluster in asked.select("id", "cluster").iter_rows():
        apart = set(kept_apart[record])
        others = [other for other in published[cluster] if _original(other) not in apart and other != record]
        if others and record in rows and all(other in rows for other in others):
            near = stage.close(rows[record], pa.concat_tables([rows[other] for other in others]))
            others = [other for other, is_near in zip(others, near, strict=True) if is_near]
        copy_of[record] = others[0] if others else None
        if not others:
            published[cluster].append(record)
    return copy_of


def cluster(records: int) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, set[str]], pa.Table]:
    """``a`` and ``records`` copies, each with a fifth of ``a``'s minhash bins its own: 0.8 alike to ``a``
    (near at 0.7), about 0.64 to each other (not near)."""
    rng = np.random.default_rng(0)
    sig = np.zeros((records + 1, PERMS), np.uint32)
    for n in range(1, records + 1):
        sig[n, rng.choice(PERMS, PERMS // 5, replace=False)] = n
    ids = ["a", *(f"r{n:06d}" for n in range(1, records + 1))]
    signatures = pa.table({"id": ids, "minhash": pa.FixedSizeListArray.from_arrays(pa.array(sig.ravel()), PERMS)})
    frame = pl.DataFrame({"id": ids, "cluster": [0] * len(ids), "kept": ["a"] * len(ids)})
    return frame, frame.filter(pl.col("id") != "a"), {record: {"a"} for record in ids[1:]}, signatures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    args = parser.parse_args()
    pa.set_cpu_count(1)
    stage = NearDedup(["text"], num_perm=PERMS, threshold=0.7)
    frame, dupes, kept_apart, signatures = cluster(args.records)
    timings = {}
    results = {}
    now = duplicates._copies
    for name, copies in (("before", before), ("now", now)):
        duplicates._copies = copies  # the rest of ``_kept_apart`` is the same for both
        start = time.process_time()
        results[name] = duplicates._kept_apart(stage, frame, dupes, kept_apart, signatures)
        timings[name] = time.process_time() - start
    duplicates._copies = now
    assert results["now"].equals(results["before"]), "the two disagree"
    published = args.records - results["now"].height
    print(f"one cluster: {args.records:,} records kept apart, {published:,} published")
    print(
        f"before: {timings['before']:.2f} s   now: {timings['now']:.2f} s   ratio before/now: "
        f"{timings['before'] / timings['now']:.1f}x"
    )


if __name__ == "__main__":
    main()
