"""Annotators' decisions, applied by the next run: rejected records are filtered with reason
``review``, edited fields take the annotator's value, and records marked "not a duplicate" are counted
here (the near-duplicate stages get them when built, ``kept_apart``, and publish them). It runs right after record validation,
so edits go through every later stage (PII redaction included) like any other content."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from curation.review.decisions import DecisionMark, RunDecisions, run_decisions
from curation.review.rejected_content import content_keys
from curation.stages.base import StageResult, split_by_mask
from curation.stages.duplicates import one_key_each
from curation.state import read_state
from schemas.records import SIGNATURE_COLUMN_PREFIX, dedup_fields, set_aside_rows


def load_decisions(state_url: str, dataset: str, as_of: DecisionMark | None = None) -> RunDecisions:
    """The dataset's decisions in force (now, or as of ``as_of``); none when the state store does not exist yet."""
    return read_state(state_url, lambda engine: run_decisions(engine, dataset, as_of), RunDecisions())


class ReviewDecisions:
    """Set aside rejected records, and records holding a rejected record's content, and apply field
    edits; decisions are read once, when built.

    With the record ``kind``, a rejection covers the record's content (``content_keys``), whichever input
    or copy it comes from; ``learned`` collects the content keys of rejected records this stage met, for
    the pipeline to keep once the run publishes (``curation.review.rejected_content``)."""

    name = "review"

    def __init__(self, decisions: RunDecisions, kind: str | None = None) -> None:
        self.decisions = decisions  # the run's one reading: the PII stage and carried records get the same
        self.kind = kind
        self.rejected = pa.array(sorted(decisions.rejected), pa.string())
        self.edits = decisions.edits
        self.edited_ids = pa.array(sorted(decisions.edits), pa.string())
        # A not-PII mark is an edit too (the PII stage whose item it was applies it), counted as carry counts it.
        marked = {record for in_stage in decisions.undone_in.values() for record in in_stage}
        self.marked_ids = pa.array(sorted(marked), pa.string())
        self.kept_apart_ids = pa.array(sorted(decisions.kept_apart), pa.string())
        self.content = dict(decisions.rejected_content)  # content key -> the rejected record
        self.learned: dict[str, int] = {}
        self.attach: str | None = None  # the column that takes each kept record's content key (ContentKeys)

    @classmethod
    def from_state(
        cls, state_url: str, dataset: str, as_of: DecisionMark | None = None, kind: str | None = None
    ) -> ReviewDecisions:
        return cls(load_decisions(state_url, dataset, as_of), kind)

    def __call__(self, batch: pa.Table) -> StageResult:
        keys = (
            content_keys(batch, self.kind)
            if self.kind is not None and (self.attach or self.decisions.rejected)
            else None
        )
        result = self._decide(batch, keys)
        if self.attach is not None and keys is not None and result.kept.num_rows:
            # The kept rows' keys travel to the signature recorder (``ContentKeys``), as dedup's do.
            kept_keys = keys.filter(pc.is_in(batch["id"].combine_chunks(), value_set=result.kept["id"]))
            column = pa.StructArray.from_arrays([one_key_each(kept_keys)], names=["keys"])
            result.kept = result.kept.append_column(self.attach, column)
        return result

    def _kept_apart(self, batch: pa.Table) -> dict[str, int]:
        """How many of the batch's records have a "not a duplicate" decision in force."""
        if len(self.kept_apart_ids) == 0:
            return {}
        count = pc.sum(pc.is_in(batch["id"], value_set=self.kept_apart_ids).cast(pa.int64())).as_py() or 0
        return {"kept_apart": count} if count else {}

    def _decide(self, batch: pa.Table, keys: pa.Array | None) -> StageResult:
        if len(self.rejected) == 0 and len(self.edited_ids) == 0 and len(self.marked_ids) == 0:
            return StageResult(kept=batch, stats=self._kept_apart(batch))
        by_id = pc.is_in(batch["id"], value_set=self.rejected)
        of = self._same_content(batch, by_id, keys)
        keep = pc.and_(pc.invert(by_id), pc.is_null(of))
        kept, rejected = split_by_mask(batch, keep)
        of = of.filter(pc.invert(keep))
        ids = rejected["id"].to_pylist()
        copy_of = self.decisions.copy_of
        # A copy filtered before (now in ``rejected`` by its id) still names the record it copies.
        originals = [
            copy_of.get(record) if found is None else found for record, found in zip(ids, of.to_pylist(), strict=True)
        ]
        set_aside = self.set_aside(rejected, originals)
        kept, applied, skipped = self._apply_edits(kept)
        marked = kept["id"].filter(pc.is_in(kept["id"], value_set=self.marked_ids)).to_pylist()
        edited = len(applied.union(marked))
        copies = sum(1 for original in originals if original is not None)
        stats = {
            name: count
            for name, count in (
                ("rejected", rejected.num_rows - copies),
                ("rejected_content", copies),
                ("edited", edited),
            )
            if count
        }
        if skipped:
            stats["edits_skipped"] = skipped
        stats.update(self._kept_apart(kept))
        return StageResult(kept=kept, set_aside=set_aside, stats=stats)

    def set_aside(self, rejected: pa.Table, originals: list[str | None]) -> pa.Table:
        """The set-aside rows of ``rejected`` records: each rejected itself (``None``), or holding the
        content of the rejected record ``originals`` names."""
        return set_aside_rows(
            rejected["id"],
            rejected["source"],
            self.name,
            "filtered",
            "review",
            [
                "rejected by an annotator"
                if original is None
                else f"holds the content of {original}, rejected by an annotator"
                for original in originals
            ],
            duplicate_of=originals,
        )

    def keys_unknown(self) -> set[str]:
        """The rejected records whose content key the stage does not know (nor are copies)."""
        known = self.decisions.copy_of.keys() | set(self.content.values()) | self.learned.keys()
        return set(self.decisions.rejected) - known if self.kind is not None else set()

    def know(self, keys: dict[str, int]) -> None:
        """Content keys of rejected records (record -> key) found before the run reads anything."""
        for record, key in keys.items():
            self.content.setdefault(key, record)
            self.learned.setdefault(record, key)

    def _same_content(self, batch: pa.Table, by_id: pa.Array, keys: pa.Array | None) -> pa.Array:
        """Per record, the rejected record whose content it holds (null for none, for the rejected records
        themselves, and for records with an edit in force). The content keys of records rejected by id
        join those known before, so a copy later in the run is caught too."""
        if keys is None:
            return pa.nulls(batch.num_rows, pa.string())
        for record, key in zip(batch["id"].filter(by_id).to_pylist(), keys.filter(by_id).to_pylist(), strict=True):
            if record not in self.decisions.copy_of:
                self.content.setdefault(key, record)
                self.learned.setdefault(record, key)
        if not self.content:
            return pa.nulls(batch.num_rows, pa.string())
        known = pa.array(list(self.content), pa.uint64())
        at = pc.index_in(keys, value_set=known)
        found = pa.array(list(self.content.values()), pa.string()).take(at)
        # A record an annotator edited is judged by its own decisions: the edit made it other content.
        own = pc.or_(by_id, pc.is_in(batch["id"], value_set=self.edited_ids))
        return pc.if_else(own, pa.scalar(None, pa.string()), found)

    def _apply_edits(self, batch: pa.Table) -> tuple[pa.Table, set[str], int]:
        """The batch with edited values; the records edited, and edits of unknown fields."""
        touched = pc.is_in(batch["id"], value_set=self.edited_ids)
        if not pc.any(touched).as_py():
            return batch, set(), 0
        ids = batch["id"].to_pylist()
        fields = {name for record in ids if record in self.edits for name in self.edits[record]}
        skipped = 0
        applied: set[str] = set()
        for name in sorted(fields):
            if name not in batch.column_names or name in ("id", "source"):
                skipped += sum(1 for record in ids if name in self.edits.get(record, {}))
                continue
            column = batch[name]
            values = column.to_pylist()
            for index, record in enumerate(ids):
                if name not in self.edits.get(record, {}):
                    continue
                try:
                    # Edits arrive as text; a typed column (a table row's amount) takes them cast back.
                    values[index] = pc.cast(pa.array([self.edits[record][name]], pa.string()), column.type)[0].as_py()
                    applied.add(record)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    skipped += 1
            batch = batch.set_column(batch.column_names.index(name), name, pa.array(values, column.type))
        return batch, applied, skipped


