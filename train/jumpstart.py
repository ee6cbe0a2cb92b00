"""JumpStart model ID -> what a training job for it needs: image, training script, model artifact,
default hyperparameters, which of our formats it takes.

Two resolvers with one interface: ``SdkSpecs`` asks the installed SageMaker SDK's JumpStart lookup
(``sagemaker.core.image_uris`` / ``script_uris`` / ``model_uris`` / ``hyperparameters``, which read
JumpStart's spec files over the network), ``VendoredSpecs`` reads the pinned ``jumpstart_specs.json``
beside this file (no network: tests and offline dry runs). ``AutoSpecs`` (the default) tries the SDK
and falls back to the pin when the lookup cannot be made, saying so (not for a real launch: see ``AutoSpecs``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any, Protocol

log = logging.getLogger("curation.train")

VENDORED_SPECS = "jumpstart_specs.json"
# The SageMaker SDK Estimator's own max_run, which a JumpStart spec's estimator_kwargs may replace.
DEFAULT_MAX_RUNTIME_S = 24 * 60 * 60
# The SDK Estimator's own volume_size, sent where JumpStart gives the instance type none of the spec's.
DEFAULT_VOLUME_GB = 30


# The hyperparameter a format's data needs switched on (train.sagemaker.FORMAT_HYPERPARAMETERS): a model
# without it trains on no such data. Domain adaptation on text is what the script does with neither on.
FORMAT_SWITCH = {"jumpstart-instruction": "instruction_tuned", "jumpstart-chat": "chat_dataset"}
# JumpStart's vision-language models (meta-vlm-llama-3-2-11b-vision-instruct): they train on the VQA layout only.
VISION_MODEL_ID = re.compile(r"-vlm-")


def has_switch(fmt: str, hyperparameters: Mapping[str, Any]) -> bool:
    """Whether a model whose spec gives ``hyperparameters`` has the switch ``fmt``'s data needs (or it needs none)."""
    switch = FORMAT_SWITCH.get(fmt)
    return switch is None or switch in hyperparameters


def formats_for(model_id: str, hyperparameters: Mapping[str, Any]) -> tuple[str, ...]:
    """The formats a model whose spec gives ``hyperparameters`` trains on: VQA for a vision-language
    model; otherwise text, and each format whose switch the model has."""
    if VISION_MODEL_ID.search(model_id):
        return ("jumpstart-vqa",)
    return ("text", *(fmt for fmt in FORMAT_SWITCH if has_switch(fmt, hyperparameters)))


class SpecError(LookupError):
    """A model ID we cannot resolve, or a setting it does not take; the message says what to do."""


@dataclass(frozen=True)
class ModelSpec:
    model_id: str
    version: str
    training_image: str
    script_uri: str
    entry_point: str
    model_uri: str
    gated: bool
    default_instance_type: str
    supported_instance_types: tuple[str, ...]
    volume_size_gb: int | None  # the spec's training_volume_size; see ``volume_gb`` for what a job gets
    formats: tuple[str, ...]
    hyperparameters: dict[str, str]
    metric_definitions: tuple[dict[str, str], ...] = ()
    # JumpStart's bounds of a hyperparameter: min, max, exclusive_min, exclusive_max; options (its values);
    # length: the same four bounds on a text's length.
    hyperparameter_ranges: dict[str, dict[str, Any]] = field(default_factory=dict)
    origin: str = "vendored"  # "sdk" when the live lookup answered
    # What JumpStartEstimator takes from the spec beyond the artifacts: the training environment variables
    # for the instance type, the spec's estimator_kwargs (max_run, encrypt_inter_container_traffic) and
    # training_enable_network_isolation, with the SDK's defaults where the spec gives none.
    environment: dict[str, str] = field(default_factory=dict)
    max_runtime_s: int = DEFAULT_MAX_RUNTIME_S
    network_isolation: bool = False
    encrypt_inter_container_traffic: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class SpecResolver(Protocol):
    def __call__(self, model_id: str, region: str, instance_type: str | None = None) -> ModelSpec: ...


