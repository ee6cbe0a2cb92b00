"""Hand a published dataset version to SageMaker training.

``training_request`` reads the version's manifest (a version without one, or with a file whose
sha256 does not match, is refused), maps its format to the channels and hyperparameters the
JumpStart model needs, and returns the exact CreateTrainingJob request, checked against botocore's
service model. ``launch`` sends it with the installed SageMaker SDK v3's botocore client to whatever
endpoint the AWS settings name; ``describe`` and ``wait`` read it back.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import operator
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import botocore.exceptions
import botocore.session
import regex
from botocore.validate import ParamValidator

from connectors.storage import FileEntry, StorageError, filesystem, is_s3, s3_objects
from curation.published import bucket_exists, read_manifest, verify_checksums
from curation.writer import how_to_fill_validation
from schemas.manifest import Manifest
from schemas.records import shortened
from train.jumpstart import (
    BOUNDS,
    FORMAT_SWITCH,
    ModelSpec,
    SpecError,
    SpecResolver,
    VendoredSpecs,
    has_switch,
    spec_resolver,
    volume_gb,
    with_instance,
)

# Placeholders a dry run may show; ``launch`` refuses a request that still holds one.
PLACEHOLDER_ROLE = "arn:aws:iam::000000000000:role/REPLACE-WITH-SAGEMAKER-EXECUTION-ROLE"
PLACEHOLDER_BUCKET = "replace-with-your-bucket"
ROLE_ENV = "SAGEMAKER_ROLE_ARN"
TERMINAL = {"Completed", "Failed", "Stopped"}
CODE_CHANNEL_SOURCEDIR = "/opt/ml/input/data/code/sourcedir.tar.gz"  # the "code" channel's script, in the container

# What each format asks of the JumpStart training script (JumpStart text-generation fine-tuning:
# ``instruction_tuned`` reads template.json from the training channel; ``chat_dataset`` reads the
# ``dialog`` lines; neither: domain adaptation on ``text``). The VQA layout is the vision models' only one.
# A model without a format's switch (train.jumpstart.FORMAT_SWITCH) is refused that format; a switch
# set False is sent only to a model that has it (off is what its absence means).
FORMAT_HYPERPARAMETERS: dict[str, dict[str, str]] = {
    "text": {"instruction_tuned": "False", "chat_dataset": "False"},
    "jumpstart-instruction": {"instruction_tuned": "True", "chat_dataset": "False"},
    "jumpstart-chat": {"instruction_tuned": "False", "chat_dataset": "True"},
    "jumpstart-vqa": {},
}
NOT_FOR_SAGEMAKER = {
    "messages": "train it with TRL's SFTTrainer or another trainer that reads OpenAI-style messages",
    "bedrock-conversation": "hand it to Amazon Bedrock model customisation (CreateModelCustomizationJob)",
}


class TrainError(RuntimeError):
    """The handoff cannot go on; the message names the version or job and what to do."""


@functools.cache  # a quarter of a second each: botocore reads the service's whole model
def input_shape(operation: str, service: str = "sagemaker") -> Any:
    return botocore.session.get_session().get_service_model(service).operation_model(operation).input_shape


def validate(operation: str, request: Mapping[str, Any], service: str = "sagemaker") -> None:
    """Check a request against botocore's service model, as the client would before sending it, and
    each string against its shape's pattern, enum and longest length, which the service checks and
    the client does not."""
    shape = input_shape(operation, service)
    report = ParamValidator().validate(dict(request), shape)
    if report.has_errors():
        raise TrainError(f"{operation} request is not valid for {service}:\n{report.generate_report()}")
    wrong = list(pattern_misses(request, shape, operation))
    if wrong:
        raise TrainError(f"{operation} request is not valid for {service}: " + "; ".join(wrong))


def pattern_misses(value: Any, shape: Any, where: str) -> Iterator[str]:
    """``where: value`` for each string of ``value`` that does not match its shape's enum or pattern,
    or is shorter or longer than it takes, and each number outside its shape's bounds."""
    if shape.type_name == "structure" and isinstance(value, Mapping):
        for name, member in shape.members.items():
            if name in value:
                yield from pattern_misses(value[name], member, f"{where}.{name}")
    elif shape.type_name == "list" and isinstance(value, list):
        for index, item in enumerate(value):
            yield from pattern_misses(item, shape.member, f"{where}[{index}]")
    elif shape.type_name == "map" and isinstance(value, Mapping):
        for key, item in value.items():
            yield from pattern_misses(key, shape.key, f"{where} key")
            yield from pattern_misses(item, shape.value, f"{where}[{key}]")
    elif shape.type_name == "string" and isinstance(value, str):
        shortest, longest = shape.metadata.get("min", 0), shape.metadata.get("max", len(value))
        pattern = _compiled(shape.metadata["pattern"]) if "pattern" in shape.metadata else None
        shown = repr(shortened(value))  # an S3 URI or a hyperparameter can run to thousands of characters
        if shape.enum and value not in shape.enum:
            yield f"{where}: {shown} is not one of {', '.join(shape.enum)}"
        # AWS services match the whole value (their models come from Java's matches()), anchored or not.
        elif pattern is not None and not pattern.fullmatch(value):
            yield f"{where}: {shown} does not match {shape.metadata['pattern']}"
        elif not shortest <= len(value) <= longest:
            yield f"{where}: {shown} is {len(value)} characters long, not {shortest} to {longest}"
    elif shape.type_name in ("integer", "long") and isinstance(value, int):
        # botocore checks a number's minimum; its maximum, where the model has one, is left to the service,
        # as is an ``integer``'s width: the service reads it as Java's 32-bit int, and refuses a larger one.
        longest = shape.metadata.get("max", JAVA_INT_MAX if shape.type_name == "integer" else None)
        if "min" in shape.metadata and value < shape.metadata["min"]:
            yield f"{where}: {value} is below {shape.metadata['min']}"
        elif longest is not None and value > longest:
            yield f"{where}: {value} is above {longest}"


