"""The SageMaker handoff: the training request is checked against botocore's service model, sent to
a moto server on loopback through the SageMaker SDK, described and waited on; the Bedrock import
request is built from the finished job and checked against botocore's Bedrock model. JumpStart specs
come from the pinned file, so nothing here needs the network."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import shutil
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from curation.pipeline import run_recipe
from schemas.config import load_recipe
from tests import cli_process
from tests.helpers import run, seed_placing_group, write_jsonl, write_recipe
from train.bedrock import import_request, request_for_job, start_import
from train.jumpstart import SpecError, VendoredSpecs, formats_for
from train.sagemaker import (
    TrainError,
    describe,
    hyperparameters_for,
    launch,
    load_version,
    training_request,
    validate,
    wait,
)

ROLE = "arn:aws:iam::123456789012:role/curation-training"
PINNED = VendoredSpecs()
MODEL = "meta-textgeneration-llama-3-2-1b"


def curation(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return cli_process.curation(*args, cwd=cwd, timeout=180)


def run_fresh(folder: Path, recipe: dict[str, Any]) -> str:
    """Run a recipe; a rerun over the same input reprocesses it (incremental runs switched off)."""
    loaded = load_recipe(write_recipe(folder, recipe))
    if "full_refresh" in inspect.signature(run_recipe).parameters:
        return run_recipe(loaded, full_refresh=True).version_uri
    return run_recipe(loaded).version_uri


def publish(folder: Path, fmt: str, dest: str | None = None, dataset: str = "pairs") -> str:
    rows = [{"q": f"Categorise purchase {i}", "a": "Dining" if i % 2 else "Travel"} for i in range(30)]
    write_jsonl(folder / "pairs.jsonl", rows)
    recipe = {
        "dataset": dataset,
        "sources": [{"path": str(folder / "pairs.jsonl")}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        # Stratified by the category: each one's 15 records give 3 to validation whatever their ids, which hang
        # on the folder's name (hashed, validation was empty about one run in 800, and the tests that read its
        # channel failed).
        "output": {"dest": dest or str(folder / "out"), "format": fmt, "validation_fraction": 0.2, "stratify_by": "a"},
    }
    return run_fresh(folder, recipe)


def channels(request: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["ChannelName"]: c["DataSource"]["S3DataSource"] for c in request["InputDataConfig"]}


def test_dry_run_prints_a_valid_request_for_instruction_data(workdir: Path) -> None:
    version = publish(workdir, "jumpstart-instruction")
    done = curation(
        "train", "launch", version, "--model", MODEL, "--specs", "pinned", "--dry-run", "--lora-r", "16",
        "-H", "learning_rate=0.0002", "--int8", cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    request = json.loads(done.stdout)
    validate("CreateTrainingJob", request)  # what botocore would send, exactly
    hp = request["HyperParameters"]
    # template.json is in the training channel, so JumpStart's instruction tuning is switched on.
    assert hp["instruction_tuned"] == "True" and hp["chat_dataset"] == "False"
    assert hp["lora_r"] == "16" and hp["learning_rate"] == "0.0002" and hp["int8_quantization"] == "True"
    assert hp["enable_fsdp"] == "False"  # JumpStart: int8 and FSDP do not go together
    assert set(channels(request)) == {"training", "validation", "model", "code"}
    assert channels(request)["model"]["ModelAccessConfig"] == {"AcceptEula": True}
    # The job runs network-isolated: the training script comes in the "code" channel, not from S3 at run time.
    assert request["EnableNetworkIsolation"] is True
    assert channels(request)["code"]["S3Uri"] == PINNED(MODEL, "us-east-1").script_uri
    assert json.loads(hp["sagemaker_submit_directory"]) == "/opt/ml/input/data/code/sourcedir.tar.gz"
    assert channels(request)["model"]["S3DataType"] == "S3Prefix"  # S3Object is no training channel's type
    assert request["ResourceConfig"]["InstanceType"] == "ml.g5.2xlarge"
    # Published locally and no role given: the dry run says what a real launch still needs.
    assert "execution role" in done.stderr and "dataset on S3" in done.stderr
    assert "holds out" not in done.stderr  # validation records: nothing of the training records is held out


def test_chat_data_switches_chat_mode_and_bad_settings_are_refused(workdir: Path) -> None:
    version = publish(workdir, "jumpstart-chat")
    request = training_request(version, MODEL, role_arn=ROLE, data_uri="s3://b/pairs/v1", specs=PINNED)
    assert request["HyperParameters"]["chat_dataset"] == "True"
    assert request["HyperParameters"]["instruction_tuned"] == "False"
    assert channels(request)["training"]["S3Uri"] == "s3://b/pairs/v1/train/"
    with pytest.raises(SpecError, match="no hyperparameter 'lora_rank'"):
        training_request(version, MODEL, hyperparameters={"lora_rank": "8"}, specs=PINNED)
    with pytest.raises(SpecError, match=r"does not train on ml\.t3\.medium"):
        training_request(version, MODEL, instance_type="ml.t3.medium", specs=PINNED)
    with pytest.raises(TrainError, match="trains on jumpstart-vqa data"):
        training_request(version, "meta-vlm-llama-3-2-11b-vision-instruct", specs=PINNED)


def test_tag_values_are_checked_and_a_live_specs_version_is_no_tag_sagemaker_refuses(workdir: Path) -> None:
    """SageMaker's tag values match [\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*, a Java class Python's re cannot
    read: it is still checked. The live lookup asks the SDK for version "*" (the latest), which is
    no tag value SageMaker takes."""
    version = publish(workdir, "jumpstart-instruction")
    request = training_request(version, MODEL, role_arn=ROLE, data_uri="s3://b/pairs/v1", specs=PINNED)
    # Enums too: botocore sends any string; SageMaker takes S3DataType S3Prefix, ManifestFile, ...
    model = {**request["InputDataConfig"][-1]}
    model["DataSource"] = {"S3DataSource": {**model["DataSource"]["S3DataSource"], "S3DataType": "S3Object"}}
    with pytest.raises(TrainError, match=r"S3DataType: 'S3Object' is not one of ManifestFile, S3Prefix"):
        validate("CreateTrainingJob", {**request, "InputDataConfig": [*request["InputDataConfig"][:-1], model]})
    starred = {**request, "Tags": [*request["Tags"], {"Key": "k", "Value": "*"}]}
    with pytest.raises(TrainError, match=r"Tags\[5\]\.Value: '\*' does not match"):
        validate("CreateTrainingJob", starred)

    def live(model_id: str, region: str, instance_type: str | None = None) -> Any:
        from dataclasses import replace

        return replace(PINNED(model_id, region, instance_type), version="*", origin="sdk")

    request = training_request(version, MODEL, role_arn=ROLE, data_uri="s3://b/pairs/v1", specs=live)
    assert "*" not in [tag["Value"] for tag in request["Tags"]]
    assert {tag["Key"]: tag["Value"] for tag in request["Tags"]}["sagemaker-sdk:jumpstart-model-id"] == MODEL


def test_formats_jumpstart_does_not_read_are_refused(workdir: Path) -> None:
    version = publish(workdir, "messages")
    with pytest.raises(TrainError, match="TRL's SFTTrainer"):
        training_request(version, MODEL, specs=PINNED)


def test_refuses_a_version_without_manifest_or_with_a_bad_shard(workdir: Path) -> None:
    version = Path(publish(workdir, "jumpstart-instruction"))
    shard = version / "train" / "part-00000.jsonl"
    shard.write_text(shard.read_text().replace("Dining", "Dinner", 1))
    done = curation("train", "launch", str(version), "--model", MODEL, "--specs", "pinned", "--dry-run", cwd=workdir)
    assert done.returncode == 2
    assert "train/part-00000.jsonl" in done.stderr and "sha256" in done.stderr
    (version / "manifest.json").write_text("{")
    done = curation("train", "launch", str(version), "--model", MODEL, "--specs", "pinned", "--dry-run", cwd=workdir)
    assert done.returncode == 2 and "manifest.json: not a manifest" in done.stderr and "Traceback" not in done.stderr
    (version / "manifest.json").unlink()
    done = curation("train", "launch", str(version), "--model", MODEL, "--specs", "pinned", "--dry-run", cwd=workdir)
    assert done.returncode == 2 and "not published, or was deleted since" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_file_training_would_read_that_the_manifest_does_not_vouch_for_is_refused(workdir: Path) -> None:
    version = Path(publish(workdir, "jumpstart-instruction"))
    template = version / "train" / "template.json"
    original = template.read_text()
    template.write_text('{"a": 1}')  # a side file: its sha256 is in the manifest too
    with pytest.raises(TrainError, match=r"train/template\.json"):
        training_request(str(version), MODEL, specs=PINNED)
    template.write_text(original)
    (version / "train" / "part-00001.jsonl").write_text('{"prompt": "x", "completion": "y"}\n')  # not published
    with pytest.raises(TrainError, match=r"train/part-00001\.jsonl \(not in the manifest\)"):
        training_request(str(version), MODEL, specs=PINNED)
    (version / "train" / "part-00001.jsonl").unlink()
    (version / "train" / "part-00000.jsonl").unlink()
    with pytest.raises(TrainError, match=r"train/part-00000\.jsonl \(missing\)"):
        training_request(str(version), MODEL, specs=PINNED)


def test_a_first_line_longer_than_a_read_is_checked_whole(workdir: Path) -> None:
    from train.sagemaker import load_version

    write_jsonl(workdir / "docs.jsonl", [{"text": "word " * 300_000}])  # 1.5 MB on one line
    spec = {"dataset": "long", "sources": [{"path": "docs.jsonl"}], "record": {"kind": "document"}}
    spec["output"] = {"format": "text", "validation_fraction": 0.0}
    assert load_version(run(workdir, spec).version_uri).format == "text"


def test_a_version_without_training_records_is_refused(workdir: Path) -> None:
    write_jsonl(workdir / "faq.jsonl", [{"q": f"Question {n}?", "a": ""} for n in range(3)])
    spec = {
        "dataset": "faq",
        "sources": [{"path": "faq.jsonl"}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "stages": [{"type": "instruction_filter"}],  # every completion is empty: nothing is written
    }
    version = run(workdir, spec).version_uri
    with pytest.raises(TrainError, match="its train split holds no records: nothing to train on"):
        training_request(version, MODEL, specs=PINNED)


def test_a_single_record_without_validation_records_is_refused(workdir: Path) -> None:
    """JumpStart evaluates on validation_split_ratio of the training records when no validation
    channel is given: a version of one record cannot be split so, and the job would fail on its instance."""
    write_jsonl(workdir / "one.jsonl", [{"q": "Categorise: coffee at Blue Bottle", "a": "Dining"}])
    spec = {
        "dataset": "one",
        "sources": [{"path": "one.jsonl"}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "output": {"validation_fraction": 0.0},
    }
    version = run(workdir, spec).version_uri
    done = curation("train", "launch", version, "--model", MODEL, "--specs", "pinned", "--dry-run", cwd=workdir)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "its train split holds 1 record and it has no validation records" in done.stderr
    write_jsonl(workdir / "one.jsonl", [{"q": f"Categorise: coffee {n}", "a": "Dining"} for n in range(2)])
    assert training_request(run(workdir, spec).version_uri, MODEL, specs=PINNED)  # two records split


def test_a_version_whose_validation_fraction_placed_none_is_not_told_to_set_it(workdir: Path) -> None:
    """A recipe with validation_fraction 0.1 whose few records (here one customer's, grouped: the side then
    does not hang on the record ids) all went to train: the note says too few records, not to set the
    validation_fraction the recipe set."""
    seed = seed_placing_group(0.1, in_validation=False)
    write_jsonl(
        workdir / "few.jsonl", [{"q": f"Categorise: coffee {n}", "a": "Dining", "customer": "c1"} for n in range(3)]
    )
    spec = {
        "dataset": "few",
        "sources": [{"path": "few.jsonl"}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "output": {"validation_fraction": 0.1, "split_seed": seed, "group_by": "customer"},
    }
    version = run(workdir, spec).version_uri
    done = curation("train", "launch", version, "--model", MODEL, "--specs", "pinned", "--dry-run", cwd=workdir)
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stderr.split())  # the console wraps long notes
    assert "no validation records, so JumpStart holds out validation_split_ratio=0.2" in said, said
    assert "its validation_fraction 0.1 placed none there: publish more groups of 'customer'" in said, said
    assert "publish with output.validation_fraction" not in said


def test_a_manifest_edited_to_another_format_is_refused(workdir: Path) -> None:
    version = Path(publish(workdir, "jumpstart-instruction"))
    manifest = version / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"jumpstart-instruction"', '"jumpstart-chat"'))
    with pytest.raises(
        TrainError, match=r"says jumpstart-chat, whose lines hold \['dialog'\], but .* holds \['completion', 'prompt'\]"
    ):
        training_request(str(version), MODEL, specs=PINNED)


def test_hyperparameter_values_and_uris_are_checked(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    version = publish(workdir, "jumpstart-instruction")
    for values, message in (
        ({"epoch": "abc"}, "epoch=abc: takes a whole number"),
        ({"epoch": "-3"}, "epoch=-3: must be at least 1"),
        ({"lora_dropout": "1.5"}, "lora_dropout=1.5: must be at most 1"),  # a probability
        ({"validation_split_ratio": "1"}, "validation_split_ratio=1: must be below 1"),  # nothing left to train on
        ({"seed": "0"}, "seed=0: must be at least 1"),  # JumpStart's specs bound the seed to 1..1000
        ({"learning_rate": "2"}, "learning_rate=2: must be at most 1"),
        ({"learning_rate": "-1"}, "learning_rate=-1: must be at least 1e-08"),
        ({"learning_rate": "nan"}, "learning_rate=nan: takes a finite number"),
        ({"learning_rate": "inf"}, "learning_rate=inf: takes a finite number"),
        ({"lora_r": "1_6"}, "lora_r=1_6: takes a whole number"),
        ({"int8_quantization": "maybe"}, "takes True or False"),
        ({"instruction_tuned": "False"}, "trains with instruction_tuned=True"),
    ):
        with pytest.raises(SpecError, match=message):
            training_request(version, MODEL, hyperparameters=values, specs=PINNED)
    assert training_request(version, MODEL, hyperparameters={"max_train_samples": "-1"}, specs=PINNED)
    # SageMaker takes a hyperparameter value of at most 2500 characters (botocore's HyperParameterValue):
    # refused before the request is built, naming the setting, without echoing the whole value back.
    with pytest.raises(
        SpecError, match=r"^hyperparameter target_modules=q_proj,q_proj,.{0,40}: 2800 characters"
    ) as said:
        training_request(version, MODEL, hyperparameters={"target_modules": "q_proj," * 400}, specs=PINNED)
    assert "at most 2500" in str(said.value) and len(str(said.value)) < 200
    assert training_request(version, MODEL, hyperparameters={"target_modules": "q" * 2500}, specs=PINNED)
    # Zero is in JumpStart's range for these, though the default dropout is above it: no dropout.
    zeros = {"lora_dropout": "0", "train_data_split_seed": "0"}
    assert (
        training_request(version, MODEL, hyperparameters=zeros, specs=PINNED)["HyperParameters"].items()
        >= zeros.items()
    )
    with pytest.raises(TrainError, match="--output must be an s3:// URI"):
        training_request(version, MODEL, output_uri="/local/path", specs=PINNED)
    with pytest.raises(TrainError, match="--data-uri must be an s3:// URI"):
        training_request(version, MODEL, data_uri="http://x", specs=PINNED)
    # A setting the user gave is named as they gave it, not as the request field it fills (RoleArn).
    with pytest.raises(TrainError, match=r"--role: 'notanarn' does not match"):
        training_request(version, MODEL, role_arn="notanarn", specs=PINNED)
    monkeypatch.setenv("SAGEMAKER_ROLE_ARN", "role/curation-training")
    with pytest.raises(TrainError, match=r"SAGEMAKER_ROLE_ARN: 'role/curation-training' does not match"):
        training_request(version, MODEL, specs=PINNED)
    monkeypatch.delenv("SAGEMAKER_ROLE_ARN")
    clash = curation(
        "train", "launch", version, "--model", MODEL, "--specs", "pinned", "--dry-run", "--epochs", "2",
        "-H", "epoch=5", cwd=workdir,
    )  # fmt: skip
    assert clash.returncode == 2 and "--epochs 2 and -H epoch=5: set twice" in clash.stderr
    # The same values written otherwise (as JumpStart's True, or with a leading zero) are no clash.
    same = curation(
        "train", "launch", version, "--model", MODEL, "--specs", "pinned", "--dry-run", "--int8",
        "-H", "int8_quantization=true", "--epochs", "3", "-H", "epoch=03", cwd=workdir,
    )  # fmt: skip
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout)["HyperParameters"].items() >= {"int8_quantization": "True", "epoch": "3"}.items()


def vqa_version(folder: Path) -> str:
    from tests.test_formats import png

    (folder / "scans").mkdir()
    rows = []
    for name, color in {"red": (255, 0, 0), "blue": (0, 0, 255)}.items():
        (folder / "scans" / f"{name}.png").write_bytes(png(color))
        rows += [
            {"image": str(folder / "scans" / f"{name}.png"), "question": f"Colour? {i}", "answer": name}
            for i in range(5)
        ]
    write_jsonl(folder / "vqa.jsonl", rows)
    recipe = {
        "dataset": "scans",
        "sources": [{"path": str(folder / "vqa.jsonl")}],
        "record": {"kind": "vqa"},
        # All to train: an image's side hangs on its bytes, which another Pillow could write otherwise.
        "output": {"validation_fraction": 0.0},
    }
    return run_fresh(folder, recipe)


def test_errors_about_a_launch_option_name_the_option_the_user_typed(workdir: Path) -> None:
    """--int8 and --epochs set hyperparameters by other names (int8_quantization, epoch): an error
    names the option, which the user can find on their command line."""
    vision = "meta-vlm-llama-3-2-11b-vision-instruct"
    done = curation(
        "train",
        "launch",
        vqa_version(workdir),
        "--model",
        vision,
        "--specs",
        "pinned",
        "--dry-run",
        "--int8",
        cwd=workdir,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"--int8 sets int8_quantization, which {vision} does not take" in done.stderr
    version = publish(workdir, "jumpstart-instruction")
    done = curation(
        "train", "launch", version, "--model", MODEL, "--specs", "pinned", "--dry-run", "--epochs", "0", cwd=workdir
    )
    assert done.returncode == 2 and "--epochs 0 (epoch=0): must be at least 1" in done.stderr
    with pytest.raises(SpecError, match="--int8 does not work with enable_fsdp=True"):
        training_request(
            version, MODEL, hyperparameters={"int8_quantization": "True", "enable_fsdp": "True"},
            typed={"int8_quantization": "--int8"}, specs=PINNED,
        )  # fmt: skip


def test_data_no_format_of_the_model_holds_asks_for_another_model(workdir: Path) -> None:
    """VQA records are written only as jumpstart-vqa, which only vision-language models take: no
    output.format makes them fit a text model, nor instruction records a vision one."""
    vision = "meta-vlm-llama-3-2-11b-vision-instruct"
    with pytest.raises(TrainError) as refused:
        training_request(vqa_version(workdir), MODEL, specs=PINNED)
    assert str(refused.value).endswith(
        "no format of vqa records is one of those: choose a vision-language model (-vlm- in its id) for them, "
        f"such as {vision}"
    )
    with pytest.raises(TrainError) as refused:
        training_request(publish(workdir / "pairs", "jumpstart-instruction"), vision, specs=PINNED)
    assert str(refused.value).endswith(
        "no format of instruction records is one of those: choose a text model with the instruction_tuned or "
        f"chat_dataset switch for them, such as {MODEL} or meta-textgeneration-llama-3-2-3b"
    )
    # A text model without those switches (a base model) was told to "choose a text model": it is one.
    spec = PINNED(MODEL, "us-east-1")
    kept = {k: v for k, v in spec.hyperparameters.items() if k not in ("instruction_tuned", "chat_dataset")}
    base = dataclasses.replace(
        spec, model_id="a-textgeneration-base", formats=formats_for("base", kept), hyperparameters=kept
    )
    with pytest.raises(TrainError) as refused:
        hyperparameters_for(base, load_version(publish(workdir / "again", "jumpstart-instruction")))
    assert str(refused.value) == (
        "a-textgeneration-base trains on text data, not 'jumpstart-instruction'; no format of instruction records is "
        "one of those: choose a text model with the instruction_tuned or chat_dataset switch for them, such as "
        f"{MODEL} or meta-textgeneration-llama-3-2-3b"
    )


def test_a_dataset_folder_or_a_name_beside_its_versions_lists_the_versions_to_pass(workdir: Path) -> None:
    """A dataset folder, or ``latest`` in it, was "this version was never published", of a dataset published twice."""
    publish(workdir, "jumpstart-instruction")
    dataset = Path(publish(workdir, "jumpstart-instruction")).parent
    versions = f"{dataset}/v1, {dataset}/v2"
    done = curation("train", "launch", f"{dataset}/", "--model", MODEL, "--specs", "pinned", "--dry-run", cwd=workdir)
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and "Traceback" not in said, said
    assert (
        said
        == f"error {dataset}/: no manifest.json; it is a dataset folder; pass one of its published versions: {versions}"
    )
    with pytest.raises(TrainError) as refused:
        training_request(f"{dataset}/latest", MODEL, specs=PINNED)
    assert str(refused.value).endswith(
        f"'latest' is no version; pass one of the published versions beside it: {versions}"
    )
    with pytest.raises(TrainError) as refused:
        training_request(f"{dataset}/v3", MODEL, specs=PINNED)
    assert str(refused.value).endswith(
        f"v3: no manifest.json; this version was not published, or was deleted since; the published versions "
        f"beside it: {versions}"
    )


def test_a_deleted_version_is_said_to_be_deleted_not_never_published(workdir: Path) -> None:
    """``train launch .../v2`` after v2 was deleted (a rollback) said "this version was never published"."""
    publish(workdir, "jumpstart-instruction")
    version = Path(publish(workdir, "jumpstart-instruction"))
    shutil.rmtree(version)
    done = curation("train", "launch", str(version), "--model", MODEL, "--specs", "pinned", "--dry-run", cwd=workdir)
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and "Traceback" not in said, said
    assert said == (
        f"error {version}: no manifest.json; this version was not published, or was deleted since; the published "
        f"versions beside it: {version.parent}/v1"
    )


def test_a_copy_on_s3_must_be_the_version_it_stands_for(workdir: Path, bucket: str) -> None:
    from train.sagemaker import check_copy

    version = Path(publish(workdir, "jumpstart-instruction"))
    s3 = boto3.client("s3")
    for path in version.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"copy/{path.relative_to(version)}")
    check_copy(str(version), f"s3://{bucket}/copy")  # a faithful copy passes
    with pytest.raises(TrainError, match=r"no manifest\.json"):
        check_copy(str(version), f"s3://{bucket}/elsewhere")
    # A bucket name mistyped is no version never published: the error says which bucket is not there.
    with pytest.raises(TrainError, match=rf"--data-uri s3://{bucket}x/copy: there is no bucket '{bucket}x'"):
        check_copy(str(version), f"s3://{bucket}x/copy")
    original = (version / "train" / "part-00000.jsonl").read_bytes()
    same_size = original.replace(b"Dining", b"DINING", 1)  # as long, other bytes: S3's MD5 tells
    assert same_size != original and len(same_size) == len(original)
    s3.put_object(Bucket=bucket, Key="copy/train/part-00000.jsonl", Body=same_size)
    with pytest.raises(TrainError, match=r"is not a copy of .*train/part-00000\.jsonl"):
        check_copy(str(version), f"s3://{bucket}/copy")
    # Under a KMS key S3's ETag is no MD5 of the content: an ETag that differs proves nothing, and only
    # the size is checked (so the same-size change passes here: the limit of a check without download).
    s3.put_object(Bucket=bucket, Key="copy/train/part-00000.jsonl", Body=same_size, ServerSideEncryption="aws:kms")
    check_copy(str(version), f"s3://{bucket}/copy")
    s3.put_object(Bucket=bucket, Key="copy/train/part-00000.jsonl", Body=original)
    s3.put_object(Bucket=bucket, Key="copy/train/.hidden.jsonl", Body=b"{}\n")  # training reads it too
    with pytest.raises(TrainError, match=r"train/\.hidden\.jsonl \(not in the manifest\)"):
        check_copy(str(version), f"s3://{bucket}/copy")


def test_a_copy_uploaded_in_parts_is_checked_by_its_parts_md5s(workdir: Path, bucket: str) -> None:
    from boto3.s3.transfer import TransferConfig

    from train.sagemaker import check_copy

    write_jsonl(workdir / "docs.jsonl", [{"text": f"Manual page {n}: " + "lorem ipsum " * 9000} for n in range(60)])
    spec = {"dataset": "manual", "sources": [{"path": "docs.jsonl"}], "record": {"kind": "document"}}
    version = Path(run(workdir, {**spec, "output": {"validation_fraction": 0.0}}).version_uri)
    shard = version / "train" / "part-00000.jsonl"
    assert shard.stat().st_size > 6 << 20  # over two 5 MiB parts
    s3 = boto3.client("s3")
    in_parts = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
    for path in version.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"copy/{path.relative_to(version)}", Config=in_parts)
    assert s3.head_object(Bucket=bucket, Key="copy/train/part-00000.jsonl")["ETag"].endswith('-2"')
    check_copy(str(version), f"s3://{bucket}/copy")
    original = shard.read_bytes()
    changed = workdir / "changed.jsonl"
    changed.write_bytes(original.replace(b"Manual page 7:", b"Manual page 8:", 1))  # as long, other bytes
    s3.upload_file(str(changed), bucket, "copy/train/part-00000.jsonl", Config=in_parts)
    with pytest.raises(TrainError, match=r"is not a copy of .*train/part-00000\.jsonl"):
        check_copy(str(version), f"s3://{bucket}/copy")

    # The shard moved away between the listing and the question about its parts: S3's answer (404)
    # is a clear error naming the copy, not botocore's traceback.
    def moved_away(params: dict, **_: Any) -> None:
        boto3.session.Session().client("s3").delete_object(Bucket=params["Bucket"], Key=params["Key"])

    events = boto3._get_default_session().events
    events.register("before-parameter-build.s3.HeadObject", moved_away)
    try:
        with pytest.raises(TrainError, match=rf"--data-uri s3://{bucket}/copy: cannot read: .*HeadObject.*Not Found"):
            check_copy(str(version), f"s3://{bucket}/copy")
    finally:
        events.unregister("before-parameter-build.s3.HeadObject", moved_away)


def test_launch_against_the_emulated_endpoint_and_describe_it_back(workdir: Path, bucket: str) -> None:
    version = publish(workdir, "jumpstart-instruction", dest=f"s3://{bucket}/datasets")
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    request = training_request(version, MODEL, role_arn=ROLE, specs=PINNED, now=now)
    assert re.fullmatch(r"pairs-v1-llama-3-2-1b-20261125-120000-[0-9a-f]{6}", request["TrainingJobName"])
    assert channels(request)["training"]["S3Uri"] == f"s3://{bucket}/datasets/pairs/v1/train/"
    name = launch(request)
    described = describe(name)
    assert described["TrainingJobName"] == name
    assert described["AlgorithmSpecification"]["TrainingImage"] == request["AlgorithmSpecification"]["TrainingImage"]
    assert described["HyperParameters"] == request["HyperParameters"]
    # What the SDK's script mode hands the training toolkit besides the script, JSON-encoded as it does.
    assert {
        key: json.loads(value) for key, value in described["HyperParameters"].items() if key.startswith("sagemaker_")
    } == {
        "sagemaker_program": "transfer_learning.py",
        "sagemaker_submit_directory": "/opt/ml/input/data/code/sourcedir.tar.gz",
        "sagemaker_container_log_level": 20,
        "sagemaker_job_name": name,
        "sagemaker_region": "us-east-1",
    }
    assert described["RoleArn"] == ROLE
    assert [c["ChannelName"] for c in described["InputDataConfig"]] == ["training", "validation", "model", "code"]


def test_two_launches_in_the_same_second_are_two_jobs(workdir: Path, bucket: str) -> None:
    """SageMaker refuses a job name already used (moto keeps the last job of a name instead): two
    launches of one version and model within a second must be two jobs, both described back."""
    version = publish(workdir, "jumpstart-instruction", dest=f"s3://{bucket}/datasets")
    now = datetime.now(UTC)
    names = [launch(training_request(version, MODEL, role_arn=ROLE, specs=PINNED, now=now)) for _ in range(2)]
    assert names[0] != names[1]
    created = boto3.client("sagemaker").list_training_jobs(NameContains=f"pairs-v1-llama-3-2-1b-{now:%Y%m%d-%H%M%S}")
    assert sorted(job["TrainingJobName"] for job in created["TrainingJobSummaries"]) == sorted(names)
    assert all(describe(name)["TrainingJobStatus"] for name in names)


@pytest.fixture
def sagemaker_answers(request: pytest.FixtureRequest) -> Any:
    """``answer(operation, handler)``: the SDK's SageMaker client (the one ``launch`` and ``describe``
    use) passes each ``operation`` call to ``handler(params)``, which returns the service's error code
    or None to send it on (a before-call hook: the call is not sent when it answers)."""
    from botocore.awsrequest import AWSResponse
    from sagemaker.core.resources import Base

    client = Base.get_sagemaker_client(region_name="us-east-1", service_name="sagemaker")
    hooks: list[str] = []

    def answer(operation: str, handler: Any) -> None:
        def hook(params: dict[str, Any], **_: Any) -> Any:
            code = handler(json.loads(params["body"]))
            if code is None:
                return None
            error = {"Error": {"Code": code, "Message": "injected"}, "ResponseMetadata": {"HTTPStatusCode": 400}}
            return AWSResponse("http://sagemaker", 400, {}, None), error

        event = f"before-call.sagemaker.{operation}"
        client.meta.events.unregister(event, unique_id=f"answers-{operation}")  # the one it replaces
        client.meta.events.register(event, hook, unique_id=f"answers-{operation}")
        hooks.append(operation)

    yield answer
    for operation in hooks:
        client.meta.events.unregister(f"before-call.sagemaker.{operation}", unique_id=f"answers-{operation}")


def test_a_job_created_is_launched_even_when_it_cannot_be_described(
    workdir: Path, bucket: str, sagemaker_answers: Any
) -> None:
    """A role allowed to create jobs but not to describe them (or a throttled describe): the job was
    created, so the launch says so, once. It said 'SageMaker refused the training job' and exited 1
    (the SDK's create describes the job), and a rerun, as the message invites, made a second job."""
    version = publish(workdir, "jumpstart-instruction", dest=f"s3://{bucket}/datasets", dataset="undescribed")
    sagemaker_answers("DescribeTrainingJob", lambda params: "AccessDeniedException")
    from typer.testing import CliRunner

    from train.cli import app

    done = CliRunner().invoke(app, ["launch", version, "--model", MODEL, "--specs", "pinned", "--role", ROLE])
    assert done.exit_code == 0, done.output
    assert "refused" not in done.output
    name = done.stdout.split("launched ")[1].split()[0]
    jobs = boto3.client("sagemaker").list_training_jobs(NameContains="undescribed-v1-")["TrainingJobSummaries"]
    assert [job["TrainingJobName"] for job in jobs] == [name]


def test_a_job_botocore_sent_twice_is_launched_once(workdir: Path, bucket: str, sagemaker_answers: Any) -> None:
    """botocore sends a request again when its answer is lost (a read timeout): the first attempt made
    the job, and SageMaker answers the second with ResourceInUse for the name, ours alone (its random
    part). The job was launched: the name is returned, not an error."""
    version = publish(workdir, "jumpstart-instruction", dest=f"s3://{bucket}/datasets", dataset="sent-twice")
    direct = boto3.client("sagemaker")

    def created_then_answer_lost(params: dict[str, Any]) -> str:
        direct.create_training_job(**params)  # the attempt whose answer never came back
        return "ResourceInUse"

    sagemaker_answers("CreateTrainingJob", created_then_answer_lost)
    request = training_request(version, MODEL, role_arn=ROLE, specs=PINNED)
    assert launch(request) == request["TrainingJobName"]
    jobs = direct.list_training_jobs(NameContains="sent-twice-v1-")["TrainingJobSummaries"]
    assert [job["TrainingJobName"] for job in jobs] == [request["TrainingJobName"]]
    # Any other refusal is one.
    sagemaker_answers("CreateTrainingJob", lambda params: "ResourceLimitExceeded")
    with pytest.raises(ClientError, match="ResourceLimitExceeded"):
        launch(training_request(version, MODEL, role_arn=ROLE, specs=PINNED))


def test_job_names_stay_readable_and_within_sagemakers_pattern(workdir: Path) -> None:
    from curation.published import read_manifest
    from train.sagemaker import job_name

    write_jsonl(workdir / "docs.jsonl", [{"text": f"document {i}"} for i in range(5)])
    long = "customer_support__tickets-" + "x" * 60  # a name the recipe allows: "_" and "__" are not SageMaker's
    spec = {"dataset": long, "sources": [{"path": "docs.jsonl"}], "record": {"kind": "document"}}
    version = run(workdir, {**spec, "output": {"format": "text", "validation_fraction": 0.0}}).version_uri
    name = training_request(version, MODEL, specs=PINNED)["TrainingJobName"]
    assert len(name) <= 63 and re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", name)
    # The dataset's name is cut, not the version and model; one dash: Bedrock's model name refuses "--".
    assert re.fullmatch(r"customer-support-tickets-?x*-v1-llama-3-2-1b-\d{8}-\d{6}-[0-9a-f]{6}", name)
    vision = job_name(read_manifest(version), "meta-vlm-llama-3-2-11b-vision-instruct")
    assert len(vision) <= 63 and re.fullmatch(
        r"customer-support-v1-llama-3-2-11b-vision-\d{8}-\d{6}-[0-9a-f]{6}", vision
    )


def test_s3_folders_written_with_a_trailing_slash_launch(workdir: Path, bucket: str) -> None:
    """``aws s3 ls``/``cp`` users write folders with a trailing slash: the version on S3 and a copy
    named by --data-uri are read as the same folders, not an empty path part and a traceback."""
    on_s3 = publish(workdir, "jumpstart-instruction", dest=f"s3://{bucket}/datasets")
    done = curation("train", "launch", f"{on_s3}/", "--model", MODEL, "--specs", "pinned", "--role", ROLE, cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert "launched pairs-v1-" in done.stdout
    local = Path(publish(workdir / "local", "jumpstart-instruction"))
    s3 = boto3.client("s3")
    for path in local.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"copy/{path.relative_to(local)}")
    done = curation(
        "train", "launch", str(local), "--model", MODEL, "--specs", "pinned", "--role", ROLE,
        "--data-uri", f"s3://{bucket}/copy/", cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "launched pairs-v1-" in done.stdout


def test_launch_refuses_a_request_with_placeholders(workdir: Path) -> None:
    request = training_request(publish(workdir, "jumpstart-instruction"), MODEL, specs=PINNED)
    with pytest.raises(TrainError, match="execution role"):
        launch(request)


def test_launch_and_wait_until_completed_from_the_command_line(workdir: Path, bucket: str) -> None:
    version = publish(workdir, "jumpstart-instruction", dest=f"s3://{bucket}/datasets")
    # SageMaker would find the output bucket missing only after the training: refused before the job starts.
    args = ("train", "launch", version, "--model", MODEL, "--specs", "pinned", "--role", ROLE)
    done = curation(*args, "--output", f"s3://{bucket}x/models", cwd=workdir)
    assert done.returncode == 2 and f"--output s3://{bucket}x/models: there is no bucket '{bucket}x'" in done.stderr
    assert "launched" not in done.stdout
    # Asked with no pause between, SageMaker throttles the status calls; a dry run has no job to follow.
    for wrong, said in (
        (("--wait", "--poll-seconds", "0"), "Invalid value for '--poll-seconds'"),
        (("--wait", "--dry-run"), "--dry-run launches no job for --wait to follow"),
        (("--timeout", "60"), "--timeout is how long --wait follows the job"),  # without --wait: no waiting
        # Typed as its default is, it is still typed: the user meant to wait, and would not.
        (("--poll-seconds", "30"), "--poll-seconds is how often --wait asks"),
        (("--dry-run", "--poll-seconds", "5"), "--poll-seconds is how often --wait asks"),
    ):
        done = curation(*args, *wrong, cwd=workdir)
        assert done.returncode == 2 and said in done.stderr and "launched" not in done.stdout, done.stderr
    assert curation("train", "wait", "job-1", "--poll-seconds", "0.5", cwd=workdir).returncode == 2
    done = curation(*args, "--wait", "--poll-seconds", "1", cwd=workdir)  # moto's job completes at once
    assert done.returncode == 0, done.stderr
    assert "launched pairs-v1-llama-3-2-1b-" in done.stdout and "completed" in done.stdout
    name = done.stdout.split("launched ")[1].split()[0]
    assert describe(name)["TrainingJobStatus"] == "Completed"
    # Uncompressed output was asked for: the model is the folder Bedrock imports, not a model.tar.gz.
    assert f"model at s3://{bucket}/datasets/pairs/training-output/{name}/output/model/\n" in done.stdout


def failed_job(name: str) -> dict[str, Any]:
    started = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    return {
        "TrainingJobName": name,
        "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{name}",
        "TrainingJobStatus": "Failed",
        "SecondaryStatus": "Failed",
        "FailureReason": "AlgorithmError: CUDA out of memory",
        "AlgorithmSpecification": {"TrainingInputMode": "File", "TrainingImage": "img"},
        "ResourceConfig": {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 100},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "CreationTime": started,
        "ModelArtifacts": {"S3ModelArtifacts": ""},
    }


def test_wait_reports_a_failed_job_and_exits_non_zero(aws_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    """moto's training jobs complete at once, so the failed answer is stubbed; Stubber checks it
    against botocore's DescribeTrainingJob output shape, so it is an answer SageMaker could give."""
    from train.cli import EXIT_FAILED, follow

    client = boto3.client("sagemaker")
    stub = Stubber(client)
    in_progress = {**failed_job("job-1"), "TrainingJobStatus": "InProgress", "SecondaryStatus": "Training"}
    in_progress.pop("FailureReason")
    stub.add_response("describe_training_job", in_progress, {"TrainingJobName": "job-1"})
    stub.add_response("describe_training_job", failed_job("job-1"), {"TrainingJobName": "job-1"})
    seen: list[str] = []
    with stub:
        code = follow("job-1", 0, None, describe_job=lambda name: client.describe_training_job(TrainingJobName=name))
        stub.assert_no_pending_responses()
    assert code == EXIT_FAILED
    assert "CUDA out of memory" in capsys.readouterr().err
    with Stubber(client) as again:
        again.add_response("describe_training_job", failed_job("job-2"), {"TrainingJobName": "job-2"})
        info = wait(
            "job-2", lambda i: seen.append(i["TrainingJobStatus"]), poll_seconds=0, describe_job=describe_via(client)
        )
    assert info["TrainingJobStatus"] == "Failed" and seen == ["Failed"]


def test_waiting_that_times_out_names_the_job_once_and_says_it_goes_on(
    aws_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from train.cli import EXIT_FAILED, _followed

    client = boto3.client("sagemaker")
    in_progress = {**failed_job("job-1"), "TrainingJobStatus": "InProgress", "SecondaryStatus": "Training"}
    in_progress.pop("FailureReason")
    with Stubber(client) as stub:
        stub.add_response("describe_training_job", in_progress, {"TrainingJobName": "job-1"})
        stopped = _followed("job-1", 0, 0, describe_job=describe_via(client))
    # Told apart from a failed job: a script waits again rather than giving the job up.
    assert stopped.exit_code == 3 != EXIT_FAILED  # README's exit-code table
    err = capsys.readouterr().err
    assert "error job-1: still InProgress after 0s; it goes on: `curation train wait job-1`" in err, err


def test_a_job_that_cannot_be_read_is_said_without_a_status_it_never_had(
    aws_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from train.cli import EXIT_FAILED, _followed

    client = boto3.client("sagemaker")
    with Stubber(client) as stub:
        stub.add_client_error("describe_training_job", "ValidationException", "Requested resource not found.")
        stopped = _followed("nosuchjob", 0, None, describe_job=describe_via(client))
    assert stopped.exit_code == EXIT_FAILED
    said = " ".join(capsys.readouterr().err.split())
    assert said == (
        "error nosuchjob: An error occurred (ValidationException) when calling the DescribeTrainingJob "
        "operation: Requested resource not found."
    )


def describe_via(client: Any) -> Any:
    return lambda name: client.describe_training_job(TrainingJobName=name)


def test_bedrock_import_request_from_a_completed_job(workdir: Path, bucket: str) -> None:
    """moto does not implement Bedrock's CreateModelImportJob, so the request is validated against
    botocore's Bedrock model and sent to a Stubber'd Bedrock client, which checks it again."""
    version = publish(workdir, "jumpstart-instruction", dest=f"s3://{bucket}/datasets")
    name = launch(training_request(version, MODEL, role_arn=ROLE, specs=PINNED))
    job = describe(name)
    request = import_request(job, role_arn="arn:aws:iam::123456789012:role/bedrock-import")
    # The uncompressed model folder the training request asked for: what Custom Model Import reads.
    assert request["modelDataSource"]["s3DataSource"]["s3Uri"] == (
        f"s3://{bucket}/datasets/pairs/training-output/{name}/output/model/"
    )
    assert request["importedModelName"] == name and request["jobName"] == f"import-{name}"
    # The dataset version it was trained on goes on the imported model: DescribeTrainingJob holds no
    # tags (botocore's model has none), so they are asked of ListTags.
    assert "Tags" not in job
    request = request_for_job(name, role_arn="arn:aws:iam::123456789012:role/bedrock-import")
    imported = {tag["key"]: tag["value"] for tag in request["importedModelTags"]}
    assert imported["curation-dataset"] == "pairs" and imported["curation-version"] == "1"

    client = boto3.client("bedrock")
    arn = f"arn:aws:bedrock:us-east-1:123456789012:model-import-job/{name[:12]}"
    with Stubber(client) as stub:
        stub.add_response("create_model_import_job", {"jobArn": arn}, request)
        assert start_import(request, client) == arn

    # A job launched elsewhere with compressed output (SageMaker's default) left a model.tar.gz, which
    # Custom Model Import cannot read: refused before Bedrock is asked.
    gzip = {**request_for_launch(version), "TrainingJobName": f"{name[:50]}-gzip"}
    gzip["OutputDataConfig"] = {**gzip["OutputDataConfig"], "CompressionType": "GZIP"}
    with pytest.raises(TrainError, match=r"wrote its model as model\.tar\.gz; Bedrock imports a folder"):
        import_request(describe(launch(gzip)), role_arn="arn:aws:iam::123456789012:role/bedrock-import")
    with pytest.raises(TrainError, match="only a completed job"):
        import_request({**job, "TrainingJobStatus": "InProgress"}, role_arn="arn:aws:iam::123456789012:role/x")
    # Strings are checked against their shapes' patterns, which botocore's validator leaves to the service.
    # The name the user gave is named by the option they typed; and its length is checked, which
    # botocore leaves to the service as it does patterns.
    with pytest.raises(TrainError, match=r"--model-name: 'bad name!!' does not match"):
        import_request(job, model_name="bad name!!", role_arn="arn:aws:iam::123456789012:role/bedrock-import")
    with pytest.raises(TrainError, match=r"--role: 'bedrock-import' does not match"):
        import_request(job, role_arn="bedrock-import")
    # A long value is shown cut, with its length: the message stays one readable line.
    with pytest.raises(TrainError, match=r"--model-name: 'm{37}\.\.\.' is 64 characters long, not 1 to 63$"):
        import_request(job, model_name="m" * 64, role_arn="arn:aws:iam::123456789012:role/bedrock-import")
    with pytest.raises(TrainError, match=r"Tags\[0\]\.Value: 'x{37}\.\.\.' is 257 characters long, not 0 to 256$"):
        validate("CreateTrainingJob", {**request_for_launch(version), "Tags": [{"Key": "k", "Value": "x" * 257}]})
    done = curation("train", "import-to-bedrock", name, "--dry-run", cwd=workdir)
    assert done.returncode == 2 and "BEDROCK_IMPORT_ROLE_ARN" in done.stderr


def test_imports_of_two_jobs_launched_in_one_second_are_two_import_jobs(workdir: Path, bucket: str) -> None:
    """Job names of a long dataset name fill SageMaker's 63 characters; Bedrock's import job name
    (also 63 at most, and unique) must keep the part that tells the two jobs apart."""
    version = publish(
        workdir, "jumpstart-instruction", dest=f"s3://{bucket}/datasets", dataset="card-transactions-" * 3
    )
    now = datetime.now(UTC)
    names = [launch(training_request(version, MODEL, role_arn=ROLE, specs=PINNED, now=now)) for _ in range(2)]
    assert all(len(name) == 63 for name in names)
    role = "arn:aws:iam::123456789012:role/bedrock-import"
    jobs = [import_request(describe(name), role_arn=role)["jobName"] for name in names]
    assert jobs[0] != jobs[1] and all(job.startswith("import-card-transactions-") for job in jobs)
    assert [job[-6:] for job in jobs] == [name[-6:] for name in names]


def request_for_launch(version: str) -> dict[str, Any]:
    return training_request(version, MODEL, role_arn=ROLE, specs=PINNED)


def test_wait_shows_the_jobs_cloudwatch_log_lines(
    workdir: Path, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from train.cli import EXIT_OK, follow

    name = job_with_log_lines(workdir, bucket, range(3), line="epoch=0 step={} train_epoch_loss=1.{}")
    assert follow(name, 0, None) == EXIT_OK
    err = capsys.readouterr().err
    assert all(f"step={i} train_epoch_loss=1.{i}" in err for i in range(3))


def job_with_log_lines(workdir: Path, bucket: str, *batches: range, line: str = "line {}") -> str:
    """A launched job (moto completes it at once) whose CloudWatch stream holds ``line`` for each N of
    ``batches`` (``line N`` by default)."""
    version = publish(workdir, "jumpstart-instruction", dest=f"s3://{bucket}/datasets")
    name = launch(training_request(version, MODEL, role_arn=ROLE, specs=PINNED))
    logs = boto3.client("logs")
    group = "/aws/sagemaker/TrainingJobs"
    if group not in [g["logGroupName"] for g in logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]]:
        logs.create_log_group(logGroupName=group)
    stream = f"{name}/algo-1-1764072000"
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    now_ms = int(datetime.now(UTC).timestamp() * 1000)  # CloudWatch drops events older than 14 days
    for batch in batches:  # PutLogEvents takes at most 10,000 events
        events = [{"timestamp": now_ms + i, "message": line.format(i, i)} for i in batch]
        logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events)
    return name


@pytest.fixture
def log_reads_fail(request: pytest.FixtureRequest) -> Any:
    """``fail(code, times)``: the next ``times`` GetLogEvents calls answer with error ``code``, as the
    service does once botocore's retries are spent (a before-call hook on the clients boto3 makes)."""
    session = boto3._get_default_session()
    calls = {"made": 0, "failing": 0, "code": ""}

    def answer(**_: Any) -> Any:
        calls["made"] += 1
        if calls["failing"] <= 0:
            return None  # sent to the server
        calls["failing"] -= 1
        from botocore.awsrequest import AWSResponse

        error = {"Error": {"Code": calls["code"], "Message": "injected"}, "ResponseMetadata": {"HTTPStatusCode": 400}}
        return AWSResponse("http://logs", 400, {}, None), error

    def fail(code: str, times: int) -> dict[str, Any]:
        calls.update(code=code, failing=times)
        return calls

    session.events.register("before-call.cloudwatch-logs.GetLogEvents", answer, unique_id="log-reads-fail")
    request.addfinalizer(
        lambda: session.events.unregister("before-call.cloudwatch-logs.GetLogEvents", unique_id="log-reads-fail")
    )
    return fail


def test_following_a_job_prints_every_page_of_its_log_stream(
    workdir: Path, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """GetLogEvents answers at most 10,000 events a call: the stream is read page by page to its end
    (it printed the first page and never the rest, where a failed job's traceback is)."""
    from train.cli import EXIT_OK, follow

    name = job_with_log_lines(workdir, bucket, range(6000), range(6000, 12000))
    assert follow(name, 0, None) == EXIT_OK
    err = capsys.readouterr().err
    assert "line 0\n" in err and "line 11999\n" in err
    assert err.count("\nline ") + err.startswith("line ") == 12000  # each once


def test_lines_not_read_by_the_last_poll_are_printed_when_the_job_ends(
    workdir: Path, bucket: str, capsys: pytest.CaptureFixture[str], log_reads_fail: Any
) -> None:
    """The job's only poll (moto's job completes at once) cannot read its logs: they are read once
    more after the job ended, so its last lines are printed; a throttle does not end the following."""
    from train.cli import EXIT_OK, follow

    name = job_with_log_lines(workdir, bucket, range(3))
    calls = log_reads_fail("ThrottlingException", 1)
    assert follow(name, 0, None) == EXIT_OK
    assert calls["made"] >= 2
    err = capsys.readouterr().err
    assert all(f"line {i}\n" in err for i in range(3))


def test_a_throttled_log_read_is_asked_again_at_the_next_poll(
    workdir: Path,
    bucket: str,
    capsys: pytest.CaptureFixture[str],
    log_reads_fail: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A ThrottlingException (after botocore's retries) skips one poll; the next reads the lines. It
    ended the logs for the whole wait, as if they could not be reached."""
    from train.logs import JobLogs

    name = job_with_log_lines(workdir, bucket, range(3))
    logs = JobLogs(name)
    log_reads_fail("ThrottlingException", 1)
    with caplog.at_level("INFO", logger="curation.train"):
        assert logs.new_lines() == []
        assert logs.new_lines() == ["line 0", "line 1", "line 2"]
        assert logs.new_lines() == []  # read to the end: nothing twice
    assert "following the status only" not in caplog.text


def test_logs_the_caller_may_not_read_end_the_following_with_a_note(
    workdir: Path, bucket: str, log_reads_fail: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from train.logs import JobLogs

    name = job_with_log_lines(workdir, bucket, range(3))
    logs = JobLogs(name)
    calls = log_reads_fail("AccessDeniedException", 5)
    with caplog.at_level("INFO", logger="curation.train"):
        assert logs.new_lines() == [] and logs.new_lines() == []
    assert calls["made"] == 1 and not logs.reachable  # not asked again
    assert "training logs not reachable (AccessDeniedException); following the status only" in caplog.text


def test_text_versions_are_one_file_per_split_and_several_shards_are_refused(workdir: Path) -> None:
    import hashlib

    from curation.published import read_manifest
    from schemas.manifest import Shard

    write_jsonl(workdir / "docs.jsonl", [{"text": f"document {i} " + "words " * 60} for i in range(40)])
    recipe = {
        "dataset": "docs",
        "sources": [{"path": str(workdir / "docs.jsonl")}],
        "record": {"kind": "document"},
        "output": {"dest": str(workdir / "out"), "shard_max_bytes": 4096, "validation_fraction": 0.0},
    }
    whole = run_fresh(workdir, recipe)  # 40 documents of ~400 bytes, above shard_max_bytes: still one file
    request = training_request(whole, MODEL, specs=PINNED)
    assert request["HyperParameters"]["instruction_tuned"] == "False"
    assert set(channels(request)) == {"training", "model", "code"}  # no validation records, no validation channel
    # JumpStart then evaluates on a fifth of the training records: the command line says so.
    done = curation("train", "launch", whole, "--model", MODEL, "--specs", "pinned", "--dry-run", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert "no validation records, so JumpStart holds out validation_split_ratio=0.2 of the training" in done.stderr
    # A version an earlier release published in bounded shards: JumpStart would read one of them.
    version, manifest = Path(whole), read_manifest(whole)
    (shard,) = manifest.splits["train"].shards
    lines = (version / shard.path).read_bytes().splitlines(keepends=True)
    halves = []
    for number, part in enumerate((lines[:20], lines[20:])):
        body = b"".join(part)
        path = f"train/part-{number:05d}.jsonl"
        (version / path).write_bytes(body)
        halves.append(Shard(path=path, records=len(part), bytes=len(body), sha256=hashlib.sha256(body).hexdigest()))
    manifest.splits["train"].shards = halves
    (version / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    with pytest.raises(TrainError, match=r"one file per channel, but train has several shards") as refused:
        training_request(whole, MODEL, specs=PINNED)
    # output.shard_max_bytes does not apply to text any more: the way out is a new version.
    assert "shard_max_bytes" not in str(refused.value) and "--full-refresh" in str(refused.value)


def no_aws_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nowhere for boto3 to find credentials: no variables, files or instance role."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to find here


def test_a_version_s3_will_not_give_is_one_line_naming_it_and_what_to_check(
    workdir: Path, bucket: str, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without credentials pyarrow's requests go unsigned and S3 answers 403 (as moto does): that was a
    traceback and exit 1, a failed job's code, for a launch that never reached SageMaker."""
    version = publish(workdir, "jumpstart-instruction", dest=f"s3://{bucket}/datasets")
    local = Path(publish(workdir / "local", "jumpstart-instruction"))
    copy = f"s3://{bucket}/copy/pairs/v1"
    for path in local.rglob("*"):
        if path.is_file():
            boto3.client("s3").upload_file(str(path), bucket, f"copy/pairs/v1/{path.relative_to(local)}")
    no_aws_credentials(workdir, monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_env)
    denied = "cannot read: S3 said ACCESS_DENIED during HeadObject operation"
    for dry_run in (["--dry-run"], []):
        done = curation("train", "launch", version, "--model", MODEL, "--specs", "pinned", *dry_run, cwd=workdir)
        said = " ".join(done.stderr.split())
        assert done.returncode == 2 and "Traceback" not in said, said
        assert said.startswith(f"error {version}/manifest.json: {denied}") and "AWS credentials? access to" in said
    # A copy named by --data-uri is read only by a real launch.
    done = curation(
        "train", "launch", str(local), "--model", MODEL, "--specs", "pinned", "--data-uri", copy, cwd=workdir
    )
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and "Traceback" not in said, said
    assert said.startswith(f"error --data-uri {copy}/manifest.json: {denied}")
    # A manifest anyone may read, its data not: the files' checksums are what S3 refuses.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    manifest_key = f"{version.removeprefix(f's3://{bucket}/')}/manifest.json"
    boto3.client("s3").put_object_acl(Bucket=bucket, Key=manifest_key, ACL="public-read")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    done = curation("train", "launch", version, "--model", MODEL, "--specs", "pinned", "--dry-run", cwd=workdir)
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and "Traceback" not in said, said
    assert said.startswith(f"error {version}/train/part-00000.jsonl: {denied}"), said


def test_a_version_on_an_s3_endpoint_that_cannot_be_reached_asks_whether_it_is_reachable(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No answer came: it was told "AWS credentials? access to the bucket?", which S3 had not said."""
    with socket.socket() as free:  # a port nothing listens on once closed
        free.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{free.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    version = "s3://nowhere/datasets/pairs/v1"
    done = curation("train", "launch", version, "--model", MODEL, "--specs", "pinned", "--dry-run", cwd=workdir)
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and said.startswith(f"error {version}/manifest.json: cannot read: S3 said "), said
    assert said.endswith(f"is the S3 endpoint {endpoint} reachable?") and "credentials" not in said, said


@pytest.mark.parametrize(
    ("said", "check"),
    [
        ("AWS Error INVALID_ACCESS_KEY_ID during HeadObject operation: The key id does not exist", "credentials"),
        ("AWS Error SIGNATURE_DOES_NOT_MATCH during HeadObject operation: No response body.", "credentials"),
        ("AWS Error UNKNOWN (HTTP status 403) during HeadObject operation: No response body.", "credentials"),
        ("AWS Error NETWORK_CONNECTION during HeadObject operation: curlCode: 7, Could not connect", "reachable"),
    ],
)
def test_what_a_refused_s3_read_asks_follows_whether_s3_answered(
    said: str, check: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any answer of S3's refusing a read is asked about credentials and access; only no answer about the endpoint
    (a wrong key was asked whether S3 was reachable, as only ACCESS_DENIED and 403 were taken for a refusal)."""
    from curation.published import _unreadable

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    message = str(_unreadable("s3://b/d/v1/manifest.json", OSError(f"When reading key 'd/v1': {said}")))
    asked = "AWS credentials? access to the bucket?" if check == "credentials" else "is S3 reachable from here?"
    assert message.endswith(asked), message


def test_the_auto_lookup_falls_back_to_the_pin_and_names_an_unknown_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from train.jumpstart import AutoSpecs, SpecError

    no_aws_credentials(tmp_path, monkeypatch)
    specs = AutoSpecs()
    assert specs(MODEL, "us-east-1").model_id == MODEL  # no credentials: the pinned spec
    with pytest.raises(SpecError, match=r"'nope-model' is not among the pinned specs .*check the model id"):
        specs("nope-model", "us-east-1")


def test_a_real_launch_does_not_fall_back_to_the_unverified_pin(
    workdir: Path, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The pinned specs were written offline, not fetched: a launch on them, after the live lookup failed,
    created a job SageMaker might start (billed) and then fail on a script or weights not where the pin
    says. Against the emulated endpoint the lookup fails (JumpStart's spec bucket is not there), as it
    does without network: the launch refuses, naming the error and how to choose the pin knowingly."""
    from typer.testing import CliRunner

    from train.cli import app

    version = publish(workdir, "jumpstart-instruction", dest=f"s3://{bucket}/datasets", dataset="unverified")
    launch_it = ["launch", version, "--model", MODEL, "--role", ROLE]

    def jobs() -> list[str]:
        found = boto3.client("sagemaker").list_training_jobs(NameContains="unverified-v1-")["TrainingJobSummaries"]
        return [job["TrainingJobName"] for job in found]

    refused = CliRunner().invoke(app, launch_it)
    said = " ".join(refused.stderr.split())
    assert refused.exit_code == 2, said
    # NoSuchBucket, or NoCredentialsError where an earlier test left the SDK's JumpStart session without credentials.
    assert re.search(rf"JumpStart live lookup of '{MODEL}' failed \((NoSuchBucket|NoCredentialsError): ", said), said
    assert "--specs pinned (or CURATION_JUMPSTART_SPECS=pinned)" in said and "Traceback" not in said
    assert jobs() == []
    # A dry run still shows the request from the pin, saying so; the pin chosen knowingly still launches.
    with caplog.at_level("WARNING", logger="curation.train"):
        assert CliRunner().invoke(app, [*launch_it, "--dry-run"]).exit_code == 0
    assert f"using the pinned spec for {MODEL}" in caplog.text
    chosen = CliRunner().invoke(app, [*launch_it, "--specs", "pinned"])
    assert chosen.exit_code == 0, chosen.output
    assert jobs() == [chosen.stdout.split("launched ")[1].split()[0]]


def test_a_count_whose_default_is_minus_one_takes_minus_one_or_a_positive_count(workdir: Path) -> None:
    """JumpStart takes "a positive integer or -1" for max_train_samples, max_val_samples and max_input_length,
    though their ranges' min is -1: 0 passed, and the job trained on no samples or no tokens."""
    version = publish(workdir, "jumpstart-instruction")
    for key in ("max_train_samples", "max_val_samples", "max_input_length"):
        for value in ("0", "-0", "-2"):
            with pytest.raises(
                SpecError, match=rf"^hyperparameter {key}={value}: must be -1 or above 0 \(default -1\)$"
            ):
                training_request(version, MODEL, hyperparameters={key: value}, specs=PINNED)
        for value in ("-1", "512"):
            sent = training_request(version, MODEL, hyperparameters={key: value}, specs=PINNED)["HyperParameters"]
            assert sent[key] == value


def test_the_default_output_stays_in_the_bucket_of_a_copy_at_its_root(workdir: Path) -> None:
    version = publish(workdir, "jumpstart-instruction")
    for data_uri, output in (
        ("s3://mine", "s3://mine/training-output/"),
        ("s3://mine/", "s3://mine/training-output/"),
        ("s3://mine/pairs/v1", "s3://mine/pairs/training-output/"),
    ):
        request = training_request(version, MODEL, role_arn=ROLE, data_uri=data_uri, specs=PINNED)
        assert request["OutputDataConfig"]["S3OutputPath"] == output  # not a bucket named training-output


def test_a_live_lookup_that_fails_is_an_error_naming_the_model_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_aws_credentials(tmp_path, monkeypatch)
    done = curation("train", "spec", MODEL, "--specs", "live", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"JumpStart live lookup of '{MODEL}' failed (NoCredentialsError" in done.stderr
    assert "--specs pinned" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("model", ["[/x]", "[bold]llama"])
def test_a_model_id_with_brackets_is_named_as_typed_in_one_line(tmp_path: Path, model: str) -> None:
    # Printed as rich markup, "[/x]" was a MarkupError traceback and "[bold]llama" read 'llama'.
    done = curation("train", "spec", model, "--specs", "pinned", cwd=tmp_path)
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and "Traceback" not in said, said
    assert f"error model '{model}' is not in the pinned JumpStart specs" in said


def test_a_specs_source_set_in_the_environment_is_named_when_it_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CURATION_JUMPSTART_SPECS", "pinnned")  # the user never typed --specs: name the variable
    done = curation("train", "spec", MODEL, cwd=tmp_path)
    assert done.returncode == 2 and "CURATION_JUMPSTART_SPECS=pinnned: JumpStart specs come from one of" in done.stderr


def test_a_live_lookup_checks_values_against_the_live_specs_ranges(workdir: Path) -> None:
    """The SDK's JumpStart spec gives each hyperparameter's range (JumpStartHyperparameter's min, max,
    options; an instance type's variant its own): a live lookup checks against those, and against the
    pin's only for a hyperparameter the live spec bounds nowhere. Built from the SDK's classes: no network."""
    from dataclasses import replace

    from sagemaker.core.jumpstart.types import JumpStartModelSpecs

    from train.jumpstart import live_ranges

    def hp(name: str, kind: str, default: Any, **bounds: Any) -> dict[str, Any]:
        return {"name": name, "type": kind, "default": default, "scope": "algorithm", **bounds}

    batch = hp("per_device_train_batch_size", "int", 1, min=1, max=8)
    live = JumpStartModelSpecs({
        "model_id": MODEL, "version": "9.9.9", "min_sdk_version": "2.0.0", "training_supported": True,
        "incremental_training_supported": False, "hosting_ecr_specs": None,
        "training_artifact_key": "model/", "training_script_key": "script.tar.gz",
        "hyperparameters": [
            hp("epoch", "int", 1, min=1, max=10),  # the pin allows up to 1000
            hp("chat_template", "text", "Llama3.1", options=["Llama3.1", "None"]),
            hp("target_modules", "text", "q_proj,v_proj", min=1, max=20),  # a text's length, not a number's
            hp("seed", "int", 10),  # no bounds here: the pin's (1..1000) still hold
        ],
        "training_instance_type_variants": {"variants": {"ml.g5.2xlarge": {"properties": {"hyperparameters": [batch]}}}},
    })  # fmt: skip
    ranges = live_ranges(live, "ml.g5.2xlarge", PINNED.models[MODEL]["hyperparameter_ranges"])

    def resolver(model_id: str, region: str, instance_type: str | None = None) -> Any:
        return replace(PINNED(model_id, region, instance_type), hyperparameter_ranges=ranges, origin="sdk")

    version = publish(workdir, "jumpstart-instruction")
    for values, message in (
        ({"epoch": "11"}, "epoch=11: must be at most 10"),
        ({"per_device_train_batch_size": "9"}, "per_device_train_batch_size=9: must be at most 8"),
        ({"chat_template": "Mistral"}, "chat_template=Mistral: takes one of Llama3.1, None"),
        ({"seed": "0"}, "seed=0: must be at least 1"),
        # A text's min and max bound its length (as the SDK's own validator reads them), not its value.
        (
            {"target_modules": "q_proj,k_proj,v_proj,o_proj"},
            "target_modules=q_proj,k_proj,v_proj,o_proj: must be at most 20 characters long",
        ),
        ({"target_modules": ""}, "target_modules=: must be at least 1 character long"),
    ):
        with pytest.raises(SpecError, match=message):
            training_request(version, MODEL, hyperparameters=values, specs=resolver)
    fits = {"epoch": "10", "chat_template": "None", "target_modules": "q_proj,k_proj,v_proj"}
    assert (
        training_request(version, MODEL, hyperparameters=fits, specs=resolver)["HyperParameters"].items()
        >= fits.items()
    )


def test_the_live_lookup_takes_the_models_own_spec_read_offline_by_the_sdk(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK reads JumpStart's manifest and specs from local folders when told to (its own override,
    no network): a model the pin lacks gets its default and supported instance types, volume and
    hyperparameter ranges from its spec (it failed: no instance type to find its image with)."""
    from train.jumpstart import SdkSpecs

    model_id = "acme-textgeneration-tiny"
    gpu = "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-training:2.0.0-gpu-py310"
    spec = {
        "model_id": model_id, "version": "9.9.9", "min_sdk_version": "2.0.0",
        "training_supported": True, "incremental_training_supported": False, "hosting_ecr_specs": None,
        "training_artifact_key": "acme-training/tiny/", "training_script_key": "acme/transfer_learning/sourcedir.tar.gz",
        "default_training_instance_type": "ml.g5.12xlarge",
        "supported_training_instance_types": ["ml.g5.12xlarge", "ml.p4d.24xlarge"],
        "training_volume_size": 512,
        "hyperparameters": [
            {"name": "epoch", "type": "int", "default": 5, "min": 1, "max": 10, "scope": "algorithm"},
            *SWITCHES,
            {"name": "chat_template", "type": "text", "default": "Llama3.1", "options": ["Llama3.1", "None"], "scope": "algorithm"},
        ],
        "training_instance_type_variants": {
            "regional_aliases": {"us-east-1": {"gpu": gpu}},
            "variants": {
                # The weights for an instance family where they differ from the default training_artifact_key.
                "g5": {"regional_properties": {"image_uri": "$gpu"}, "properties": {"training_artifact_key": "acme-training/tiny-g5/"}},
                "p4d": {"regional_properties": {"image_uri": "$gpu"}},
            },
        },
    }  # fmt: skip
    # Its weights behind a EULA: the spec's gated_bucket, which also puts them in JumpStart's private bucket,
    # at the key the instance family's gated_model_key_env_var_value gives (the SDK's SageMakerGatedModelS3Uri).
    gated = {**spec, "model_id": "acme-textgeneration-gated", "gated_bucket": True}
    gated["training_instance_type_variants"] = {
        "regional_aliases": {"us-east-1": {"gpu": gpu}},
        "variants": {
            family: {"regional_properties": {"image_uri": "$gpu"}, "properties": {"gated_model_key_env_var_value": key}}
            for family, key in (("g5", "acme-training/g5/gated.tar.gz"), ("p4d", "acme-training/p4d/gated.tar.gz"))
        },
    }
    sdk_reads_offline(workdir, monkeypatch, spec, gated)

    resolved = SdkSpecs()(model_id, "us-east-1")
    assert (resolved.default_instance_type, resolved.volume_size_gb, resolved.training_image) == (
        "ml.g5.12xlarge",
        512,
        gpu,
    )
    version = publish(workdir, "jumpstart-instruction")
    request = training_request(version, model_id, role_arn=ROLE, data_uri="s3://b/pairs/v1", specs=SdkSpecs())
    # g5 trains on its own NVMe storage: JumpStartEstimator sends the Estimator's default, not the spec's 512.
    assert request["ResourceConfig"] == {"InstanceType": "ml.g5.12xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30}
    # Gated or not as its own spec says (a model the pin lacks was taken as gated): the EULA is accepted
    # only for weights behind one, in the bucket the SDK gave their URI for.
    assert not resolved.gated and "ModelAccessConfig" not in channels(request)["model"]
    assert channels(request)["model"]["S3Uri"] == "s3://jumpstart-cache-prod-us-east-1/acme-training/tiny-g5/"
    request = training_request(version, gated["model_id"], role_arn=ROLE, data_uri="s3://b/pairs/v1", specs=SdkSpecs())
    assert channels(request)["model"]["ModelAccessConfig"] == {"AcceptEula": True}
    private = "s3://jumpstart-private-cache-prod-us-east-1/acme-training"
    assert channels(request)["model"]["S3Uri"] == f"{private}/g5/gated.tar.gz"
    request = training_request(
        version, gated["model_id"], instance_type="ml.p4d.24xlarge", role_arn=ROLE, data_uri="s3://b/pairs/v1",
        specs=SdkSpecs(),
    )  # fmt: skip
    assert channels(request)["model"]["S3Uri"] == f"{private}/p4d/gated.tar.gz"
    for settings, message in (
        ({"hyperparameters": {"epoch": "11"}}, "epoch=11: must be at most 10"),
        ({"hyperparameters": {"chat_template": "Mistral"}}, "chat_template=Mistral: takes one of Llama3.1, None"),
        (
            {"instance_type": "ml.g5.2xlarge"},
            "does not train on ml.g5.2xlarge; it takes: ml.g5.12xlarge, ml.p4d.24xlarge",
        ),
    ):
        with pytest.raises(SpecError, match=message):
            training_request(version, model_id, specs=SdkSpecs(), **settings)


# What a JumpStart text-generation spec gives for the formats' switches (a spec without them takes text only).
SWITCHES = [
    {"name": name, "type": "text", "default": "False", "options": ["True", "False"], "scope": "algorithm"}
    for name in ("instruction_tuned", "chat_dataset")
]


def sdk_reads_offline(folder: Path, monkeypatch: pytest.MonkeyPatch, *specs: dict[str, Any]) -> None:
    """Point the SDK's JumpStart lookup at local folders holding ``specs`` (its own override: no network)."""
    from sagemaker.core.jumpstart.accessors import JumpStartModelsAccessor

    JumpStartModelsAccessor.reset_cache()  # the SDK keeps the manifest it read for an earlier test
    (folder / "specs").mkdir()
    (folder / "manifest").mkdir()
    listed = []
    for spec in specs:
        (folder / "specs" / f"{spec['model_id']}.json").write_text(json.dumps(spec))
        listed.append(
            {
                "model_id": spec["model_id"],
                "version": spec["version"],
                "min_version": "2.0.0",
                "spec_key": f"{spec['model_id']}.json",
            }
        )
    (folder / "manifest" / "models_manifest.json").write_text(json.dumps(listed))
    monkeypatch.setenv("AWS_JUMPSTART_MANIFEST_LOCAL_ROOT_DIR_OVERRIDE", str(folder / "manifest"))
    monkeypatch.setenv("AWS_JUMPSTART_SPECS_LOCAL_ROOT_DIR_OVERRIDE", str(folder / "specs"))
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(name, value)


def test_the_job_takes_environment_runtime_and_isolation_from_the_spec_as_jumpstart_does(
    workdir: Path, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JumpStartEstimator sends the training variables the spec gives the instance type (its
    training_instance_type_variants), the spec's estimator_kwargs (max_run, encrypt_inter_container_traffic)
    and training_enable_network_isolation; where the spec gives none, the SDK Estimator's defaults: a day,
    no isolation, and then the toolkit fetches the script from S3 (no "code" channel). Read by the SDK
    itself from local spec files, sent to the emulated endpoint and described back."""
    from train.jumpstart import SdkSpecs

    gpu = "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-training:2.0.0-gpu-py310"
    base = {
        "version": "9.9.9", "min_sdk_version": "2.0.0", "training_supported": True,
        "incremental_training_supported": False, "hosting_ecr_specs": None,
        "training_artifact_key": "acme-training/tiny/", "training_script_key": "acme/transfer_learning/sourcedir.tar.gz",
        "default_training_instance_type": "ml.g5.2xlarge", "supported_training_instance_types": ["ml.g5.2xlarge"],
        "hyperparameters": [{"name": "epoch", "type": "int", "default": 1, "min": 1, "max": 10, "scope": "algorithm"}, *SWITCHES],
    }  # fmt: skip
    variants = {
        "regional_aliases": {"us-east-1": {"gpu": gpu}},
        "variants": {"g5": {"regional_properties": {"image_uri": "$gpu"}}},
    }
    plain = {**base, "model_id": "acme-textgeneration-plain", "training_instance_type_variants": variants}
    isolated = {
        **base,
        "model_id": "acme-textgeneration-isolated",
        "training_enable_network_isolation": True,
        "estimator_kwargs": {"max_run": 7200, "encrypt_inter_container_traffic": True},
        "training_instance_type_variants": {
            **variants,
            "variants": {
                "g5": {
                    "regional_properties": {"image_uri": "$gpu"},
                    "properties": {"environment_variables": {"ACME_SHARDING": "fsdp", "ACME_THREADS": 8}},
                }
            },
        },
    }
    sdk_reads_offline(workdir, monkeypatch, plain, isolated)
    version = publish(workdir, "jumpstart-instruction", dest=f"s3://{bucket}/datasets")

    request = training_request(version, isolated["model_id"], role_arn=ROLE, specs=SdkSpecs())
    assert request["Environment"] == {"ACME_SHARDING": "fsdp", "ACME_THREADS": "8"}
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200}
    assert request["EnableNetworkIsolation"] is True and request["EnableInterContainerTrafficEncryption"] is True
    assert (
        channels(request)["code"]["S3Uri"]
        == "s3://jumpstart-cache-prod-us-east-1/acme/transfer_learning/sourcedir.tar.gz"
    )
    assert (
        json.loads(request["HyperParameters"]["sagemaker_submit_directory"])
        == "/opt/ml/input/data/code/sourcedir.tar.gz"
    )
    described = describe(launch(request))  # moto keeps no Environment to describe back
    assert described["StoppingCondition"]["MaxRuntimeInSeconds"] == 7200
    assert described["EnableNetworkIsolation"] is True

    # The user's limit replaces the spec's, as JumpStartEstimator(max_run=...) does.
    request = training_request(version, isolated["model_id"], role_arn=ROLE, specs=SdkSpecs(), max_runtime_s=600)
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 600}

    request = training_request(version, plain["model_id"], role_arn=ROLE, specs=SdkSpecs())
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400}
    assert not {"Environment", "EnableNetworkIsolation", "EnableInterContainerTrafficEncryption"} & set(request)
    assert set(channels(request)) == {"training", "validation", "model"}
    assert (
        json.loads(request["HyperParameters"]["sagemaker_submit_directory"])
        == "s3://jumpstart-cache-prod-us-east-1/acme/transfer_learning/sourcedir.tar.gz"
    )
    described = describe(launch(request))
    assert described["StoppingCondition"]["MaxRuntimeInSeconds"] == 86400
    assert not described.get("EnableNetworkIsolation")


def test_the_volume_is_the_specs_only_where_sagemaker_attaches_one_as_jumpstart_sends_it(
    workdir: Path, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JumpStartEstimator sends the spec's training_volume_size only for an instance type SageMaker
    attaches a volume to (the SDK's volume_size_supported); one with NVMe storage of its own (g5, p4d,
    p4de) gets the Estimator's default 30, which SageMaker ignores there, where the spec's 512 would
    ask for more than a g5.2xlarge's 450 GB. Sent to the emulated endpoint and described back."""
    from train.jumpstart import SdkSpecs

    gpu = "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-training:2.0.0-gpu-py310"
    spec = {
        "model_id": "acme-textgeneration-volume", "version": "9.9.9", "min_sdk_version": "2.0.0",
        "training_supported": True, "incremental_training_supported": False, "hosting_ecr_specs": None,
        "training_artifact_key": "acme-training/tiny/", "training_script_key": "acme/transfer_learning/sourcedir.tar.gz",
        "default_training_instance_type": "ml.g5.2xlarge",
        "supported_training_instance_types": ["ml.g5.2xlarge", "ml.p3.16xlarge", "ml.p4de.24xlarge"],
        "training_volume_size": 512,
        "hyperparameters": [{"name": "epoch", "type": "int", "default": 1, "min": 1, "max": 10, "scope": "algorithm"}, *SWITCHES],
        "training_instance_type_variants": {
            "regional_aliases": {"us-east-1": {"gpu": gpu}},
            "variants": {family: {"regional_properties": {"image_uri": "$gpu"}} for family in ("g5", "p3", "p4de")},
        },
    }  # fmt: skip
    sdk_reads_offline(workdir, monkeypatch, spec)
    version = publish(workdir, "jumpstart-instruction", dest=f"s3://{bucket}/datasets")
    for instance_type, volume in (("ml.g5.2xlarge", 30), ("ml.p4de.24xlarge", 30), ("ml.p3.16xlarge", 512)):
        request = training_request(
            version, spec["model_id"], instance_type=instance_type, role_arn=ROLE, specs=SdkSpecs()
        )
        assert request["ResourceConfig"] == {
            "InstanceType": instance_type,
            "InstanceCount": 1,
            "VolumeSizeInGB": volume,
        }
        assert describe(launch(request))["ResourceConfig"]["VolumeSizeInGB"] == volume
    # The pinned models train only on instance types with storage of their own.
    pinned = training_request(version, MODEL, role_arn=ROLE, specs=PINNED)
    assert pinned["ResourceConfig"]["VolumeSizeInGB"] == 30


def test_max_runtime_on_the_command_line_is_checked_against_sagemakers_model(workdir: Path) -> None:
    version = publish(workdir, "jumpstart-instruction")
    args = ("train", "launch", version, "--model", MODEL, "--specs", "pinned", "--dry-run")
    done = curation(*args, cwd=workdir)
    assert done.returncode == 0, done.stderr
    request = json.loads(done.stdout)
    # The pinned spec's estimator_kwargs and isolation, as JumpStart's Meta specs give them.
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 360000}
    assert request["EnableNetworkIsolation"] is True and request["EnableInterContainerTrafficEncryption"] is True
    done = curation(*args, "--max-runtime", "7200", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200}
    done = curation(*args, "--max-runtime", "0", cwd=workdir)  # botocore's MaxRuntimeInSeconds: at least 1
    assert done.returncode == 2 and "--max-runtime: 0 is below 1" in done.stderr and "Traceback" not in done.stderr
    # An AWS integer is Java's 32-bit int: SageMaker would refuse a larger one only at the launch.
    done = curation(*args, "--max-runtime", str(2**31), cwd=workdir)
    assert done.returncode == 2 and "--max-runtime: 2147483648 is above 2147483647" in done.stderr


def test_a_long_value_the_request_check_refuses_is_shown_cut(workdir: Path) -> None:
    """A URI or a hyperparameter can run to thousands of characters: the whole-request check names the
    field and shows the start of the value and its length, not the whole of it."""
    version = publish(workdir, "jumpstart-instruction")
    long_uri = "s3://b/" + "p" * 1100  # a channel's S3Uri takes at most 1024 characters
    with pytest.raises(TrainError) as said:
        training_request(version, MODEL, role_arn=ROLE, data_uri=long_uri, specs=PINNED)
    message = str(said.value)
    assert "InputDataConfig[0].DataSource.S3DataSource.S3Uri: 's3://b/ppp" in message
    assert re.search(r"is \d+ characters long, not 0 to 1024", message) and "p" * 100 not in message
    request = training_request(version, MODEL, role_arn=ROLE, data_uri="s3://b/pairs/v1", specs=PINNED)
    with pytest.raises(TrainError) as said:
        validate("CreateTrainingJob", {**request, "TrainingJobName": "job_" + "x" * 50})
    assert re.search(r"TrainingJobName: 'job_x{33}\.\.\.' does not match", str(said.value))


def test_patterns_are_matched_as_java_matches_them(workdir: Path) -> None:
    """SageMaker checks a value against its model's pattern with Java's matches(): "." stops at every line
    terminator (\\r, \\u2028 too), \\d is 0-9 and \\p{Alnum} ASCII; Python's re reads them wider."""
    from train.sagemaker import check_setting

    version = publish(workdir, "jumpstart-instruction")
    for value in ("q_proj\n", "q_proj\r", "q_\u2028proj", "q_proj\u0085"):  # HyperParameterValue: .*
        with pytest.raises(TrainError, match=r"HyperParameters\[target_modules\]: .* does not match \.\*"):
            training_request(version, MODEL, role_arn=ROLE, hyperparameters={"target_modules": value}, specs=PINNED)
    arabic_digits = "".join(chr(0x0660 + int(d)) for d in "123456789012")
    with pytest.raises(TrainError, match=r"--role: .* does not match"):
        training_request(version, MODEL, role_arn=f"arn:aws:iam::{arabic_digits}:role/x", specs=PINNED)
    member = "AlgorithmSpecification.TrainingImageConfig.TrainingRepositoryAuthConfig"
    member += ".TrainingRepositoryCredentialsProviderArn"  # arn:[\p{Alnum}\-]+:lambda:...
    lambda_arn = "arn:aws:lambda:us-east-1:123456789012:function:f"
    check_setting("x", lambda_arn, "CreateTrainingJob", member)
    with pytest.raises(TrainError, match="does not match"):
        check_setting("x", lambda_arn.replace("aws", "awś"), "CreateTrainingJob", member)
    # Java's \p{L} is Unicode, as before: a tag value in any script is taken.
    request = training_request(version, MODEL, role_arn=ROLE, data_uri="s3://b/pairs/v1", specs=PINNED)
    validate("CreateTrainingJob", {**request, "Tags": [{"Key": "team", "Value": "café Zürich"}]})


def live_spec(model_id: str, *hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """A JumpStart spec the SDK reads: ``model_id`` with the epoch and ``hyperparameters``, on a p4d."""
    gpu = "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-training:2.0.0-gpu-py310"
    return {
        "model_id": model_id, "version": "1.0.0", "min_sdk_version": "2.0.0",
        "training_supported": True, "incremental_training_supported": False, "hosting_ecr_specs": None,
        "training_artifact_key": "acme/", "training_script_key": "acme/sourcedir.tar.gz",
        "default_training_instance_type": "ml.p4d.24xlarge", "supported_training_instance_types": ["ml.p4d.24xlarge"],
        "hyperparameters": [
            {"name": "epoch", "type": "int", "default": 1, "min": 1, "max": 10, "scope": "algorithm"},
            *hyperparameters,
        ],
        "training_instance_type_variants": {
            "regional_aliases": {"us-east-1": {"gpu": gpu}},
            "variants": {"p4d": {"regional_properties": {"image_uri": "$gpu"}}},
        },
    }  # fmt: skip


def test_a_live_model_the_pin_lacks_takes_the_formats_its_spec_gives(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every model the pin lacked was said to take text, instruction and chat data, and a format's
    switch the model lacked was dropped: instruction data went to a vision model (VQA only) as a valid
    request, with no instruction_tuned at all. Its formats now come from its spec."""
    from train.jumpstart import SdkSpecs

    vision = "meta-vlm-llama-3-2-90b-vision-instruct"
    instruct_only = "acme-textgeneration-instruct"  # an older spec: instruction_tuned, no chat_dataset
    sdk_reads_offline(workdir, monkeypatch, live_spec(vision), live_spec(instruct_only, SWITCHES[0]))
    assert SdkSpecs()(vision, "us-east-1").formats == ("jumpstart-vqa",)
    assert SdkSpecs()(instruct_only, "us-east-1").formats == ("text", "jumpstart-instruction")
    instruction = publish(workdir, "jumpstart-instruction")
    with pytest.raises(TrainError, match=f"{vision} trains on jumpstart-vqa data, not 'jumpstart-instruction'"):
        training_request(instruction, vision, role_arn=ROLE, data_uri="s3://b/pairs/v1", specs=SdkSpecs())
    request = training_request(instruction, instruct_only, role_arn=ROLE, data_uri="s3://b/pairs/v1", specs=SdkSpecs())
    assert (
        request["HyperParameters"]["instruction_tuned"] == "True" and "chat_dataset" not in request["HyperParameters"]
    )
    chat = publish(workdir / "chat", "jumpstart-chat")
    with pytest.raises(
        TrainError, match=f"{instruct_only} trains on text, jumpstart-instruction data, not 'jumpstart-chat'"
    ):
        training_request(chat, instruct_only, role_arn=ROLE, data_uri="s3://b/pairs/v1", specs=SdkSpecs())


def test_a_format_whose_switch_the_model_lacks_is_refused_not_dropped(workdir: Path) -> None:
    """A spec that lists a format but has not its switch (a pin gone stale against its model): sent
    without instruction_tuned, the script would train on the pairs as plain text. Refused, naming what
    the model takes."""
    from dataclasses import replace

    pinned = PINNED(MODEL, "us-east-1")
    values = {k: v for k, v in pinned.hyperparameters.items() if k != "instruction_tuned"}

    def stale(model_id: str, region: str, instance_type: str | None = None) -> Any:
        return replace(PINNED(model_id, region, instance_type), hyperparameters=values)

    version = publish(workdir, "jumpstart-instruction")
    with pytest.raises(TrainError) as refused:
        training_request(version, MODEL, specs=stale)
    assert str(refused.value).startswith(
        f"{MODEL} trains on text, jumpstart-chat data, not 'jumpstart-instruction' (it has no instruction_tuned "
        "hyperparameter); publish the dataset in one of those formats"
    )


def delta_versions(workdir: Path) -> tuple[dict[str, Any], Any, Any]:
    """A recipe publishing with carry_forward off, its v1 (the whole dataset) and v2 (only its run's records)."""
    rows = [{"q": f"Categorise purchase {i}", "a": "Dining" if i % 2 else "Travel"} for i in range(30)]
    write_jsonl(workdir / "in" / "a.jsonl", rows)
    recipe = {
        "dataset": "pairs",
        "sources": [{"path": str(workdir / "in")}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "output": {
            "dest": str(workdir / "out"),
            "format": "jumpstart-instruction",
            "validation_fraction": 0.2,
            "stratify_by": "a",
            "carry_forward": False,
        },
    }
    first = run(workdir, recipe)
    write_jsonl(workdir / "in" / "b.jsonl", [{"q": f"Categorise refund {i}", "a": "Travel"} for i in range(5)])
    return recipe, first, run(workdir, recipe)


def test_a_launch_on_a_delta_version_says_it_trains_on_that_run_s_records_only(workdir: Path) -> None:
    # With carry_forward off a version holds only its run's new records: a job on it trained on those alone,
    # and nothing said so (the README's "trains on everything" holds for carried versions only).
    recipe, first, second = delta_versions(workdir)
    train = second.manifest.splits["train"].records

    def notes(version: str) -> str:
        done = curation("train", "launch", version, "--model", MODEL, "--specs", "pinned", "--dry-run", cwd=workdir)
        assert done.returncode == 0, done.stderr  # said, not refused
        return done.stderr

    said = " ".join(notes(second.version_uri).split())  # as one line, however the console wrapped it
    assert (
        f"pairs v2 holds only the records new in its run (carry_forward is off; it extends v1): the job trains on "
        f"its {train} training record(s), not the whole dataset"
    ) in said
    assert "holds only the records new" not in notes(first.version_uri)  # the first version is the whole dataset
    recipe["output"]["carry_forward"] = True
    write_jsonl(workdir / "in" / "c.jsonl", [{"q": "Categorise fare", "a": "Travel"}])
    assert "holds only the records new" not in notes(run(workdir, recipe).version_uri)


def test_the_review_page_s_launch_of_a_delta_version_says_it_too(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlalchemy as sa

    from curation.review.app import create_app
    from curation.review.auth import add_user
    from tests.review_seed import PASSWORD
    from tests.test_review_access import signed_in

    monkeypatch.setenv("CURATION_JUMPSTART_SPECS", "pinned")
    recipe, _, second = delta_versions(workdir)
    loaded = load_recipe(write_recipe(workdir, recipe))
    add_user(sa.create_engine(loaded.state), "ada", "admin", PASSWORD)
    client, csrf = signed_in(create_app(loaded.state, [loaded]), "ada")
    page = client.post("/datasets/pairs/v2/training", data={"csrf_token": csrf, "model_id": MODEL})
    assert page.status_code == 200 and 'id="training-request"' in page.text  # the dry run, shown
    train = second.manifest.splits["train"].records
    assert re.search(
        rf'id="training-delta-only">Note: pairs v2 holds only the records new in its run .*trains on its {train} ',
        page.text,
    )
    first = client.post("/datasets/pairs/v1/training", data={"csrf_token": csrf, "model_id": MODEL})
    assert 'id="training-request"' in first.text and "training-delta-only" not in first.text


def test_the_review_page_s_launch_does_not_fall_back_to_the_unverified_pin(
    workdir: Path, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The page's dry run is the request its confirm launches: built on the pin after the live lookup failed, a
    # confirm launched it, where `curation train launch` refuses.
    import sqlalchemy as sa

    from curation.review.app import create_app
    from curation.review.auth import add_user
    from tests.review_seed import PASSWORD
    from tests.test_review_access import signed_in

    monkeypatch.delenv("CURATION_JUMPSTART_SPECS", raising=False)
    recipe, _, _ = delta_versions(workdir)
    loaded = load_recipe(write_recipe(workdir, recipe))
    add_user(sa.create_engine(loaded.state), "ada", "admin", PASSWORD)
    client, csrf = signed_in(create_app(loaded.state, [loaded]), "ada")
    page = client.post("/datasets/pairs/v1/training", data={"csrf_token": csrf, "model_id": MODEL})
    said = " ".join(page.text.split())
    assert page.status_code == 400 and 'id="training-request"' not in page.text
    assert f"JumpStart live lookup of &#39;{MODEL}&#39; failed" in said and "CURATION_JUMPSTART_SPECS=pinned" in said
    monkeypatch.setenv("CURATION_JUMPSTART_SPECS", "pinned")  # chosen knowingly: the dry run is shown
    page = client.post("/datasets/pairs/v1/training", data={"csrf_token": csrf, "model_id": MODEL})
    assert page.status_code == 200 and 'id="training-request"' in page.text