class VendoredSpecs:
    """The pinned specs (or any file of the same layout)."""

    def __init__(self, text: str | None = None) -> None:
        raw = text if text is not None else resources.files("train").joinpath(VENDORED_SPECS).read_text()
        self.models: dict[str, dict[str, Any]] = json.loads(raw)["models"]

    def __call__(self, model_id: str, region: str, instance_type: str | None = None) -> ModelSpec:
        if model_id not in self.models:
            known = ", ".join(sorted(self.models))
            raise SpecError(
                f"model {model_id!r} is not in the pinned JumpStart specs ({known}); "
                "use the live lookup (AWS credentials and network) for other models"
            )
        raw = self.models[model_id]
        return ModelSpec(
            model_id=model_id,
            version=raw["version"],
            training_image=raw["training_image"].format(region=region),
            script_uri=raw["script_uri"].format(region=region),
            entry_point=raw["entry_point"],
            model_uri=raw["model_uri"].format(region=region),
            gated=raw["gated"],
            default_instance_type=raw["default_instance_type"],
            supported_instance_types=tuple(raw["supported_instance_types"]),
            volume_size_gb=raw.get("volume_size_gb"),
            formats=tuple(raw["formats"]),
            hyperparameters=dict(raw["hyperparameters"]),
            metric_definitions=tuple(raw.get("metric_definitions", ())),
            hyperparameter_ranges=dict(raw.get("hyperparameter_ranges", {})),
            **estimator_settings(raw.get("estimator_kwargs") or {}, raw.get("training_enable_network_isolation")),
        )


class SdkSpecs:
    """The SageMaker SDK's own JumpStart lookup (network). The formats a model takes come from its spec's
    hyperparameters (``formats_for``)."""

    def __init__(self, fallback: VendoredSpecs | None = None) -> None:
        self.fallback = fallback or VendoredSpecs()

    def __call__(self, model_id: str, region: str, instance_type: str | None = None) -> ModelSpec:
        try:
            return self.lookup(model_id, region, instance_type)
        except Exception as error:  # the SDK raises many kinds (botocore, ValueError, KeyError)
            raise SpecError(
                f"JumpStart live lookup of {model_id!r} failed ({type(error).__name__}: {error}): check the model "
                "id, the AWS credentials and the network, or use the pinned specs (--specs pinned)"
            ) from None

    def lookup(self, model_id: str, region: str, instance_type: str | None = None) -> ModelSpec:
        """The SDK's answer, or its own exception."""
        from sagemaker.core import environment_variables, hyperparameters, image_uris, model_uris, script_uris
        from sagemaker.core.jumpstart.constants import (
            DEFAULT_TRAINING_ENTRY_POINT,
            SAGEMAKER_GATED_MODEL_S3_URI_TRAINING_ENV_VAR_KEY,
        )
        from sagemaker.core.jumpstart.enums import JumpStartScriptScope
        from sagemaker.core.jumpstart.utils import verify_model_region_and_return_specs

        pinned = self.fallback.models.get(model_id) or {}
        common = {"region": region, "model_id": model_id, "model_version": "*"}
        # The model's own spec: the version "*" stands for, which the job's tags name (SageMaker takes no
        # "*" in a tag), whether it is gated, its default and supported instance types, volume, metrics and
        # hyperparameter ranges; the pin only where it gives none (a model the pin lacks has only the live spec's).
        live = verify_model_region_and_return_specs(model_id, "*", "training", region=region)
        instance = instance_type or live.default_training_instance_type or pinned.get("default_instance_type")
        image = image_uris.retrieve(framework=None, image_scope="training", instance_type=instance, **common)
        script = script_uris.retrieve(script_scope="training", **common)
        # The weights for the instance type, as the SDK hands them to a job: a gated model's where its
        # training environment points (the instance family's gated key), others' the family's artifact if any.
        environment = environment_variables.retrieve_default(
            script=JumpStartScriptScope.TRAINING, instance_type=instance, include_aws_sdk_env_vars=False, **common
        )
        # The gated URI leaves the environment: the request hands those weights over in the "model" channel,
        # with the EULA accepted there (ModelAccessConfig), not through the variable.
        model = environment.pop(SAGEMAKER_GATED_MODEL_S3_URI_TRAINING_ENV_VAR_KEY, None) or model_uris.retrieve(
            model_scope="training", instance_type=instance, **common
        )
        defaults = hyperparameters.retrieve_default(instance_type=instance, **common)
        supported = live.supported_training_instance_types or pinned.get("supported_instance_types", ())
        return ModelSpec(
            model_id=model_id,
            version=live.version,
            training_image=image,
            script_uri=script,
            # No spec names its script's entry point: the SDK's JumpStart training runs this one for every model.
            entry_point=DEFAULT_TRAINING_ENTRY_POINT,
            model_uri=model,
            # gated_bucket is what put the weights' URI in JumpStart's gated bucket, which asks for the EULA.
            gated=bool(live.gated_bucket),
            default_instance_type=instance or "ml.g5.2xlarge",
            supported_instance_types=tuple(supported),
            volume_size_gb=getattr(live, "training_volume_size", None) or pinned.get("volume_size_gb"),
            formats=formats_for(model_id, defaults),
            hyperparameters={k: str(v) for k, v in defaults.items()},
            metric_definitions=tuple(live.metrics or pinned.get("metric_definitions", ())),
            hyperparameter_ranges=live_ranges(live, instance, pinned.get("hyperparameter_ranges", {})),
            origin="sdk",
            environment={name: str(value) for name, value in environment.items()},
            **estimator_settings(
                getattr(live, "estimator_kwargs", None) or {}, getattr(live, "training_enable_network_isolation", None)
            ),
        )


