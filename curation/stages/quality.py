"""Builds the quality stages (cleaning, filters, near-duplicates) from their recipe settings."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from curation.stages.clean import Clean
from curation.stages.expectations import Expectations, UniqueValues
from curation.stages.filters import InstructionFilter, LanguageFilter, LengthFilter, RatioFilter, RepetitionFilter
from curation.stages.neardup import ImageNearDedup, NearDedup
from schemas.config import (
    CleanConfig,
    ExpectationsConfig,
    ImageDedupConfig,
    InstructionFilterConfig,
    LanguageFilterConfig,
    LengthFilterConfig,
    NearDedupConfig,
    QualityConfig,
    RatioFilterConfig,
    RepetitionFilterConfig,
    stage_name,
)
from schemas.records import CONTENT_COLUMNS, RECORD_MODELS, dedup_fields

QUALITY_CONFIGS = QualityConfig.__args__
QualityStage = (
    Expectations
    | Clean
    | LengthFilter
    | LanguageFilter
    | RepetitionFilter
    | RatioFilter
    | InstructionFilter
    | NearDedup
)


def text_fields(kind: str) -> list[str]:
    """The fields of a record kind that hold text (not labels, not image references)."""
    return [c for c in CONTENT_COLUMNS[kind] if c not in ("label", "image")]


def quality_stages(
    config: QualityConfig,
    kind: str,
    kept_apart: Mapping[str, Mapping[str, Collection[str]]] | None = None,
    taken: Iterable[str] = (),
) -> list[QualityStage | ImageNearDedup | UniqueValues]:
    """The stages one recipe entry makes: one, but for expectations, whose ``unique`` checks are over
    the whole run (a global stage after the per-batch ones). ``kept_apart``: per stage name, the records
    annotators marked "not a duplicate" on that stage's items, each with the records it is not a copy
    of (``RunDecisions.kept_apart_in``), which that near-duplicate stage does not set aside as such.
    ``taken``: the names of the recipe's stages before it (a second stage of one type is named apart,
    ``stage_name``; both stages of one expectations entry share its name)."""
    if isinstance(config, ExpectationsConfig):
        name = stage_name(config.type, taken)
        per_batch = [spec for spec in config.expect if spec.check != "unique"]
        unique = [spec.column for spec in config.expect if spec.check == "unique"]
        return [
            *([Expectations(per_batch, name=name)] if per_batch else []),
            *([UniqueValues(unique, name=name)] if unique else []),
        ]
    name = stage_name(config.type, taken)
    return [_one_stage(config, kind, name, dict((kept_apart or {}).get(name, {})))]


# The stage type of each recipe entry but expectations.
_STAGE_TYPES: dict[type, type[QualityStage | ImageNearDedup]] = {
    CleanConfig: Clean,
    LengthFilterConfig: LengthFilter,
    LanguageFilterConfig: LanguageFilter,
    RepetitionFilterConfig: RepetitionFilter,
    RatioFilterConfig: RatioFilter,
    InstructionFilterConfig: InstructionFilter,
    NearDedupConfig: NearDedup,
    ImageDedupConfig: ImageNearDedup,
}


def _one_stage(
    config: QualityConfig, kind: str, name: str, kept_apart: Mapping[str, Collection[str]]
) -> QualityStage | ImageNearDedup:
    """The stage of one recipe entry other than expectations, named ``name`` (see ``quality_stages``)."""
    fields = getattr(config, "fields", None) or text_fields(kind)
    settings = config.model_dump(exclude={"type", "fields", "across_runs"})
    if isinstance(config, CleanConfig):
        model = RECORD_MODELS[kind].model_fields
        required = [f for f in fields if f in model and model[f].is_required()]
        return Clean(fields, required=required, **settings, name=name)
    if isinstance(config, InstructionFilterConfig):
        return InstructionFilter(
            config.min_completion_chars, config.trivial_completions, config.drop_prompt_equals_completion, name=name
        )
    if isinstance(config, NearDedupConfig):
        fields = config.fields or [f for f in dedup_fields(kind) if f != "image"]
        return NearDedup(fields, **settings, kept_apart=kept_apart, name=name)
    if isinstance(config, ImageDedupConfig):
        question = "question" if config.match_question and kind == "vqa" else None
        return ImageNearDedup(config.column, config.max_distance, question, kept_apart, name=name)
    return _STAGE_TYPES[type(config)](fields, **settings, name=name)  # the text filters: fields and settings