class ContentKeys:
    """Stores, with the published signatures (stage ``review_content``), the content key of each record
    the review stage let through, as it read it: a record rejected once it is published (carried) has
    its key found there. Only for recipes where no default ``exact_dedup`` ahead of ``clean`` and
    ``pii`` stores the same key (``stores_content_keys``). Used by ``SignatureRecorder`` as it uses a
    cross-run dedup stage."""

    name = "review_content"

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.params = default_content_params(kind)
        self.column = f"{SIGNATURE_COLUMN_PREFIX}{self.name}"

    def signatures(self, batch: pa.Table) -> pa.Table:
        keys = one_key_each(content_keys(batch, self.kind))
        return pa.table({"id": batch["id"], "source": batch["source"], "keys": keys})

    def to_record(self, batch: pa.Table) -> tuple[pa.Table, pa.Table]:
        """The signature rows of ``batch`` (without ``source``), and the batch without the column."""
        if self.column not in batch.column_names:  # a stage rebuilt the batch: keys of the text as it is now
            return self.signatures(batch).drop_columns(["source"]), batch
        keys = batch[self.column].combine_chunks().field("keys")
        return pa.table({"id": batch["id"].combine_chunks(), "keys": keys}), batch.drop_columns([self.column])


def default_content_params(kind: str) -> str:
    """The signature settings of a default ``exact_dedup`` of records of ``kind``: content keys use them."""
    from curation.stages.dedup import ExactDedup
    from curation.stages.dedup_index import signature_params

    return signature_params(ExactDedup(dedup_fields(kind)))


def stores_content_keys(stages: list[object], kind: str) -> bool:
    """Whether a default cross-run ``exact_dedup``, with no stage rewriting text ahead of it, stores every
    published record's content key as the review stage computes it."""
    params = default_content_params(kind)
    for stage in stages:
        if getattr(stage, "rewrites_text", False):
            return False
        if getattr(stage, "name", None) == "exact_dedup" and getattr(stage, "params", None) == params:
            return True
    return False
