"""A generated corpus with known near-duplicates, for the near-dup test and benchmark.

Each original document is a few sentences of words drawn (Zipf-like) from a fixed vocabulary;
some get variants made by small edits: words replaced, a sentence inserted or deleted, two
sentences swapped. Others get a related but distinct document that shares about a third of their
sentences, which must not be merged. The truth is the cluster each document belongs to.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass


@dataclass
class Corpus:
    ids: list[str]
    texts: list[str]
    cluster: list[int]  # documents with the same number are near-duplicates of each other


def _vocabulary(seed: int, size: int = 5000) -> list[str]:
    """Distinct pronounceable words made of syllables (quicker than a word list, and as good here)."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "sh", "qu", "er", "an", "on"]
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choices(syllables, k=rng.randint(1, 4))))
    return sorted(words)


def _sentence(rng: random.Random, vocab: list[str], weights: list[float]) -> list[str]:
    return rng.choices(vocab, cum_weights=weights, k=rng.randint(8, 20))


def _edit(rng: random.Random, sentences: list[list[str]], vocab: list[str], weights: list[float]) -> list[list[str]]:
    """One near-duplicate: one or two small edits of the original."""
    out = [s[:] for s in sentences]
    for kind in rng.sample(["replace", "insert", "delete", "swap"], k=rng.randint(1, 2)):
        if kind == "replace":
            for s in out:
                for i in range(len(s)):
                    if rng.random() < 0.02:
                        s[i] = rng.choice(vocab)
        elif kind == "insert":
            out.insert(rng.randrange(len(out) + 1), _sentence(rng, vocab, weights))
        elif kind == "delete" and len(out) > 6:
            out.pop(rng.randrange(len(out)))
        elif kind == "swap" and len(out) > 1:
            i, j = rng.sample(range(len(out)), 2)
            out[i], out[j] = out[j], out[i]
    return out


def _render(sentences: list[list[str]]) -> str:
    return " ".join(" ".join(s).capitalize() + "." for s in sentences)


def generate(originals: int, duplicate_share: float = 0.3, seed: int = 7, related_share: float = 0.2) -> Corpus:
    """``originals`` documents; about ``duplicate_share`` of them get 1-3 near-duplicate variants, and
    ``related_share`` of the others a related but distinct document (a hard negative)."""
    rng = random.Random(seed)
    vocab = _vocabulary(seed)
    weights = list(itertools.accumulate(1.0 / (rank + 10) for rank in range(len(vocab))))
    items: list[tuple[str, int]] = []
    for number in range(originals):
        sentences = [_sentence(rng, vocab, weights) for _ in range(rng.randint(6, 14))]
        items.append((_render(sentences), number))
        if rng.random() < duplicate_share:
            for _ in range(rng.randint(1, 3)):
                items.append((_render(_edit(rng, sentences, vocab, weights)), number))
        elif rng.random() < related_share:
            # A hard negative: a different document that shares about a third of this one's sentences.
            related = [s if rng.random() < 0.35 else _sentence(rng, vocab, weights) for s in sentences]
            items.append((_render(related), originals + number))
    rng.shuffle(items)
    return Corpus(
        ids=[f"doc-{i:07d}" for i in range(len(items))],
        texts=[t for t, _ in items],
        cluster=[c for _, c in items],
    )


def score(corpus: Corpus, removed: dict[str, str]) -> tuple[float, float]:
    """(precision, recall) of a dedup result: ``removed`` maps each removed id to the id it duplicates.

    A removal is right when both are in the same true cluster; recall is over the records that should
    go (each true cluster keeps one).
    """
    cluster = dict(zip(corpus.ids, corpus.cluster, strict=True))
    right = sum(1 for member, kept in removed.items() if cluster[member] == cluster[kept])
    sizes: dict[int, int] = {}
    for c in corpus.cluster:
        sizes[c] = sizes.get(c, 0) + 1
    should = sum(size - 1 for size in sizes.values())
    precision = right / len(removed) if removed else 1.0
    recall = right / should if should else 1.0
    return precision, recall
