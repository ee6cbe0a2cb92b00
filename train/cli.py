"""``curation train ...``: launch fine-tuning on a published dataset version, follow it, import the
result into Bedrock. Exit codes: 0 done (or the job completed), 1 the job or the call failed,
2 the command line, the version or the model is wrong, 3 still running when a wait gave up."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated

import typer
from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from train.jumpstart import SPEC_SOURCES, SpecError, SpecResolver, spec_resolver

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMED_OUT = 0, 1, 2, 3

app = typer.Typer(help="Fine-tune on a published dataset version with SageMaker; import into Bedrock.")
console = Console(stderr=True, soft_wrap=True)  # messages whole: a log line keeps its file name in one piece
out = Console()


def _resolver(name: str | None, pinned_fallback: bool = True) -> SpecResolver:
    if name is not None and name not in SPEC_SOURCES:
        raise typer.BadParameter(f"--specs takes {', '.join(SPEC_SOURCES)}")
    return spec_resolver(name, pinned_fallback)


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r}: write hyperparameters as key=value")
        values[key.strip()] = value.strip()
    return values


def _same(text: str, value: bool | int) -> bool:
    """Whether a ``-H`` value says what an option's value does: compared as values, so -H
    int8_quantization=true and --int8, or -H epoch=03 and --epochs 3, agree."""
    if isinstance(value, bool):
        return text.lower() == str(value).lower()
    try:
        return int(text) == value
    except ValueError:
        return False


def _fail(message: str, code: int) -> typer.Exit:
    # The message is text: it can quote a model ID, a job's name or an AWS error, whose brackets rich
    # would otherwise take for markup ("[/x]" an error, "[b]" lost).
    console.print(f"[red]error[/red] {escape(message)}", highlight=False)
    return typer.Exit(code)


def _followed(
    job_name: str,
    poll_seconds: float,
    timeout_seconds: float | None,
    describe_job: Callable[[str], dict] | None = None,
) -> typer.Exit:
    """The exit of following a job (``launch --wait``, ``wait``): its outcome, 1 if it cannot be
    followed, or 3 if it is still running when ``timeout_seconds`` have passed (a script tells that
    apart from a failed job: it can wait again)."""
    from train.sagemaker import TrainError, WaitTimedOut

    try:
        return typer.Exit(follow(job_name, poll_seconds, timeout_seconds, describe_job))
    except WaitTimedOut as error:  # names the job already
        return _fail(f"{error}; it goes on: `curation train wait {job_name}` follows it again", EXIT_TIMED_OUT)
    except TrainError as error:  # names the job already
        return _fail(f"{error}; it goes on: `curation train wait {job_name}` follows it again", EXIT_FAILED)
    except (ClientError, BotoCoreError) as error:
        return _fail(f"{job_name}: {error}", EXIT_FAILED)


def follow(
    job_name: str,
    poll_seconds: float,
    timeout_seconds: float | None,
    describe_job: Callable[[str], dict] | None = None,
) -> int:
    """Follow a job with a progress display (status and its latest log lines); the exit code."""
    from train.logs import JobLogs
    from train.sagemaker import WaitTimedOut, describe, model_artifacts, wait

    def status(info: dict) -> str:
        return f"{job_name}: " + f"{info['TrainingJobStatus']} / {info.get('SecondaryStatus', '')}".rstrip(" /")

    # Read before the spinner shows: a job that cannot be read (no such job, no credentials) is said
    # alone, not after a status it never had. The wait's first poll is this answer.
    read = describe_job or describe
    first = [read(job_name)]

    def described(name: str) -> dict:
        return first.pop() if first else read(name)

    logs = JobLogs(job_name)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}", markup=False), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task(status(first[0]), total=None)

        def show_new_lines() -> None:
            for line in logs.new_lines():
                bar.console.print(line, highlight=False, markup=False)

        def update(info: dict) -> None:
            bar.update(task, description=status(info))
            show_new_lines()

        # Once more after the last status: a job writes its last lines (a failure's traceback) as it
        # ends, after the poll that read its logs.
        try:
            info = wait(
                job_name,
                update,
                poll_seconds=poll_seconds,
                timeout_seconds=timeout_seconds,
                describe_job=described,
            )
        except WaitTimedOut:
            show_new_lines()
            raise
        show_new_lines()
    status = info["TrainingJobStatus"]
    if status == "Completed":
        # The request asks for uncompressed output: the model is a folder (what Bedrock imports), not model.tar.gz.
        out.print(
            f"[green]completed[/green] {escape(job_name)}; model at {escape(model_artifacts(info))}",
            highlight=False,
            soft_wrap=True,
        )
        return EXIT_OK
    reason = info.get("FailureReason", "no reason given")
    console.print(f"[red]{status.lower()}[/red] {escape(f'{job_name}: {reason}')}", highlight=False)
    return EXIT_FAILED


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the user set option ``name`` (by typing it or by its variable), even to its default value."""
    # By name: Typer carries its own copy of click, whose ParameterSource is not click.core's.
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


