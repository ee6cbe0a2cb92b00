"""The global dedup step: clusters are connected components of confirmed pairs, and each keeps
its first record in input order whatever order the signatures arrive in."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from curation.stages.dedup import ExactDedup
from curation.stages.duplicates import clusters_from_pairs, resolve_duplicates
from schemas.config import RecipeError
from schemas.records import source_array


class Chain:
    """A stage whose pairs are given: a-b and b-c make one cluster even though a and c never meet."""

    name = "chain"
    reason = "near_duplicate"

    def __init__(self, pairs: set[frozenset[str]]) -> None:
        self.known = pairs

    def signatures(self, batch: pa.Table) -> pa.Table:
        raise NotImplementedError

    def pairs(self, group: pa.Table) -> pa.Table:
        ids = group["id"].to_pylist()
        found = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1 :] if frozenset((a, b)) in self.known]
        return pa.table(
            {"a": [a for a, _ in found], "b": [b for _, b in found]},
            schema=pa.schema([("a", pa.string()), ("b", pa.string())]),
        )

    def resolve(self, signatures):
        return resolve_duplicates(self, signatures)


def signature_table(rows: list[tuple[str, int, list[int]]]) -> pa.Table:
    return pa.table(
        {
            "id": [r[0] for r in rows],
            "source": source_array("files", "/in.jsonl", [r[1] for r in rows]),
            "keys": pa.array([r[2] for r in rows], pa.list_(pa.uint64())),
        }
    )


def test_transitive_pairs_form_one_cluster_keeping_the_earliest_line() -> None:
    rows = [("c", 3, [2]), ("a", 1, [1]), ("b", 2, [1, 2]), ("x", 4, [9]), ("y", 5, [9])]
    stage = Chain({frozenset("ab"), frozenset("bc")})
    for seed in range(5):
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        batches = [signature_table(shuffled[:2]), signature_table(shuffled[2:])]
        aside = resolve_duplicates(stage, batches)
        assert sorted(zip(aside["id"].to_pylist(), aside["duplicate_of"].to_pylist(), strict=True)) == [
            ("b", "a"),
            ("c", "a"),
        ]
        assert set(aside["reason"].to_pylist()) == {"near_duplicate"}


def test_clusters_from_pairs_only_lists_paired_ids() -> None:
    ids = pa.array(["a", "b", "c", "d"])
    clusters = clusters_from_pairs(ids, pa.table({"a": ["a", "c"], "b": ["b", "d"]}))
    by_id = dict(zip(clusters["id"].to_pylist(), clusters["cluster"].to_pylist(), strict=True))
    assert by_id["a"] == by_id["b"] != by_id["c"] == by_id["d"]


def test_exact_dedup_keeps_first_of_normalised_variants() -> None:
    batch = pa.table(
        {
            "id": ["1", "2", "3", "4"],
            "source": source_array("files", "/in.jsonl", [1, 2, 3, 4]),
            "text": ["Hello  World", "something else", "hello world", "ＨＥＬＬＯ world"],
        }
    )
    stage = ExactDedup(["text"])
    aside = stage.resolve([stage.signatures(batch.slice(2)), stage.signatures(batch.slice(0, 2))])
    assert sorted(aside["id"].to_pylist()) == ["3", "4"]
    assert set(aside["duplicate_of"].to_pylist()) == {"1"}


def test_exact_dedup_on_a_field_the_records_lack_is_a_recipe_error_naming_the_setting() -> None:
    # Found on the first batch where the recipe cannot tell the records' columns (table rows).
    batch = pa.table({"id": ["1"], "source": source_array("files", "/in.jsonl", [1]), "prompt": ["Hi"]})
    with pytest.raises(RecipeError, match=r"exact_dedup fields: \['promt'\] are not .* they have \['prompt'\]"):
        ExactDedup(["promt"]).signatures(batch)