def check_setting(setting: str, value: str | int, operation: str, member: str, service: str = "sagemaker") -> None:
    """A value the user gave, checked against the request member it fills (``A.B``) before the whole
    request is: the error names ``setting``, the option or variable the user can change."""
    shape = input_shape(operation, service)
    for name in member.split("."):
        shape = shape.members[name]
    wrong = list(pattern_misses(value, shape, setting))
    if wrong:
        raise TrainError("; ".join(wrong))


# The largest value of an AWS ``integer`` shape (Java's int; ``long`` is 64 bits).
JAVA_INT_MAX = 2**31 - 1
# Java's "." stops at every line terminator, Python's only at "\n".
JAVA_DOT = "[^\\n\\r\\u0085\\u2028\\u2029]"
# Java's POSIX classes are US-ASCII only; ``regex`` reads them as Unicode.
JAVA_POSIX = {"Alnum": "a-zA-Z0-9", "Alpha": "a-zA-Z", "Digit": "0-9", "Lower": "a-z", "Upper": "A-Z"}


def _as_java_reads_it(pattern: str) -> str:
    """``pattern`` (a Java regex, as AWS's models write them) rewritten so that Python reads it as
    Java does: its "." and its POSIX classes (``\\p{Alnum}``) spelled out."""
    parts, in_class = [], False
    for token in re.finditer(r"\\p\{(\w+)\}|\\.|\[\^?|\]|.", pattern, re.DOTALL):
        text = token.group()
        if token.group(1) in JAVA_POSIX:
            text = JAVA_POSIX[token.group(1)] if in_class else f"[{JAVA_POSIX[token.group(1)]}]"
        elif text.startswith("[") and not in_class:
            in_class = True
        elif text == "]":
            in_class = False
        elif text == "." and not in_class:
            text = JAVA_DOT
        parts.append(text)
    return "".join(parts)


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str] | regex.Pattern[str] | None:
    """``pattern`` compiled so that ``fullmatch`` agrees with Java's ``matches()``, which the service runs."""
    java = _as_java_reads_it(pattern)
    try:  # Java's \d, \w, \s and \b are ASCII, as Python's are with re.ASCII
        return re.compile(java, re.ASCII)
    except re.error:
        pass
    # Java's classes such as \p{L} (SageMaker's tag values), which ``regex`` reads as Java does. Not with
    # regex.ASCII, which would narrow \p{L} too: no pattern in the models that needs ``regex`` uses \d, \w or \s.
    try:
        return regex.compile(java)
    except regex.error:  # a construct neither reads: left to the service
        return None


def _folder(uri: str) -> str:
    """An S3 folder without its trailing slash (``aws s3`` users write one), which S3 paths keep as
    an empty part (``.../v1//manifest.json``); a local path is normalised by the filesystem."""
    return uri.rstrip("/") if is_s3(uri) else uri


