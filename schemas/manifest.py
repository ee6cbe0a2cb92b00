"""What a published dataset version says about itself. ``train/`` and readers trust only this file."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, model_validator

MANIFEST_NAME = "manifest.json"


class Shard(BaseModel):
    path: str  # relative to the version folder
    records: int
    bytes: int
    sha256: str


class Split(BaseModel):
    records: int = 0
    shards: list[Shard] = Field(default_factory=list)


class Counts(BaseModel):
    """input = written + filtered + duplicate + quarantined; ``reasons`` breaks each down."""

    input: int
    written: int
    filtered: int = 0
    duplicate: int = 0
    quarantined: int = 0
    # Records copied unchanged from the version this one extends (output.carry_forward): outside the
    # equation above, which accounts for what this run read.
    carried: int = 0
    reasons: dict[str, dict[str, int]] = Field(default_factory=dict)  # outcome -> reason -> count

    @model_validator(mode="after")
    def _accounts_for_every_record(self) -> Counts:
        total = self.written + self.filtered + self.duplicate + self.quarantined
        if total != self.input:
            raise ValueError(
                f"records unaccounted for: input {self.input} != written {self.written} + filtered "
                f"{self.filtered} + duplicate {self.duplicate} + quarantined {self.quarantined}"
            )
        for outcome, by_reason in self.reasons.items():
            if sum(by_reason.values()) != getattr(self, outcome):
                raise ValueError(f"{outcome} reasons do not add up to {getattr(self, outcome)}")
        return self


class InputFile(BaseModel):
    uri: str
    size: int | None = None
    mtime: str | None = None
    records: int = 0


class Manifest(BaseModel):
    dataset: str
    version: int
    extends: int | None = None
    carried_from: int | None = None  # the version whose published records this one also holds (carry_forward)
    created_at: datetime
    recipe_sha256: str
    # ``RecordShape.fingerprint``: the templates that made its records, and the input_schema they read by (none in a
    # manifest of an earlier release).
    record_sha256: str | None = None
    record_kind: str
    format: str
    counts: Counts
    splits: dict[str, Split]
    side_files: list[str] = Field(default_factory=list)
    side_file_sha256: dict[str, str] = Field(default_factory=dict)  # each side file's sha256 (template.json)
    set_aside: list[Shard] = Field(default_factory=list)  # rows set aside, with reasons
    lineage: list[Shard] = Field(default_factory=list)  # output line -> record id and source
    inputs: list[InputFile] = Field(default_factory=list)
    row_schema: dict[str, Any] = Field(default_factory=dict)  # JSON schema of one output line
    stats: dict[str, Any] = Field(default_factory=dict)
    files: list[Shard] = Field(default_factory=list)  # binary files the lines refer to (VQA images)
    # How records were split: method, seed, stratify_by/group_by, records per side, label balance, groups.
    split: dict[str, Any] = Field(default_factory=dict)

    @property
    def holds_only_its_run(self) -> bool:
        """A delta version (``output.carry_forward: false``): it extends one but holds only its run's records."""
        return self.extends is not None and self.carried_from is None

    def all_files(self) -> list[Shard]:
        shards = [s for split in self.splits.values() for s in split.shards]
        return shards + self.set_aside + self.lineage + self.files
