"""The recipe: one YAML file that says what a run reads, what it does, and where it publishes.

Every setting has a default, so a short recipe works::

    dataset: transactions
    sources:
      - path: data/transactions.csv
    record:
      kind: instruction
      prompt: "Categorise: {{ description }} at {{ merchant }} ({{ amount }} USD)"
      completion: "{{ category }}"
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.records import CONTENT_COLUMNS, RecordKind


class RecipeError(ValueError):
    """A recipe that cannot be run; the message names the file, the setting and the line."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- sources -------------------------------------------------------------------------------------


class FilesSource(Strict):
    """JSONL, CSV or Parquet files: a path, a glob or a folder, local or ``s3://``."""

    type: Literal["files"] = "files"
    path: str
    format: Literal["auto", "jsonl", "csv", "parquet"] = "auto"
    csv_delimiter: str = Field(default=",", min_length=1, max_length=1)


SourceConfig = Annotated[FilesSource, Field(discriminator="type")]


# --- what the input rows must look like, and what record they become ------------------------------


class InputSchema(Strict):
    """Columns the input rows must have, with their types; checked before anything else."""

    columns: dict[str, Literal["str", "int", "float", "bool"]] = Field(default_factory=dict)
    optional: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _optional_are_declared(self) -> InputSchema:
        unknown = sorted(set(self.optional) - set(self.columns))
        if unknown:
            raise ValueError(f"optional names columns that are not declared: {unknown}")
        return self


class RecordShape(Strict):
    """Which record kind the rows become; each field is a column name or a Jinja template."""

    kind: RecordKind = "instruction"
    text: str | None = None
    title: str | None = None
    prompt: str | None = None
    completion: str | None = None
    label: str | None = None
    image: str | None = None
    question: str | None = None
    answer: str | None = None

    @model_validator(mode="after")
    def _fields_belong_to_kind(self) -> RecordShape:
        allowed = set(CONTENT_COLUMNS[self.kind])
        given = {name for name in _SHAPE_FIELDS if getattr(self, name) is not None}
        wrong = sorted(given - allowed)
        if wrong:
            raise ValueError(f"{wrong} are not fields of a {self.kind} record; it has {sorted(allowed)}")
        return self

    def mapping(self) -> dict[str, str | None]:
        """Target field -> template or column; a field not set takes the same-named column."""
        return {name: getattr(self, name) for name in CONTENT_COLUMNS[self.kind]}


_SHAPE_FIELDS = ("text", "title", "prompt", "completion", "label", "image", "question", "answer")


# --- stages --------------------------------------------------------------------------------------


class ExactDedupConfig(Strict):
    """Drop records whose normalised content was already seen (first occurrence wins)."""

    type: Literal["exact_dedup"]
    fields: list[str] | None = None  # default: the record kind's content fields
    normalize: bool = True  # case, Unicode form and whitespace do not make content new


StageConfig = Annotated[ExactDedupConfig, Field(discriminator="type")]


# --- output --------------------------------------------------------------------------------------


OutputFormat = Literal["text", "jumpstart-instruction"]
DEFAULT_FORMAT: dict[str, OutputFormat] = {
    "document": "text",
    "instruction": "jumpstart-instruction",
}


class OutputConfig(Strict):
    dest: str = "output"
    format: OutputFormat | None = None  # default: the natural format of the record kind
    shard_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    validation_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    split_seed: str = "curation"


class Recipe(Strict):
    dataset: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    sources: list[SourceConfig] = Field(min_length=1)
    input_schema: InputSchema | None = None
    record: RecordShape = Field(default_factory=RecordShape)
    stages: list[StageConfig] = Field(default_factory=lambda: [ExactDedupConfig(type="exact_dedup")])
    output: OutputConfig = Field(default_factory=OutputConfig)
    state: str = "sqlite:///.curation/state.db"
    batch_rows: int = Field(default=50_000, ge=1)
    engine: Literal["local", "ray"] = "local"  # ray: the same stages on Ray Data (pip install 'curation[ray]')
    ray_address: str | None = None  # a Ray cluster (ray://host:10001 or auto); none: a local Ray instance

    @field_validator("sources", mode="before")
    @classmethod
    def _default_source_type(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"type": "files", **v} if isinstance(v, dict) and "type" not in v else v for v in value]
        return value

    @model_validator(mode="after")
    def _format_fits_kind(self) -> Recipe:
        if self.output.format is None:
            if self.record.kind not in DEFAULT_FORMAT:
                raise ValueError(f"output.format must be set for {self.record.kind} records")
            self.output.format = DEFAULT_FORMAT[self.record.kind]
        return self

    def fingerprint(self) -> str:
        """sha256 of the validated recipe: two runs with the same hash did the same work."""
        # Where it runs (engine, cluster) does not change the work, so it is left out of the hash.
        settings = self.model_dump(mode="json", exclude={"engine", "ray_address"})
        canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


# --- loading, with errors that point at the line ----------------------------------------------------


def _yaml_lines(node: yaml.Node, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    """Map each setting's path in the YAML document to its 1-based line number."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            lines.update(_yaml_lines(value, (*path, key.value)))
            lines[(*path, key.value)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(_yaml_lines(item, (*path, index)))
    return lines


def _resolve_local(path: str, base: Path) -> str:
    if "://" in path or Path(path).is_absolute():
        return path
    return str(base.resolve() / path)


def _union_tags(*unions: Any) -> set[str]:
    """The ``type`` values of tagged unions: pydantic puts them in error locations; readers don't need them."""
    tags = set()
    for union in unions:
        members = get_args(get_args(union)[0]) or (get_args(union)[0],)
        for member in members:
            tags.update(get_args(member.model_fields["type"].annotation))
    return tags


def parse_recipe(text: str, origin: str = "<recipe>", base_dir: Path | None = None) -> Recipe:
    """Validate recipe YAML; relative local paths are taken from ``base_dir`` (the recipe's folder)."""
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{origin}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{origin}: a recipe is a YAML mapping with at least 'dataset' and 'sources'")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        lines = _yaml_lines(node) if node is not None else {}
        problems = []
        for error in exc.errors():
            loc = tuple(part for part in error["loc"] if part not in _union_tags(SourceConfig, StageConfig))
            line = next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), None)
            where = ".".join(str(part) for part in loc) or "(top level)"
            at = f" (line {line})" if line else ""
            problems.append(f"  {where}{at}: {error['msg']}")
        raise RecipeError(f"{origin}: {len(problems)} problem(s) in the recipe:\n" + "\n".join(problems)) from None
    if base_dir is not None:
        for source in recipe.sources:
            source.path = _resolve_local(source.path, base_dir)
        recipe.output.dest = _resolve_local(recipe.output.dest, base_dir)
        if recipe.state.startswith("sqlite:///") and recipe.state != "sqlite:///:memory:":
            recipe.state = "sqlite:///" + _resolve_local(recipe.state.removeprefix("sqlite:///"), base_dir)
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe: {exc.strerror}") from None
    return parse_recipe(text, origin=str(path), base_dir=path.parent)