def load_version(version_uri: str) -> Manifest:
    """The version's manifest, after checking every file it lists against its sha256."""
    version_uri = _folder(version_uri)
    try:
        manifest = read_manifest(version_uri)
        bad = verify_checksums(version_uri, manifest)
    except StorageError as error:
        raise TrainError(str(error)) from None
    if bad:
        listed = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise TrainError(
            f"{version_uri}: {len(bad)} file(s) differ from their sha256 in the manifest, are missing or "
            f"are not in it: {listed}"
        )
    _check_lines_fit_format(version_uri, manifest)
    train = manifest.splits.get("train")
    if train is None or not train.records:
        raise TrainError(f"{version_uri}: its train split holds no records: nothing to train on")
    return manifest


def _check_lines_fit_format(version_uri: str, manifest: Manifest) -> None:
    """The manifest's format decides the training switches, and nothing checksums the manifest: its
    first line must hold what that format writes (a manifest edited to another format is refused)."""
    from curation.formats import output_format

    try:
        columns = set(output_format(manifest.format, manifest.record_kind).columns)
    except (KeyError, ValueError):
        raise TrainError(
            f"{version_uri}: the manifest names {manifest.record_kind} records in the {manifest.format!r} format, "
            "which curation does not write"
        ) from None
    shard = next((s for split in manifest.splits.values() for s in split.shards if s.records), None)
    if shard is None:
        return
    fs, root = filesystem(version_uri)
    with fs.open_input_stream(f"{root}/{shard.path}") as stream:
        first = b""
        while b"\n" not in first and (chunk := stream.read(1 << 20)):  # a document can be one long line
            first += chunk
        first = first.split(b"\n", 1)[0]
    try:
        keys = set(json.loads(first))
    except (ValueError, TypeError):
        keys = set()
    if keys != columns:
        raise TrainError(
            f"{version_uri}: the manifest says {manifest.format}, whose lines hold {sorted(columns)}, but the first "
            f"line of {shard.path} holds {sorted(keys)}: was the manifest changed after publishing?"
        )


def check_copy(version_uri: str, data_uri: str) -> None:
    """The copy at ``data_uri`` (of a version published on local disk) is that version: the same
    manifest, every file it lists there with its size and its content as S3's ETag tells it (see
    ``_local_etag``); and nothing else in the split folders. Hashing the copy itself would mean
    downloading it. The local files' sha256 are checked by ``training_request``."""
    version_uri, data_uri = _folder(version_uri), _folder(data_uri)
    manifest = read_manifest(version_uri)
    try:
        copy = read_manifest(data_uri)
    except StorageError as error:
        raise TrainError(f"--data-uri {error}") from None  # the error names the URI
    if copy != manifest:
        raise TrainError(
            f"--data-uri {data_uri} holds {copy.dataset} v{copy.version} as published on {copy.created_at:%Y-%m-%d %H:%M}, "
            f"not the {manifest.dataset} v{manifest.version} of {version_uri}: copy the version there again"
        )
    try:
        objects = {path: entry for path, entry in s3_objects(data_uri).items() if path.split("/")[0] in manifest.splits}
    except StorageError as error:
        raise TrainError(f"--data-uri {error}") from None  # the error names the URI
    local, root = filesystem(version_uri)
    listed = {shard.path: shard.bytes for shard in manifest.all_files() if shard.path.split("/")[0] in manifest.splits}
    side = {path: None for path in manifest.side_files if path.split("/")[0] in manifest.splits}
    sizes: dict[str, int | None] = {**listed, **side}

    def differs(path: str, size: int | None) -> bool:
        entry = objects.get(path)
        if entry is None or (size is not None and entry.size != size):
            return True
        etag = _local_etag(local, f"{root}/{path}", entry) if entry.etag else None
        return etag is not None and etag != entry.etag and not _encrypted_by_key(entry.uri)

    try:
        wrong = sorted(path for path, size in sizes.items() if differs(path, size))
    except botocore.exceptions.ClientError as error:  # a part's size or encryption asked of S3: denied, down
        raise TrainError(f"--data-uri {data_uri}: cannot read: {error}") from None
    extra = sorted(set(objects) - set(sizes))
    if wrong or extra:
        named = ", ".join([*wrong[:3], *(f"{path} (not in the manifest)" for path in extra[:3])])
        raise TrainError(f"--data-uri {data_uri} is not a copy of {version_uri}: {named}")


