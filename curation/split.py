"""Train/validation splits: deterministic, optionally stratified by a label and grouped by a key.

- Plain: a record goes to validation when a hash of (seed, id) falls under the fraction, so reruns
  and any batch order agree, and nothing has to be remembered.
- Grouped (``group_by``): the same hash of the group key instead of the id, so every record of a
  customer or document lands on the same side.
- Stratified (``stratify_by``): hashing gives the fraction only on average, which leaves a rare
  label with no validation examples at all. So each label keeps a counter and the k-th unit
  (record, or group when grouped) of a label goes to validation when ``floor(k * f + phase)``
  steps up, which holds every label's validation share within one unit of the fraction. ``phase``
  comes from a hash of the seed and the label, so the seed still picks which units. This depends on
  the order records arrive in: the same input read in the same order always splits the same way.
  A group's side is fixed by its first record and kept for the rest of the run. The counters go on
  from the version a run extends (its manifest's ``split.dealt``): each run starting them at 0 dealt
  every label the same pattern again, and the rounding error grew with every run (a label with 3 records
  a run at 0.1 had none in validation after ten). So scheduled runs split as one run over all their
  records in that order would; a record of an input read again that keeps its side was counted when it
  was first dealt, and is not counted again.
- Across runs (``group_by``): the side each group went to is kept in the state store (``sides``), so a
  group that comes again in a later run (a customer's new transactions) joins the side its records
  already are on, whatever the order, seed or fraction now: a group is never on both sides of a version.
  So does a record of an input read again whole (a changed file) that a version of the chain holds (``keep_sides``:
  the latest that does, for a line deleted and restored since),
  or one written again under its id (an edited keyed SQL row, a VQA row whose image changed), and, VQA records
  being split by image, each image: a new question about a picture joins the side its earlier ones are on.
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
import re
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from itertools import compress
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from curation.stages.base import as_python
from schemas.config import RecipeError
from schemas.hashing import Column, prefixed, xxh3_64, xxh3_128_hex
from schemas.json_values import decimal_text

log = logging.getLogger("curation.split")
NO_VALUE = "(none)"  # how a missing label or group key is reported
_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")  # as Python writes an int
MAX_DEALT_LABELS = 100_000  # labels whose dealt counts a manifest keeps (``split.dealt``); past it, none


class SplitError(RecipeError):
    """The split settings do not fit the records (a column is missing): a recipe error, found on the
    first batch (the recipe cannot say which columns its input has)."""


def key_text(value: Any) -> str:
    """A group key's or label's text, the same for one value whichever file it came from: an object or
    array (a Parquet struct or list, a JSONL object, or its JSON text where the JSONL column mixes types)
    as JSON with its keys sorted and its null members left out (a Parquet struct has every field, a
    line only its own keys), a boolean as ``true``/``false``, a whole float in int64's range as its integer (``5``, not
    ``5.0``: pandas writes an integer column with a missing value as float64), a whole decimal as its integer too
    and another without trailing zeros (``5.5``, not ``5.50``), any other value as ``str`` gives it. Text stays
    as written: the text ``5.0`` is another key than the number 5 (``007`` is no 7)."""
    if isinstance(value, str):
        if not value.startswith(("{", "[")):
            return value
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        return _canonical_json(parsed) if isinstance(parsed, dict | list) else value
    if isinstance(value, dict | list | tuple):
        return _canonical_json(value)
    if isinstance(value, bool):  # as the reader writes one where its column mixes types, not Python's True
        return "true" if value else "false"
    if isinstance(value, float | np.floating) and (number := float(value)).is_integer() and abs(number) < 2**63:
        return str(int(number))  # an int64 once (not inf or nan)
    if isinstance(value, Decimal) and value.is_finite():  # a SQL NUMERIC(10,2)'s 5.00 is the customer 5
        return decimal_text(value)
    return str(value)


def earlier_key_text(text: str) -> str | None:
    """What ``key_text`` gave for the value of ``text`` before 2026-11-26, where it differed: a boolean as
    Python writes it (``True``), an object or array as Python's repr of the value the column gave. That
    repr kept the keys in the order the line or the Parquet schema had them, and a struct's null fields,
    which the JSON text no longer holds: only the sorted order without nulls is tried (every order of
    every member would be a lookup each). Before 2026-11-28 a whole float was kept as Python writes it
    (``5.0``): an integer's text is tried so, where a float holds it exactly (a group once keyed by the
    text ``5.0``, not a float, is found for ``5`` too: the side of one group either way)."""
    if text in ("true", "false"):
        return text.title()
    if len(text) < 21 and _INTEGER.fullmatch(text):  # an int64 (below 2**63, as key_text takes a float)
        whole = float(int(text))
        return str(whole) if whole == int(text) and abs(whole) < 2**63 else None
    if not text.startswith(("{", "[")):
        return None
    try:
        return str(json.loads(text))
    except ValueError:  # text that is no JSON keeps its text
        return None


def _canonical_json(value: Any) -> str:
    def without_nulls(v: Any) -> Any:
        if isinstance(v, dict):
            return {key: without_nulls(member) for key, member in v.items() if member is not None}
        if isinstance(v, list | tuple):
            return [without_nulls(item) for item in v]
        return v

    text = lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)  # noqa: E731
    return json.dumps(without_nulls(value), sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=text)


def key_texts(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """A column of group keys or labels as text where it holds objects or arrays (``key_text``), so every
    batch carries it as one type: a struct in one file and text in another failed the run where batches
    are put together; other columns as they are."""
    kind = values.type
    if not pa.types.is_nested(kind) and not isinstance(kind, pa.ExtensionType):
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            return values
        if not pc.any(pc.or_(pc.starts_with(values, "{"), pc.starts_with(values, "["))).as_py():
            return values  # the usual: no JSON text
    return pa.array([None if v is None else key_text(v) for v in values.to_pylist()], pa.string())


def _image_paths(batch: pa.Table) -> list[str | None]:
    """Each record's image path key (``p\x1f`` and the name its sidecar gives, as the images connector finds
    it: "./a.png" is "a.png"), None where the record has no image bytes or name."""
    if "image_bytes" not in batch.column_names or "image" not in batch.column_names:
        return [None] * batch.num_rows
    names = batch["image"].to_pylist()
    has_bytes = pc.is_valid(batch["image_bytes"]).to_pylist()
    return [
        f"p\x1f{posixpath.normpath(name)}" if isinstance(name, str) and name and held else None
        for name, held in zip(names, has_bytes, strict=True)
    ]


def _unit_hash(seed: str, value: str) -> int:
    return xxhash.xxh3_64_intdigest(seed.encode() + b"\x1f" + value.encode())


def _unit_hashes(seed: str, values: Column) -> pa.Array:
    """``_unit_hash`` of every value of a string column at once, as uint64."""
    if values.null_count:  # a null would hash to null and its record would reach neither side
        raise ValueError("split keys must not be null")
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = values.cast(pa.large_string())  # string views: the kernel has none for them
    return xxh3_64(prefixed(seed + "\x1f", values))


class Splitter:
    def __init__(
        self,
        validation_fraction: float,
        seed: str,
        stratify_by: str | None = None,
        group_by: str | None = None,
        by_image: bool = False,
        by_document: bool = False,
    ) -> None:
        self.fraction, self.seed = validation_fraction, seed
        self.stratify_by, self.group_by = stratify_by, group_by
        # ``group_by: document`` (``Recipe.groups_by_document``): the group key is each record's input, so the
        # overlapping chunks of a document are on one side.
        self.by_document = by_document and bool(group_by)
        # VQA records: split by record, one picture's questions landed on both sides and a model was
        # evaluated on pictures it trained on. The recipe's own group_by or stratify_by comes first.
        self.by_image = by_image and not group_by and not stratify_by
        self._threshold = int(validation_fraction * 2**64)
        # group key -> its records go to validation (the state store's, or this run's)
        self._groups: dict[str, bool] = {}
        self._seen: Counter[str] = Counter()  # label -> units seen
        self._to_validation: Counter[str] = Counter()  # label -> units sent to validation
        self._phases: dict[str, float] = {}  # label -> its phase (a hash of the seed and the label)
        self._dealing_on = False  # whether the counters went on from the extended version's (``deal_on_from``)
        self.labels: dict[str, Counter[str]] = {"train": Counter(), "validation": Counter()}
        self.records: Counter[str] = Counter()
        self._group_sides: dict[str, set[str]] = {"train": set(), "validation": set()}
        # Group key -> the side earlier runs put it on (``known`` asks the state store for the keys it is given).
        self.known: Callable[[list[str]], dict[str, bool]] | None = None
        self._placed_before: dict[str, bool] = {}
        self._image_sides: dict[str, bool] = {}  # image key -> validation, for the images this run placed first
        # The side of each record of inputs read again that the extended version holds (``keep_sides``): it
        # stays there (a stratified split deals labels out in input order, and a seed may have changed), or a
        # version would hold in validation what a model of the one before trained on. Held as the ids' sorted
        # xxh3-64 hashes and their sides (9 bytes a record: a version's every record may be read again, when
        # a source's settings changed), looked up a batch at a time.
        self._earlier_hashes = np.array([], np.uint64)
        self._earlier_sides = np.array([], bool)

    def _column(self, batch: pa.Table, name: str, setting: str, missing: str | None = NO_VALUE) -> list[str | None]:
        if name not in batch.column_names:
            usable = ", ".join(c for c in batch.column_names if c not in ("source", "image_bytes"))
            raise SplitError(
                f"output.{setting}: column {name!r} is not in the records (a record takes it from its input, "
                f"which has no such column); they have: {usable}"
            )
        # A value Python cannot hold (a Parquet timestamp after 9999) as Arrow's text: to_pylist raised for the column.
        return [missing if v is None else key_text(v) for v in as_python(batch[name], as_text=True)]

    def assign(self, batch: pa.Table) -> pa.Array:
        """True where each record of the batch goes to validation."""
        if self.by_image:
            return self._assign_by_image(batch)
        if not self.group_by and not self.stratify_by:  # the common case, in Arrow kernels without a Python step
            to_validation = self._under_threshold(_unit_hashes(self.seed, batch["id"]))
            to_validation = self._keeping_earlier(batch["id"], to_validation)
            count = pc.sum(to_validation).as_py() or 0
            for name, records in (("validation", count), ("train", batch.num_rows - count)):
                if records:
                    self.records[name] += records
            return to_validation
        ids = batch["id"].to_pylist()
        earlier = self._earlier_side(batch["id"]).to_pylist() if len(self._earlier_hashes) else [None] * len(ids)
        if self.by_document:
            keys = batch["source"].combine_chunks().field("uri").to_pylist()
        else:
            keys = self._column(batch, self.group_by, "group_by", missing=None) if self.group_by else ids
        # A record without a group key is a group of its own (a key that reads "(none)" is a key).
        keys = [i if k is None else f"g\x1f{k}" for k, i in zip(keys, ids, strict=True)] if self.group_by else keys
        if self.group_by and self.known is not None:
            self._look_up_earlier_sides(keys, self.known)
        if self.stratify_by:
            labels = self._column(batch, self.stratify_by, "stratify_by")
            sides = [self._stratified(key, label, kept) for key, label, kept in zip(keys, labels, earlier, strict=True)]
        else:
            labels = None
            hashed = self._under_threshold(_unit_hashes(self.seed, pa.array(keys, pa.string()))).to_pylist()
            # A record the extended version holds keeps its side, even where its group is placed elsewhere (a
            # group_by set after it was published: a document's chunks split one by one); else its group's:
            # kept by the state store, or placed by this run, where a group new to it joins the side of its first
            # record read again (else its hash), so its new records of later runs land beside this run's.
            grouped = [key.startswith("g\x1f") for key in keys]
            for key, kept, group in zip(keys, earlier, grouped, strict=True):
                if kept is not None and group:
                    self._groups.setdefault(key, kept)
            placed = zip(keys, hashed, earlier, grouped, strict=True)
            sides = [
                kept if kept is not None else self._groups.setdefault(key, side) if group else side
                for key, side, kept, group in placed
            ]
        to_train = [not side for side in sides]
        for name, chosen in (("train", to_train), ("validation", sides)):
            if count := sum(chosen):
                self.records[name] += count
            if labels is not None:
                self.labels[name].update(compress(labels, chosen))
            if self.group_by:
                self._group_sides[name].update(compress(keys, chosen))
        return pa.array(sides, pa.bool_())

    def _assign_by_image(self, batch: pa.Table) -> pa.Array:
        """Each record to the side of its image's content (the cleaned bytes the dataset stores), so the same
        scan under two names is on one side too; a record without bytes is a unit of its own. A record the
        extended version holds keeps its side: one published before images were grouped may share its
        image with the other side, and moving it would put in validation what a model trained on."""
        keys = batch["id"].cast(pa.large_string())
        if "image_bytes" in batch.column_names:
            digests = xxh3_128_hex(batch["image_bytes"]).cast(pa.large_string())  # null where a record has no bytes
            keys = pc.coalesce(prefixed("i\x1f", digests), keys)
        hashed = self._under_threshold(_unit_hashes(self.seed, keys)).to_pylist()
        earlier = self._earlier_side(batch["id"]).to_pylist() if len(self._earlier_hashes) else [None] * len(hashed)
        units = keys.to_pylist()
        paths = _image_paths(batch)
        if self.known is not None:
            self._look_up_earlier_sides(units + [path for path in paths if path is not None], self.known)
        # An image keeps the side an earlier run put it on; one new to the state store (a new scan, or one
        # changed in place) joins the side its path is on (so a new question about a changed image, met before
        # its questions read again, lands beside them), else its questions read again, which keep their sides
        # (same id), else its hash.
        fresh: dict[str, bool] = {}
        for unit, path in zip(units, paths, strict=True):
            side = None if path is None else self._placed_before.get(path, self._image_sides.get(path))
            if side is not None:
                fresh.setdefault(unit, side)
        for unit, kept in zip(units, earlier, strict=True):
            if kept is not None:
                fresh.setdefault(unit, kept)
        for unit, side in zip(units, hashed, strict=True):
            fresh.setdefault(unit, side)
        self._image_sides.update(
            (unit, side)
            for unit, side in fresh.items()
            if unit not in self._image_sides and unit not in self._placed_before
        )
        before, now = self._placed_before, self._image_sides
        sides = [
            kept if kept is not None else before[unit] if unit in before else now[unit]
            for unit, kept in zip(units, earlier, strict=True)
        ]
        self._image_sides.update(
            (path, side)
            for path, side in zip(paths, sides, strict=True)
            if path is not None and path not in self._image_sides and path not in before
        )
        to_validation = pa.array(sides, pa.bool_())
        for name, chosen in (("train", pc.invert(to_validation)), ("validation", to_validation)):
            if count := pc.sum(chosen).as_py() or 0:
                self.records[name] += count
                self._group_sides[name].update(keys.filter(chosen).to_pylist())
        return to_validation

    @property
    def remembers_sides(self) -> bool:
        """Whether the state store keeps this split's group (or image) sides from run to run: where later
        runs read them from and this one records them."""
        return bool(self.group_by) or self.by_image

    def keep_sides(self, ids: Column, validation: Column) -> None:
        """The side (``validation``) of each record of inputs read again that the chain's latest version holding it
        holds it on."""
        hashes = xxh3_64(ids).to_numpy(zero_copy_only=False)
        order = np.argsort(hashes, kind="stable")
        self._earlier_hashes = hashes[order]
        self._earlier_sides = np.asarray(validation.to_numpy(zero_copy_only=False), bool)[order]

    def _keeping_earlier(self, ids: Column, to_validation: pa.Array) -> pa.Array:
        """``to_validation``, but the earlier side for each record of ``ids`` the extended version holds."""
        if not len(self._earlier_hashes):  # none read again (and no index to look in)
            return to_validation
        return pc.coalesce(self._earlier_side(ids), to_validation)

    def _earlier_side(self, ids: Column) -> pa.Array:
        """The earlier side of each of ``ids``, null where the extended version does not hold the record. Two
        ids with one 64-bit hash (about one pair in 10^19) would only share a side."""
        hashes = xxh3_64(ids).to_numpy(zero_copy_only=False)
        at = np.minimum(np.searchsorted(self._earlier_hashes, hashes), len(self._earlier_hashes) - 1)
        return pa.array(self._earlier_sides[at], pa.bool_(), mask=self._earlier_hashes[at] != hashes)

    def _look_up_earlier_sides(self, keys: list[str], known: Callable[[list[str]], dict[str, bool]]) -> None:
        """Ask the state store once for each group key of the run it has not seen yet (records without a
        group key are groups of their own, by id: they have no earlier side)."""
        train, validation = self._group_sides["train"], self._group_sides["validation"]
        asked = {
            key
            for key in keys
            if key.startswith(("g\x1f", "i\x1f", "p\x1f"))
            and key not in self._placed_before
            and key not in self._image_sides
            and key not in train
            and key not in validation
        }
        if asked:
            found = known(sorted(asked))
            # A key an earlier release wrote otherwise (a boolean, an object): its group keeps its side too.
            earlier = {
                f"g\x1f{text}": key
                for key in asked - found.keys()
                if key.startswith("g\x1f") and (text := earlier_key_text(key[2:])) is not None
            }
            if earlier:
                found.update((earlier[key], side) for key, side in known(sorted(earlier)).items())
            self._placed_before.update(found)
            self._groups.update(found)  # a stratified split keeps a group's side, as within a run

    def placed(self) -> dict[str, bool]:
        """Group, image or image path key -> validation, for the groups and images this run placed first (for
        the state store; a record without a group key or image bytes is no group)."""
        # A group's side, not its records': records read again keep theirs, and may be on both.
        placed = {
            key: side
            for key, side in self._groups.items()
            if key.startswith("g\x1f") and key not in self._placed_before
        }
        placed.update((key, side) for key, side in self._image_sides.items() if key.startswith(("i\x1f", "p\x1f")))
        return placed

    def deal_on_from(self, split: dict[str, Any]) -> None:
        """Go on with the label counters of the version this run extends (its manifest's ``split``), where it
        was stratified by the same column and grouped alike (other counts are of other units) at the same
        fraction: under another, going on would send every new unit of a label to one side until the whole
        caught up. A version written before it kept them has none: its records read again are counted as
        they come, as then."""
        dealt = split.get("dealt")
        if not self.stratify_by or dealt is None:
            return
        settings = (split.get("stratify_by"), split.get("group_by"), split.get("validation_fraction"))
        if settings != (self.stratify_by, self.group_by, self.fraction):
            return
        counts = _dealt_counts(dealt)
        if counts is None:  # edited by hand, or another shape: counters that might be wrong would skew every label
            log.warning(
                "split.dealt of the version this run extends is not label: [units, validation]: dealt from zero"
            )
            return
        for label, (units, validation) in counts.items():
            self._seen[label] = units
            self._to_validation[label] = validation
        self._dealing_on = True

    def _under_threshold(self, hashes: pa.Array) -> pa.Array:
        # The threshold fits uint64: the fraction is below 1 (the recipe checks it).
        return pc.less(hashes, pa.scalar(self._threshold, pa.uint64()))

    def _stratified(self, key: str, label: str, earlier: bool | None = None) -> bool:
        """The side of a record of the unit ``key``: ``earlier`` where the extended version holds the record
        (a published record never moves, even where its group is placed elsewhere), else its group's side,
        else the side dealt to it. A unit is counted once, at its first record: a group new to this run
        whose first record is one read again takes that record's side."""
        side = self._groups.get(key)
        if side is None:
            counted = earlier is not None and self._dealing_on  # counted in the run that first dealt it
            side = earlier if counted else self._deal(label, earlier)
            if self.group_by:
                self._groups[key] = side
        return side if earlier is None else earlier

    def _deal(self, label: str, earlier: bool | None) -> bool:
        """A new unit of ``label``, counted: its side dealt from the label's counts, or ``earlier`` where its
        record has one (counted as dealt, so the label's later units keep its balance)."""
        self._seen[label] += 1
        side = earlier
        if side is None:
            if label not in self._phases:
                self._phases[label] = _unit_hash(self.seed, "label\x1f" + label) / 2**64
            due = math.floor(self._seen[label] * self.fraction + self._phases[label])
            side = due > self._to_validation[label]
        if side:
            self._to_validation[label] += 1
        return side

    def report(self) -> dict[str, Any]:
        """What the manifest says about the split: records per side, label balance and groups when used."""
        records = {"train": self.records["train"], "validation": self.records["validation"]}
        total = sum(records.values())
        report: dict[str, Any] = {
            "method": "stratified" if self.stratify_by else "hash",
            "validation_fraction": self.fraction,
            "seed": self.seed,
            "stratify_by": self.stratify_by,
            "group_by": self.group_by,
            "records": records,
            "actual_validation_fraction": round(records.get("validation", 0) / total, 6) if total else 0.0,
        }
        if self.stratify_by:
            report["labels"] = {side: dict(sorted(counter.items())) for side, counter in self.labels.items()}
            # Every unit dealt since the chain began (this run's and the versions' it extends): the next run
            # deals on from these. Every manifest carries them (read by each run, train launch and review page),
            # so a pair a label, and none past MAX_DEALT_LABELS: a label per user grew them by megabytes a run.
            if len(self._seen) <= MAX_DEALT_LABELS:
                report["dealt"] = {
                    label: [units, self._to_validation[label]] for label, units in sorted(self._seen.items())
                }
            else:
                log.warning(
                    "output.stratify_by: %d labels in %r, over %d: split.dealt is left out of the manifest, so the "
                    "next run deals every label from zero (each label's share holds within its own run only)",
                    len(self._seen),
                    self.stratify_by,
                    MAX_DEALT_LABELS,
                )
            if total and set(self.labels["train"]) | set(self.labels["validation"]) == {NO_VALUE}:
                log.warning(
                    "output.stratify_by: no record has a value in %r, so the split could not balance labels",
                    self.stratify_by,
                )
        if self.group_by or self.by_image:
            report["groups"] = {side: len(keys) for side, keys in self._group_sides.items()}
        if self.by_image:
            report["group_by_image"] = True
        return report


def _dealt_counts(dealt: Any) -> dict[str, tuple[int, int]] | None:
    """``split.dealt`` (label -> [units, to validation]) as counts, None where any entry is not such a pair."""
    if not isinstance(dealt, dict):
        return None
    counts: dict[str, tuple[int, int]] = {}
    for label, pair in dealt.items():
        if not (isinstance(pair, list) and len(pair) == 2 and all(type(n) is int for n in pair)):
            return None
        if not 0 <= pair[1] <= pair[0]:
            return None
        counts[label] = (pair[0], pair[1])
    return counts
