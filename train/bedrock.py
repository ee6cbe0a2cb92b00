"""Import a model trained by SageMaker into Amazon Bedrock (Custom Model Import).

Bedrock's CreateModelImportJob reads the model's files (Hugging Face layout: config, safetensors,
tokenizer) from an S3 prefix, so the training request asks SageMaker for uncompressed output and
this reads that prefix from the finished job's description.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from train.sagemaker import TrainError, check_setting, describe, model_artifacts, region, tags, validate

BEDROCK_ROLE_ENV = "BEDROCK_IMPORT_ROLE_ARN"


def bedrock_role(role_arn: str | None = None) -> str:
    role = role_arn or os.environ.get(BEDROCK_ROLE_ENV)
    if not role:
        raise TrainError(f"Bedrock needs a service role to read the model: pass --role or set {BEDROCK_ROLE_ENV}")
    check_setting("--role" if role_arn else BEDROCK_ROLE_ENV, role, "CreateModelImportJob", "roleArn", "bedrock")
    return role


def import_request(
    training_job: Mapping[str, Any],
    *,
    model_name: str | None = None,
    role_arn: str | None = None,
    job_name: str | None = None,
) -> dict:
    """The CreateModelImportJob request for a completed training job (its DescribeTrainingJob answer)."""
    name = training_job["TrainingJobName"]
    status = training_job["TrainingJobStatus"]
    if status != "Completed":
        raise TrainError(f"training job {name} is {status}; only a completed job has a model to import")
    role = bedrock_role(role_arn)
    if training_job.get("OutputDataConfig", {}).get("CompressionType", "GZIP") != "NONE":
        raise TrainError(
            f"training job {name} wrote its model as model.tar.gz; Bedrock imports a folder of model files: "
            "train with uncompressed output (`curation train launch` asks for it)"
        )
    if model_name is not None:
        check_setting("--model-name", model_name, "CreateModelImportJob", "importedModelName", "bedrock")
    imported = model_name or name
    tags = {t["Key"]: t["Value"] for t in training_job.get("Tags", [])}
    request: dict[str, Any] = {
        "jobName": job_name or _import_job_name(name),
        "importedModelName": imported,
        "roleArn": role,
        "modelDataSource": {"s3DataSource": {"s3Uri": model_artifacts(training_job)}},
        "importedModelTags": [
            {"key": "sagemaker-training-job", "value": name},
            *({"key": k.replace(":", "-"), "value": v} for k, v in tags.items() if k.startswith("curation:")),
        ],
    }
    validate("CreateModelImportJob", request, service="bedrock")
    return request


def _import_job_name(training_job_name: str) -> str:
    """``import-JOB`` in Bedrock's 63 characters: a long name loses its middle, not its end, which
    tells apart jobs of one dataset, version and model (their time and random part)."""
    name = re.sub(r"[^a-zA-Z0-9-]", "-", f"import-{training_job_name}")
    return name if len(name) <= 63 else f"{name[:40].rstrip('-')}-{name[-22:].lstrip('-')}"


def request_for_job(job_name: str, *, role_arn: str | None = None, **options: Any) -> dict:
    role = bedrock_role(role_arn)  # before any call: a usage error needs no AWS
    job = describe(job_name)
    # The job's curation:* tags (dataset, version, recipe) go on the imported model; DescribeTrainingJob
    # does not return tags, ListTags does.
    return import_request({**job, "Tags": tags(job["TrainingJobArn"])}, role_arn=role, **options)


def start_import(request: dict, client: Any | None = None) -> str:
    """Send the request to Bedrock; returns the import job's ARN."""
    import boto3

    bedrock = client or boto3.client("bedrock", region_name=region())
    return bedrock.create_model_import_job(**request)["jobArn"]