def check_output(output_uri: str) -> None:
    """SageMaker writes the model to ``--output`` only once the training is done and paid for: a
    bucket that is not there is refused before the job starts."""
    fs, path = filesystem(output_uri)
    bucket = path.partition("/")[0]
    if not bucket_exists(fs, bucket):
        raise TrainError(f"--output {output_uri}: there is no bucket {bucket!r}")


def _local_etag(fs: Any, path: str, entry: FileEntry) -> str | None:
    """The ETag S3 would give the local file at ``path`` uploaded as ``entry`` was: its MD5 after a
    single-part upload; after a multipart one, the MD5 of its parts' MD5s and their count, with the
    size S3 gives the first part (``aws s3 cp`` uploads files over 8 MiB in parts). None when the
    parts cannot be told (their count differs: not all but the last of one size)."""
    multipart = re.fullmatch(r"[0-9a-f]{32}-(\d+)", entry.etag)
    if multipart is None:
        if not re.fullmatch(r"[0-9a-f]{32}", entry.etag):
            return None
        with fs.open_input_stream(path) as stream:
            return hashlib.file_digest(stream, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()
    import boto3

    bucket, _, key = entry.uri.removeprefix("s3://").partition("/")
    part_bytes = boto3.client("s3").head_object(Bucket=bucket, Key=key, PartNumber=1)["ContentLength"]
    digests = []
    with fs.open_input_stream(path) as stream:
        while part := stream.read(part_bytes):
            digests.append(hashlib.md5(part, usedforsecurity=False).digest())
    if len(digests) != int(multipart.group(1)):
        return None
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


def _encrypted_by_key(uri: str) -> bool:
    """Whether S3 encrypts the object with KMS or a customer key: its ETag is then no MD5 of the content."""
    import boto3

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    head = boto3.client("s3").head_object(Bucket=bucket, Key=key)
    return head.get("ServerSideEncryption", "").startswith("aws:kms") or "SSECustomerAlgorithm" in head


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def job_name(manifest: Manifest, model_id: str, now: datetime | None = None) -> str:
    """``DATASET-vN-MODEL-TIMESTAMP-RANDOM`` in SageMaker's 63 characters: a long dataset name is cut
    first (down to 16 characters), then the model's. SageMaker refuses a name already used in the
    account and region, and two launches can share a second (a retry, a script, the review page):
    the random part keeps them apart."""

    def words(text: str) -> str:  # one dash between words: Bedrock's model name (the job's) refuses "--"
        return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")

    stamp = f"{(now or datetime.now(UTC)):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
    version = f"v{manifest.version}"
    dataset = words(manifest.dataset)
    model = words(re.sub(r"^(meta|huggingface)-(textgeneration|vlm|llm)-", "", model_id))
    room = 63 - len(f"-{version}--{stamp}")  # what dataset and model share, a dash between them
    model = model[: room - min(len(dataset), 16)].rstrip("-")
    dataset = dataset[: room - len(model)].rstrip("-")
    return "-".join(part for part in (dataset, version, model, stamp) if part)


def _s3_location(version_uri: str, data_uri: str | None, manifest: Manifest) -> str:
    if data_uri:
        return data_uri.rstrip("/")
    if is_s3(version_uri):
        return version_uri.rstrip("/")
    # A version published on local disk: a dry run shows where it would be read from once copied.
    return f"s3://{PLACEHOLDER_BUCKET}/{manifest.dataset}/v{manifest.version}"


def _parent(uri: str) -> str:
    """The S3 prefix holding ``uri`` (no trailing slash); a bucket's root holds itself, so a default
    output beside the data stays in the data's bucket."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return uri.rsplit("/", 1)[0] if key.strip("/") else f"s3://{bucket}"


def _channel(name: str, uri: str, content_type: str | None = None) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}
        },
        "InputMode": "File",
    }
    if content_type:
        channel["ContentType"] = content_type
    return channel


def hyperparameters_for(
    spec: ModelSpec,
    manifest: Manifest,
    overrides: Mapping[str, str] | None = None,
    typed: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The model's defaults, the switches the format needs, then the user's settings (checked by name).
    ``typed`` says how the user wrote a setting that was no ``key=value`` (a CLI option such as
    ``--int8``): errors name that, which is what the user can find and change."""
    typed = typed or {}
    if manifest.format in NOT_FOR_SAGEMAKER:
        raise TrainError(
            f"{manifest.dataset} v{manifest.version} is in the {manifest.format!r} format, which JumpStart does "
            f"not read; {NOT_FOR_SAGEMAKER[manifest.format]}"
        )
    # A format is taken only with its switch: dropped, the script would read the data as another format's.
    offered = [f for f in spec.formats if has_switch(f, spec.hyperparameters)]
    if manifest.format not in offered:
        switch = FORMAT_SWITCH.get(manifest.format)
        lacks = f" (it has no {switch} hyperparameter)" if manifest.format in spec.formats and switch else ""
        raise TrainError(
            f"{spec.model_id} trains on {', '.join(offered) or 'none of our formats'} data, not "
            f"{manifest.format!r}{lacks}; {_way_out(offered, manifest.record_kind)}"
        )
    if manifest.format == "text":
        # JumpStart domain adaptation reads exactly one file per channel.
        split_up = [name for name, split in manifest.splits.items() if len(split.shards) > 1]
        if split_up:
            raise TrainError(
                f"{manifest.dataset} v{manifest.version}: JumpStart domain adaptation reads one file per channel, "
                f"but {', '.join(split_up)} has several shards (an earlier release published it so); the next "
                "version (a scheduled run, or `curation run RECIPE --full-refresh`) writes each split as one file"
            )
    values = dict(spec.hyperparameters)
    needed = {k: v for k, v in FORMAT_HYPERPARAMETERS[manifest.format].items() if k in values}
    values.update(needed)
    for key, value in (overrides or {}).items():
        if key not in spec.hyperparameters:
            takes = f"it takes: {', '.join(sorted(spec.hyperparameters))}"
            if key in typed:
                raise SpecError(f"{typed[key]} sets {key}, which {spec.model_id} does not take; {takes}")
            raise SpecError(f"{spec.model_id} has no hyperparameter {key!r}; {takes}")
        if key in needed and str(value) != needed[key]:
            raise SpecError(f"the {manifest.format} format trains with {key}={needed[key]}, not {value}")
        problem = _too_long(str(value)) or _value_problem(
            str(value), spec.hyperparameters[key], spec.hyperparameter_ranges.get(key)
        )
        if problem:
            shown = f"{key}={shortened(str(value))}"
            where = f"{typed[key]} ({shown})" if key in typed else f"hyperparameter {shown}"
            raise SpecError(f"{where}: {problem}")
        values[key] = str(value)
    # JumpStart's Llama notes: int8 quantisation does not work with FSDP; set exactly one of the two.
    overrides = overrides or {}
    if values.get("int8_quantization") == "True" and "enable_fsdp" in values:
        if overrides.get("enable_fsdp") == "True":
            int8 = typed.get("int8_quantization", "int8_quantization=True")
            raise SpecError(f"{int8} does not work with enable_fsdp=True; choose one")
        values["enable_fsdp"] = "False"
    return values


def _way_out(offered: list[str], record_kind: str) -> str:
    """What to change when a model does not take a version's format: the format, where one the model
    takes is written from the version's kind of records; else the model (VQA records are written only
    as jumpstart-vqa, which vision-language models alone take)."""
    from curation.formats import FORMATS

    if any(record_kind in FORMATS[fmt].kinds for fmt in offered):
        return "publish the dataset in one of those formats (output.format in the recipe)"
    pinned = VendoredSpecs().models
    fitting = [model for model, raw in pinned.items() if any(record_kind in FORMATS[f].kinds for f in raw["formats"])]
    # A text model takes instruction records only with a format's switch (a base model has none).
    switches = [switch for fmt, switch in FORMAT_SWITCH.items() if record_kind in FORMATS[fmt].kinds]
    text = f"a text model with the {' or '.join(switches)} switch" if switches else "a text model"
    kind = "a vision-language model (-vlm- in its id)" if record_kind == "vqa" else text
    such = f", such as {' or '.join(fitting[:2])}" if fitting else ""
    return f"no format of {record_kind} records is one of those: choose {kind} for them{such}"


def _too_long(value: str) -> str | None:
    """SageMaker's own limit on a hyperparameter value (botocore's ``HyperParameterValue``), which the
    request's check would find too, but naming the request field and echoing the whole value."""
    longest = input_shape("CreateTrainingJob").members["HyperParameters"].value.metadata["max"]
    return f"{len(value)} characters; SageMaker takes at most {longest}" if len(value) > longest else None


def _beyond(given: float, bounds: Mapping[str, Any]) -> str | None:
    """What ``given`` must be (``at most 10``) when it is outside JumpStart's ``bounds``."""
    for bound, fits, words in (
        ("min", operator.ge, "at least"),
        ("exclusive_min", operator.gt, "above"),
        ("max", operator.le, "at most"),
        ("exclusive_max", operator.lt, "below"),
    ):
        if bound in bounds and not fits(given, bounds[bound]):
            return f"{words} {bounds[bound]:g}"
    return None


def _value_problem(value: str, default: str, bounds: Mapping[str, Any] | None = None) -> str | None:
    """What is wrong with ``value`` for a hyperparameter whose default is ``default``: one of the
    model's options where it lists them, of the default's kind (True/False, a whole number, a number)
    and within the model's ``bounds`` (JumpStart's min, max, exclusive_min, exclusive_max); without
    bounds a positive default stays positive (epochs, ranks, rates; -1 and None stand for "all" or
    "unset" and leave the value free, but a default of -1 takes -1 or above 0); a text within its
    ``length`` bounds."""
    if bounds and "options" in bounds and value not in bounds["options"]:
        return f"takes one of {', '.join(bounds['options'])} (default {default})"
    if bounds and (outside := _beyond(len(value), bounds.get("length", {}))):
        return f"must be {outside} character{'' if outside.endswith(' 1') else 's'} long (default {default})"
    if default in ("True", "False"):
        return None if value in ("True", "False") else "takes True or False"
    for kind, name in ((int, "a whole number"), (float, "a number")):
        try:
            number = kind(default)
        except ValueError:
            continue
        try:
            given = kind(value.replace("_", "?"))  # Python reads 1_6 as 16; a training script may not
        except ValueError:
            return f"takes {name} (default {default})"
        if not math.isfinite(given):
            return f"takes a finite number (default {default})"
        if number == -1 and given != -1 and given <= 0:
            # -1 is JumpStart's "all" (max_train_samples) or "the model's own" (max_input_length); otherwise
            # it takes a positive count, whatever lower bound (-1) the spec's range gives: 0 is no count.
            return f"must be -1 or above 0 (default {default})"
        if not set(BOUNDS) & set(bounds or {}):
            return f"must be above 0 (default {default})" if number > 0 and given <= 0 else None
        outside = _beyond(given, bounds or {})
        return f"must be {outside} (default {default})" if outside else None
    return None


def training_request(
    version_uri: str,
    model_id: str,
    *,
    instance_type: str | None = None,
    hyperparameters: Mapping[str, str] | None = None,
    role_arn: str | None = None,
    output_uri: str | None = None,
    data_uri: str | None = None,
    specs: SpecResolver | None = None,
    now: datetime | None = None,
    typed: Mapping[str, str] | None = None,
    max_runtime_s: int | None = None,
) -> dict:
    """The exact CreateTrainingJob request for fine-tuning ``model_id`` on a published version
    (``typed``: how the user wrote each hyperparameter set by an option, see ``hyperparameters_for``;
    ``max_runtime_s``: the job's limit, else the model's spec's, as JumpStartEstimator's ``max_run``)."""
    manifest = load_version(version_uri)
    spec = with_instance((specs or spec_resolver())(model_id, region(), instance_type), instance_type)
    values = hyperparameters_for(spec, manifest, hyperparameters, typed)
    # The prepacked JumpStart script runs through the SageMaker training toolkit, which finds it by these two.
    # A network-isolated job (as the spec asks) cannot fetch it from S3: it comes in the "code" channel, and
    # the toolkit is pointed there, as the SageMaker SDK does for an isolated job; otherwise at the script's URI.
    values["sagemaker_program"] = json.dumps(spec.entry_point)
    values["sagemaker_submit_directory"] = json.dumps(
        CODE_CHANNEL_SOURCEDIR if spec.network_isolation else spec.script_uri
    )
    name = job_name(manifest, model_id, now)
    # The rest of what the SDK's script mode hands the toolkit: without them it logs at its own level, reads
    # the region from the container's boto3 session, and sets the script's JOB_NAME variable empty.
    values["sagemaker_container_log_level"] = json.dumps(logging.INFO)
    values["sagemaker_job_name"] = json.dumps(name)
    values["sagemaker_region"] = json.dumps(region())
    if max_runtime_s is not None:
        check_setting("--max-runtime", max_runtime_s, "CreateTrainingJob", "StoppingCondition.MaxRuntimeInSeconds")
    for setting, uri in (("--data-uri", data_uri), ("--output", output_uri)):
        if uri is not None and not uri.startswith("s3://"):
            raise TrainError(f"{setting} must be an s3:// URI, not {uri!r}: SageMaker reads and writes S3")
    role = role_arn or os.environ.get(ROLE_ENV)
    if role:
        check_setting("--role" if role_arn else ROLE_ENV, role, "CreateTrainingJob", "RoleArn")
    if output_uri is not None:
        check_setting("--output", output_uri, "CreateTrainingJob", "OutputDataConfig.S3OutputPath")
    data = _s3_location(version_uri, data_uri, manifest)
    content_type = None if manifest.format == "jumpstart-vqa" else "application/jsonlines"
    channels = [_channel("training", f"{data}/train/", content_type)]
    if manifest.splits.get("validation") and manifest.splits["validation"].records:
        channels.append(_channel("validation", f"{data}/validation/", content_type))
    elif "validation_split_ratio" in values and manifest.splits["train"].records < 2:
        # Without a validation channel JumpStart splits validation_split_ratio of the training records off
        # for evaluation: one record leaves one side empty, and the job fails once its instance is paid for.
        raise TrainError(
            f"{version_uri}: its train split holds 1 record and it has no validation records; JumpStart would split "
            "the training records into training and validation, which one record cannot be: publish more records"
        )
    # As the SageMaker SDK hands JumpStart's weights to a job: a prefix (S3Object is for endpoints, not
    # training channels), marked as a model.
    model_channel = _channel("model", spec.model_uri, "application/x-sagemaker-model")
    if spec.gated:
        # Meta's models are gated: the job reads the weights only with the EULA accepted.
        model_channel["DataSource"]["S3DataSource"]["ModelAccessConfig"] = {"AcceptEula": True}
    channels.append(model_channel)
    if spec.network_isolation:
        channels.append(_channel("code", spec.script_uri))
    output = (output_uri or f"{_parent(data)}/training-output").rstrip("/") + "/"
    request: dict[str, Any] = {
        "TrainingJobName": name,
        "RoleArn": role or PLACEHOLDER_ROLE,
        "AlgorithmSpecification": {
            "TrainingImage": spec.training_image,
            "TrainingInputMode": "File",
            **({"MetricDefinitions": list(spec.metric_definitions)} if spec.metric_definitions else {}),
        },
        "HyperParameters": values,
        # The training variables the spec gives the instance type (its training_instance_type_variants).
        **({"Environment": dict(spec.environment)} if spec.environment else {}),
        "InputDataConfig": channels,
        # Uncompressed artifacts: Bedrock Custom Model Import reads the model files from an S3 prefix.
        "OutputDataConfig": {"S3OutputPath": output, "CompressionType": "NONE"},
        "ResourceConfig": {
            "InstanceType": spec.default_instance_type,
            "InstanceCount": 1,
            "VolumeSizeInGB": volume_gb(spec),
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": spec.max_runtime_s if max_runtime_s is None else max_runtime_s},
        # Sent only when on, as the SageMaker SDK does.
        **({"EnableNetworkIsolation": True} if spec.network_isolation else {}),
        **({"EnableInterContainerTrafficEncryption": True} if spec.encrypt_inter_container_traffic else {}),
        "Tags": [
            {"Key": "sagemaker-sdk:jumpstart-model-id", "Value": model_id},
            # "*" (the latest, as a live lookup may ask) is no tag value SageMaker takes.
            *([{"Key": "sagemaker-sdk:jumpstart-model-version", "Value": spec.version}] if spec.version != "*" else []),
            {"Key": "curation:dataset", "Value": manifest.dataset},
            {"Key": "curation:version", "Value": str(manifest.version)},
            {"Key": "curation:recipe-sha256", "Value": manifest.recipe_sha256},
        ],
    }
    validate("CreateTrainingJob", request)
    return request


def placeholders(request: Mapping[str, Any]) -> list[str]:
    """What a dry run filled in that a real launch needs from the user."""
    text = json.dumps(request)
    found = []
    if PLACEHOLDER_ROLE in text:
        found.append(f"an execution role (--role or {ROLE_ENV})")
    if PLACEHOLDER_BUCKET in text:
        found.append("the dataset on S3 (publish it to s3:// or copy it there and pass --data-uri)")
    return found


def held_out(request: Mapping[str, Any], version_uri: str) -> str | None:
    """What JumpStart keeps from training when the request has no validation channel: it evaluates on
    ``validation_split_ratio`` of the training records, which a recipe with no validation_fraction may
    have meant to train on whole, and one with a validation_fraction had too few records to fill."""
    ratio = request["HyperParameters"].get("validation_split_ratio")
    if ratio is None or any(c["ChannelName"] == "validation" for c in request["InputDataConfig"]):
        return None
    split = read_manifest(_folder(version_uri)).split
    fraction = split.get("validation_fraction") or 0
    how = (
        f"its validation_fraction {fraction} placed none there: {how_to_fill_validation(split.get('group_by'))}"
        if fraction > 0
        else "publish with output.validation_fraction to choose them"
    )
    return (
        f"the version has no validation records, so JumpStart holds out validation_split_ratio={ratio} of the "
        f"training records for evaluation ({how})"
    )


def delta_only(version_uri: str) -> str | None:
    """What a job on a version published with ``output.carry_forward: false`` trains on: only the records new in
    its run (the dataset is the chain of versions), which a launch on it may have taken for the whole dataset."""
    manifest = read_manifest(_folder(version_uri))
    if not manifest.holds_only_its_run:
        return None
    train = manifest.splits["train"].records
    return (
        f"{manifest.dataset} v{manifest.version} holds only the records new in its run (carry_forward is off; it "
        f"extends v{manifest.extends}): the job trains on its {train} training record(s), not the whole dataset; "
        "publish with output.carry_forward on, or a --full-refresh version, to train on everything"
    )


def _sagemaker() -> Any:
    """The SageMaker SDK's own botocore client, for this run's region (imported late: the SDK is slow to load)."""
    from sagemaker.core.resources import Base

    return Base.get_sagemaker_client(region_name=region(), service_name="sagemaker")


def launch(request: dict) -> str:
    """Create the training job with the SageMaker SDK's own client; returns its name. Only
    CreateTrainingJob is called: the SDK's ``TrainingJob.create`` describes the job after creating
    it, and a describe that failed (a role that may not, a throttle) read as a refused launch of a
    job that runs, which a rerun created twice."""
    missing = placeholders(request)
    if missing:
        raise TrainError("cannot launch: the request still needs " + " and ".join(missing))
    validate("CreateTrainingJob", request)
    client = _sagemaker()
    try:
        client.create_training_job(**request)
    except botocore.exceptions.ClientError as error:
        # The name is ours, with a random part (``job_name``): only our own earlier attempt holds it,
        # one botocore sent again after its answer was lost (a read timeout). That attempt created the job.
        if error.response.get("Error", {}).get("Code") != "ResourceInUse":
            raise
    return request["TrainingJobName"]


def describe(job_name: str) -> dict:
    """DescribeTrainingJob, as botocore returns it (the SDK's own client)."""
    client = _sagemaker()
    return client.describe_training_job(TrainingJobName=job_name)


def tags(resource_arn: str) -> list[dict[str, str]]:
    """ListTags on a SageMaker resource, every page (DescribeTrainingJob does not return a job's tags)."""
    client = _sagemaker()
    found: list[dict[str, str]] = []
    token = None
    while True:
        answer = client.list_tags(ResourceArn=resource_arn, **({"NextToken": token} if token else {}))
        found += answer.get("Tags", [])
        token = answer.get("NextToken")
        if not token:
            return found


class WaitTimedOut(TrainError):
    """The job is still running when the wait gives up (it goes on): not a failed job."""


def wait(
    job_name: str,
    on_update: Callable[[dict], None] = lambda _: None,
    poll_seconds: float = 15.0,
    timeout_seconds: float | None = None,
    describe_job: Callable[[str], dict] = describe,
) -> dict:
    """Poll until the job ends; returns the last description (check ``TrainingJobStatus``). Raises
    ``WaitTimedOut`` when it is still running after ``timeout_seconds``."""
    started = time.monotonic()
    while True:
        info = describe_job(job_name)
        on_update(info)
        if info["TrainingJobStatus"] in TERMINAL:
            return info
        if timeout_seconds is not None and time.monotonic() - started > timeout_seconds:
            raise WaitTimedOut(f"{job_name}: still {info['TrainingJobStatus']} after {timeout_seconds:.0f}s")
        time.sleep(poll_seconds)


def model_artifacts(info: Mapping[str, Any]) -> str:
    """Where the trained model is: the uncompressed folder when the job wrote one."""
    output = info.get("OutputDataConfig", {})
    if output.get("CompressionType") == "NONE":
        return f"{output['S3OutputPath'].rstrip('/')}/{info['TrainingJobName']}/output/model/"
    return info["ModelArtifacts"]["S3ModelArtifacts"]