def estimator_settings(estimator_kwargs: Mapping[str, Any], network_isolation: bool | None) -> dict[str, Any]:
    """The ModelSpec fields a spec's ``estimator_kwargs`` and ``training_enable_network_isolation`` give,
    as JumpStartEstimator applies them over the SDK Estimator's defaults (no isolation, one day's max_run)."""
    return {
        "max_runtime_s": int(estimator_kwargs.get("max_run") or DEFAULT_MAX_RUNTIME_S),
        "network_isolation": bool(network_isolation),
        "encrypt_inter_container_traffic": bool(estimator_kwargs.get("encrypt_inter_container_traffic")),
    }


BOUNDS = ("min", "max", "exclusive_min", "exclusive_max")


def live_ranges(
    specs: Any, instance_type: str | None, pinned: Mapping[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Each hyperparameter's range as the SDK's JumpStart spec (``JumpStartModelSpecs``) gives it, the
    instance type's own variant first, as the SDK reads defaults; the pin's for one it gives none of.
    A text hyperparameter's min and max bound its length (as the SDK's own validator reads them): they
    are kept apart, under ``length``."""
    ranges = {name: dict(bounds) for name, bounds in (pinned or {}).items()}
    variants = getattr(specs, "training_instance_type_variants", None)
    specific = variants.get_instance_specific_hyperparameters(instance_type) if variants and instance_type else []
    named = {hyperparameter.name: hyperparameter for hyperparameter in getattr(specs, "hyperparameters", [])}
    named.update({hyperparameter.name: hyperparameter for hyperparameter in specific})
    for name, hyperparameter in named.items():
        bounds: dict[str, Any] = {}
        given = {bound: getattr(hyperparameter, bound) for bound in BOUNDS if hasattr(hyperparameter, bound)}
        if hyperparameter.type in ("int", "float"):
            bounds = given
        elif hyperparameter.type == "text" and given:
            bounds = {"length": given}
        if getattr(hyperparameter, "options", None):
            bounds["options"] = [str(option) for option in hyperparameter.options]
        if bounds:
            ranges[name] = bounds
    return ranges


class AutoSpecs:
    """Live lookup first; the pin when the lookup cannot be made (no network, no credentials), unless
    ``fallback`` is off: the pin was written offline, not fetched, so a real launch on it may start a
    job (billed) whose artifacts are not where the pin says; only a dry run, or a user who chose the
    pin (``--specs pinned``), goes on with it."""

    def __init__(self, fallback: bool = True) -> None:
        self.vendored = VendoredSpecs()
        self.sdk = SdkSpecs(self.vendored)
        self.fallback = fallback

    def __call__(self, model_id: str, region: str, instance_type: str | None = None) -> ModelSpec:
        try:
            return self.sdk.lookup(model_id, region, instance_type)
        except Exception as error:  # the SDK raises many kinds (botocore, ValueError, KeyError) when offline
            if model_id not in self.vendored.models:
                known = ", ".join(sorted(self.vendored.models))
                raise SpecError(
                    f"JumpStart model {model_id!r} is not among the pinned specs ({known}), and the live lookup "
                    f"failed ({type(error).__name__}: {error}): check the model id, or the AWS credentials"
                ) from None
            if not self.fallback:
                raise SpecError(
                    f"JumpStart live lookup of {model_id!r} failed ({type(error).__name__}: {error}); the pinned "
                    "spec is not verified against AWS, so a launch does not fall back to it: fix the lookup "
                    f"(credentials, network), or pass --specs pinned (or {SPECS_ENV}=pinned) to launch with it knowingly"
                ) from None
            log.warning(
                "JumpStart live lookup failed (%s); using the pinned spec for %s", type(error).__name__, model_id
            )
            return self.vendored(model_id, region, instance_type)


SPEC_SOURCES: dict[str, type[SpecResolver]] = {"auto": AutoSpecs, "live": SdkSpecs, "pinned": VendoredSpecs}
SPECS_ENV = "CURATION_JUMPSTART_SPECS"


def spec_resolver(name: str | None = None, pinned_fallback: bool = True) -> SpecResolver:
    """The named lookup; by default ``$CURATION_JUMPSTART_SPECS`` or ``auto`` (offline hosts set ``pinned``).
    ``pinned_fallback`` off: ``auto`` refuses rather than falls back to the pin (a real launch)."""
    setting = "--specs" if name else SPECS_ENV  # named in the error: where the user can change it
    name = name or os.environ.get(SPECS_ENV) or "auto"
    if name not in SPEC_SOURCES:
        raise SpecError(f"{setting}={name}: JumpStart specs come from one of {', '.join(SPEC_SOURCES)}")
    return AutoSpecs(pinned_fallback) if name == "auto" else SPEC_SOURCES[name]()


def volume_gb(spec: ModelSpec) -> int:
    """The VolumeSizeInGB JumpStartEstimator sends for ``spec`` on its instance type: the spec's volume
    only where SageMaker attaches one (no g5, g6, p4d, p5, trn1 or other "d" family: those train on
    their own NVMe storage, which a larger volume would not fit), else the SDK Estimator's default."""
    from sagemaker.core.common_utils import volume_size_supported  # the SDK's own rule, kept current with it

    if spec.volume_size_gb is not None and volume_size_supported(spec.default_instance_type):
        return spec.volume_size_gb
    return DEFAULT_VOLUME_GB


def with_instance(spec: ModelSpec, instance_type: str | None) -> ModelSpec:
    """The spec with the instance type to use, refusing one the model does not list."""
    chosen = instance_type or spec.default_instance_type
    if spec.supported_instance_types and chosen not in spec.supported_instance_types:
        raise SpecError(
            f"{spec.model_id} does not train on {chosen}; it takes: {', '.join(spec.supported_instance_types)}"
        )
    return replace(spec, default_instance_type=chosen)