@app.command()
def launch(
    ctx: typer.Context,
    dataset_version: Annotated[str, typer.Argument(help="the published version: s3://.../DATASET/vN or a local path")],
    model: Annotated[str, typer.Option("--model", help="JumpStart model ID")],
    instance_type: Annotated[str | None, typer.Option(help="default: the model's own")] = None,
    hyperparameter: Annotated[
        list[str] | None, typer.Option("--hyperparameter", "-H", help="key=value, repeatable")
    ] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank (lora_r)")] = None,
    lora_alpha: Annotated[int | None, typer.Option(help="LoRA alpha (lora_alpha)")] = None,
    int8: Annotated[bool | None, typer.Option("--int8/--no-int8", help="int8 quantisation of the base model")] = None,
    epochs: Annotated[int | None, typer.Option(help="epochs (epoch)")] = None,
    role: Annotated[str | None, typer.Option(help="SageMaker execution role ARN (or SAGEMAKER_ROLE_ARN)")] = None,
    output: Annotated[
        str | None,
        typer.Option(help="S3 prefix for the trained model; default: training-output/ beside the version on S3"),
    ] = None,
    data_uri: Annotated[str | None, typer.Option(help="where the version sits on S3, if published locally")] = None,
    max_runtime: Annotated[
        int | None,
        typer.Option(help="stop the job after this many seconds (MaxRuntimeInSeconds); default: the model's spec's"),
    ] = None,
    specs: Annotated[
        str | None,
        typer.Option(
            help="JumpStart specs: auto (live; pinned only for --dry-run), live or pinned; default $CURATION_JUMPSTART_SPECS, else auto"
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the request; call nothing")] = False,
    follow_job: Annotated[bool, typer.Option("--wait", help="follow the job until it ends")] = False,
    poll_seconds: Annotated[float, typer.Option(help="how often --wait asks, in seconds (at least 1)", min=1.0)] = 30.0,
    timeout: Annotated[
        float | None, typer.Option(help="give up waiting after this many seconds (exit 3; the job goes on)", min=0.0)
    ] = None,
) -> None:
    """Fine-tune a JumpStart model on a published dataset version."""
    from train.sagemaker import (
        TrainError,
        check_copy,
        check_output,
        delta_only,
        held_out,
        placeholders,
        training_request,
    )
    from train.sagemaker import launch as create_job

    if dry_run and follow_job:
        raise _fail("--dry-run launches no job for --wait to follow: leave out one of them", EXIT_USAGE)
    if timeout is not None and not follow_job:
        raise _fail("--timeout is how long --wait follows the job: add --wait or leave it out", EXIT_USAGE)
    if _given(ctx, "poll_seconds") and not follow_job:
        raise _fail(
            "--poll-seconds is how often --wait asks for the job's status: add --wait or leave it out", EXIT_USAGE
        )
    values = parse_pairs(hyperparameter or [])
    shortcuts = {
        "lora_r": ("--lora-r", lora_r),
        "lora_alpha": ("--lora-alpha", lora_alpha),
        "epoch": ("--epochs", epochs),
    }
    given: dict[str, bool | int] = {k: v for k, (_, v) in shortcuts.items() if v is not None}
    # What the user typed for each, which errors name (the hyperparameter's own name may be new to them).
    typed = {k: f"{option} {v}" for k, (option, v) in shortcuts.items() if v is not None}
    if int8 is not None:
        given["int8_quantization"] = int8
        typed["int8_quantization"] = "--int8" if int8 else "--no-int8"
    clash = [f"{typed[k]} and -H {k}={values[k]}" for k, v in given.items() if k in values and not _same(values[k], v)]
    if clash:
        raise _fail(f"{'; '.join(clash)}: set twice to different values; keep one", EXIT_USAGE)
    values.update({k: str(v) for k, v in given.items()})
    try:
        request = training_request(
            dataset_version,
            model,
            instance_type=instance_type,
            hyperparameters=values,
            role_arn=role,
            output_uri=output,
            data_uri=data_uri,
            specs=_resolver(specs, pinned_fallback=dry_run),
            typed=typed,
            max_runtime_s=max_runtime,
        )
    except (TrainError, SpecError) as error:
        raise _fail(str(error), EXIT_USAGE) from None
    for note in (delta_only(dataset_version), held_out(request, dataset_version)):
        if note is not None:
            console.print(f"[yellow]note[/yellow] {escape(note)}", highlight=False)
    if dry_run:
        out.print_json(json.dumps(request))
        for need in placeholders(request):
            console.print(f"[yellow]note[/yellow] a real launch needs {escape(need)}", highlight=False)
        raise typer.Exit(EXIT_OK)
    try:
        if data_uri is not None:
            check_copy(dataset_version, data_uri)
        if output is not None:
            check_output(output)
        name = create_job(request)
    except TrainError as error:
        raise _fail(str(error), EXIT_USAGE) from None
    except (ClientError, BotoCoreError) as error:
        raise _fail(f"SageMaker refused the training job: {error}", EXIT_FAILED) from None
    out.print(f"launched [bold]{escape(name)}[/bold]", highlight=False)
    if follow_job:
        raise _followed(name, poll_seconds, timeout)


@app.command("wait")
def wait_command(
    job_name: Annotated[str, typer.Argument(help="the training job's name")],
    poll_seconds: Annotated[float, typer.Option(help="how often to ask, in seconds (at least 1)", min=1.0)] = 30.0,
    timeout: Annotated[
        float | None, typer.Option(help="give up waiting after this many seconds (exit 3; the job goes on)", min=0.0)
    ] = None,
) -> None:
    """Follow a training job until it ends; exit 1 if it failed or stopped, 3 if still running at --timeout."""
    raise _followed(job_name, poll_seconds, timeout)


@app.command("import-to-bedrock")
def import_to_bedrock(
    job_name: Annotated[str, typer.Argument(help="a completed training job")],
    model_name: Annotated[str | None, typer.Option(help="the imported model's name (default: the job's)")] = None,
    role: Annotated[str | None, typer.Option(help="Bedrock service role ARN (or BEDROCK_IMPORT_ROLE_ARN)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the request; call nothing")] = False,
) -> None:
    """Import a fine-tuned model into Amazon Bedrock (Custom Model Import)."""
    from train.bedrock import request_for_job, start_import
    from train.sagemaker import TrainError

    try:
        request = request_for_job(job_name, model_name=model_name, role_arn=role)
    except TrainError as error:
        raise _fail(str(error), EXIT_USAGE) from None
    except (ClientError, BotoCoreError) as error:
        raise _fail(f"cannot read training job {job_name}: {error}", EXIT_FAILED) from None
    if dry_run:
        out.print_json(json.dumps(request))
        raise typer.Exit(EXIT_OK)
    try:
        arn = start_import(request)
    except (ClientError, BotoCoreError) as error:
        raise _fail(f"Bedrock refused the import: {error}", EXIT_FAILED) from None
    out.print(f"import started: [bold]{escape(arn)}[/bold]", highlight=False)


@app.command()
def spec(
    model: Annotated[str, typer.Argument(help="JumpStart model ID")],
    specs: Annotated[
        str | None, typer.Option(help="auto, live or pinned; default $CURATION_JUMPSTART_SPECS, else auto")
    ] = None,
) -> None:
    """Show what a JumpStart model ID resolves to (image, script, defaults)."""
    from dataclasses import asdict

    from train.sagemaker import region

    try:
        resolved = _resolver(specs)(model, region())
    except SpecError as error:
        raise _fail(str(error), EXIT_USAGE) from None
    out.print_json(json.dumps(asdict(resolved)))
