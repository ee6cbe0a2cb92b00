"""Builds the quality stages (cleaning, filters, near-duplicates) from their recipe settings."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from curation.stages.clean import Clean
from curation.stages.duplicates import own_name
from curation.stages.expectations import Expectations, UniqueValues
from curation.stages.filters import InstructionFilter, LanguageFilter, LengthFilter, RatioFilter, RepetitionFilter
from curation.stages.neardup import ImageNearDedup, NearDedup
from schemas.config import (
    CleanConfig,
    ExpectationsConfig,
    InstructionFilterConfig,
    LanguageFilterConfig,
    LengthFilterConfig,
    NearDedupConfig,
    QualityConfig,
    RatioFilterConfig,
    RepetitionFilterConfig,
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
    ``own_name``; both stages of one expectations entry share its name)."""
    taken = set(taken)
    if isinstance(config, ExpectationsConfig):
        per_batch = [spec for spec in config.expect if spec.check != "unique"]
        unique = [spec.column for spec in config.expect if spec.check == "unique"]
        made = [*([Expectations(per_batch)] if per_batch else []), *([UniqueValues(unique)] if unique else [])]
    else:
        made = [_one_stage(config, kind)]
    for stage in made:
        stage.name = own_name(type(stage).name, taken)
        if isinstance(stage, NearDedup | ImageNearDedup):
            stage.kept_apart = dict((kept_apart or {}).get(stage.name, {}))
    return made


def _one_stage(config: QualityConfig, kind: str) -> QualityStage | ImageNearDedup:
    """The stage of one recipe entry other than expectations (see ``quality_stages``)."""
    fields = getattr(config, "fields", None) or text_fields(kind)
    settings = config.model_dump(exclude={"type", "fields", "across_runs"})
    if isinstance(config, CleanConfig):
        model = RECORD_MODELS[kind].model_fields
        required = [f for f in fields if f in model and model[f].is_required()]
        return Clean(fields, required=required, **settings)
    if isinstance(config, LengthFilterConfig):
        return LengthFilter(fields, **settings)
    if isinstance(config, LanguageFilterConfig):
        return LanguageFilter(fields, **settings)
    if isinstance(config, RepetitionFilterConfig):
        return RepetitionFilter(fields, **settings)
    if isinstance(config, RatioFilterConfig):
        return RatioFilter(fields, **settings)
    if isinstance(config, InstructionFilterConfig):
        return InstructionFilter(
            config.min_completion_chars, config.trivial_completions, config.drop_prompt_equals_completion
        )
    if isinstance(config, NearDedupConfig):
        return NearDedup(config.fields or [f for f in dedup_fields(kind) if f != "image"], **settings)
    question = "question" if config.match_question and kind == "vqa" else None
    return ImageNearDedup(config.column, config.max_distance, question)
