"""Near-duplicate benchmark: our NearDedup stage against datasketch's MinHashLSH, same data, same run.

    python bench/dedup.py [--originals 20000] [--batch 10000]

The corpus (bench/corpus.py) has known near-duplicates (word replacements, inserted and deleted
sentences, swapped sentences). Both sides use the same text normalisation, word 3-gram shingles,
128 permutations and threshold 0.7; datasketch is used as its documentation shows for dedup
(``MinHash.update_batch`` per document, ``query`` then ``insert`` into ``MinHashLSH``). Everything runs
on one core: polars and Arrow thread pools are limited to one thread before they start, and time
is this process's CPU time (``time.process_time``), so other work on a shared machine does not skew
the ratio.
"""

from __future__ import annotations

import os

os.environ.setdefault("POLARS_MAX_THREADS", "1")  # one core for both sides; must precede the import
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import re
import sys
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.corpus import Corpus, generate, score
from curation.stages.neardup import NearDedup
from schemas.records import source_array

SHINGLE, PERMS, THRESHOLD = 3, 128, 0.7


def ours(corpus: Corpus, batch_rows: int) -> tuple[dict[str, str], float]:
    table = pa.table(
        {
            "id": corpus.ids,
            "source": source_array("files", "/bench.jsonl", list(range(1, len(corpus.ids) + 1))),
            "text": corpus.texts,
        }
    )
    stage = NearDedup(["text"], shingle_size=SHINGLE, num_perm=PERMS, threshold=THRESHOLD)
    start = time.process_time()
    signatures = [stage.signatures(table.slice(i, batch_rows)) for i in range(0, table.num_rows, batch_rows)]
    aside = stage.resolve(signatures)
    elapsed = time.process_time() - start
    return dict(zip(aside["id"].to_pylist(), aside["duplicate_of"].to_pylist(), strict=True)), elapsed


def datasketch_lsh(corpus: Corpus) -> tuple[dict[str, str], float]:
    from datasketch import MinHash, MinHashLSH

    words = re.compile(r"\w+")
    start = time.process_time()
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=PERMS)
    removed: dict[str, str] = {}
    order = {key: n for n, key in enumerate(corpus.ids)}
    for key, text in zip(corpus.ids, corpus.texts, strict=True):
        tokens = words.findall(text.lower())
        shingles = {" ".join(tokens[i : i + SHINGLE]).encode() for i in range(max(1, len(tokens) - SHINGLE + 1))}
        minhash = MinHash(num_perm=PERMS)
        minhash.update_batch(list(shingles))
        found = lsh.query(minhash)
        if found:
            removed[key] = min(found, key=order.__getitem__)  # keep the earliest, as our stage does
        else:
            lsh.insert(key, minhash)
    return removed, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--originals", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=10_000)
    args = parser.parse_args()
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    corpus = generate(args.originals)
    docs = len(corpus.ids)
    print(f"corpus: {docs:,} documents, {docs - len(set(corpus.cluster)):,} near-duplicates to remove")
    results = {}
    for name, run in (
        ("curation NearDedup", lambda: ours(corpus, args.batch)),
        ("datasketch MinHashLSH", lambda: datasketch_lsh(corpus)),
    ):
        removed, seconds = run()
        precision, recall = score(corpus, removed)
        results[name] = docs / seconds
        print(
            f"{name:24s} precision {precision:.3f}  recall {recall:.3f}  {seconds:7.2f} s CPU  {docs / seconds:9,.0f} docs/s"
        )
    ratio = results["curation NearDedup"] / results["datasketch MinHashLSH"]
    print(f"speed-up: {ratio:.1f}x datasketch's docs/s")


if __name__ == "__main__":
    main()
