"""The command line, run as users and scripts run it: a real process, real exit codes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from curation.pipeline import run_recipe
from curation.stopping import STOP_SIGNALS
from schemas.config import Recipe, load_recipe
from tests.cli_process import cli_env, curation
from tests.helpers import docs_recipe, sqlite_db, write_jsonl, write_recipe


def five_notes(folder: Path) -> Recipe:
    """A recipe over five short documents in ``folder``."""
    write_jsonl(folder / "docs.jsonl", [{"text": f"note {n}"} for n in range(5)])
    spec = {"dataset": "docs", "sources": [{"path": "docs.jsonl"}], "record": {"kind": "document"}}
    return load_recipe(write_recipe(folder, spec))


@contextlib.contextmanager
def stop_handlers_kept() -> Iterator[None]:
    """The process's SIGTERM and ^C handlers as they were, whatever the CLI's ``execute`` sets."""
    handlers = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def fresh_curation(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`curation ARGS` in a fresh interpreter, for what a process forked by ``curation`` would not show."""
    return subprocess.run(
        [sys.executable, "-m", "curation.cli", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_asks_the_database_for_the_columns_of_a_sql_source(tmp_path: Path) -> None:
    url = sqlite_db(
        tmp_path / "crm.db",
        "CREATE TABLE tickets (subject TEXT, reply TEXT)",
        "INSERT INTO tickets VALUES ('Card declined', 'Travel notice set.')",
    )
    record = {"kind": "instruction", "prompt": "subject", "completion": "reply"}
    for source, problem in (
        ({"query": "SELECT subject, reply FROM tickets"}, None),
        ({"query": "SELECT subjct FROM tickets"}, "cannot read: OperationalError: no such column: subjct"),
        ({"table": "tickets", "key": ["ticket_id"]}, "column 'ticket_id' is not in the result"),
        ({"url": "nosuchdb://x/y", "table": "t"}, "sources.0.url (line 4): SQLAlchemy has no dialect 'nosuchdb'"),
        ({"url": "not a url", "table": "t"}, "sources.0.url (line 4): not a database URL"),
    ):
        recipe = write_recipe(
            tmp_path, {"dataset": "t", "sources": [{"type": "sql", "url": url, **source}], "record": record}
        )
        checked = curation("check", str(recipe), cwd=tmp_path)
        if problem is None:
            assert checked.returncode == 0 and "1 input(s)" in checked.stdout, checked.stderr
        else:
            assert checked.returncode == 2 and problem in checked.stderr and "Traceback" not in checked.stderr
    assert not (tmp_path / "output").exists()  # nothing read, nothing run


def test_check_says_a_source_it_cannot_reach_as_an_input_error_not_a_recipe_error(tmp_path: Path) -> None:
    # An unreachable database or S3 endpoint was a "recipe error", with nothing wrong in the recipe.
    record = {"kind": "document"}
    env = {**cli_env(), "AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_MAX_ATTEMPTS": "1"}
    env |= {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    for source, said in (
        ({"type": "sql", "url": "postgresql+psycopg://u@127.0.0.1:1/db", "table": "t"}, "postgresql+psycopg://u@"),
        ({"path": "s3://bucket/in/*.jsonl"}, "s3://bucket/in/*.jsonl: cannot list"),
    ):
        recipe = write_recipe(tmp_path, {"dataset": "t", "sources": [source], "record": record})
        checked = curation("check", str(recipe), cwd=tmp_path, env=env)
        assert checked.returncode == 2 and checked.stderr.startswith(f"input error {said}"), checked.stderr


def test_check_says_a_column_the_sql_result_lacks_as_the_run_would(tmp_path: Path) -> None:
    # `{{ replyy }}` passed check, and the run failed after reading every row.
    url = sqlite_db(
        tmp_path / "crm.db",
        "CREATE TABLE tickets (id INTEGER, subject TEXT, reply TEXT)",
        "INSERT INTO tickets VALUES (7, 'Card declined', 'Travel notice set.')",
    )
    source = {"type": "sql", "url": url, "table": "tickets"}
    plain = {"prompt": "subject", "completion": "reply"}
    for record, output, missing in (
        (
            {"prompt": "{{ subject }} (#{{ input_id }})", "completion": "{{ replyy }}"},
            {},
            "completion: column 'replyy'",
        ),
        ({"prompt": "subject", "completion": "replyy"}, {}, "completion: column 'replyy' is missing"),
        (plain, {"group_by": "account"}, "column 'account' is missing (output.group_by names it)"),  # the split's
        ({"prompt": "{{ subject }}{{ note | default('') }}", "completion": "reply"}, {}, None),  # one it can do without
    ):
        spec = {"dataset": "t", "sources": [source], "record": {"kind": "instruction", **record}, "output": output}
        recipe = write_recipe(tmp_path, spec)
        checked = curation("check", str(recipe), cwd=tmp_path)
        if missing is None:
            assert checked.returncode == 0, checked.stderr
            ran = curation("run", str(recipe), "--quiet", cwd=tmp_path)
            assert ran.returncode == 0, ran.stderr
            continue
        said = " ".join(checked.stderr.split())
        assert checked.returncode == 2 and f"input error {url}#tickets: {missing}" in said, checked.stderr
        assert "'input_id'" in said and "Traceback" not in said  # the result's columns, as a template names them
        ran = curation("run", str(recipe), "--quiet", cwd=tmp_path)
        assert ran.returncode == 2 and "lack a column" in ran.stderr  # what check now says before it


def test_check_warns_of_a_column_the_template_reads_only_under_a_condition_and_the_run_publishes(
    tmp_path: Path,
) -> None:
    # `{% if vip %}{{ perk }}{% endif %}` with no `perk` in the result was an input error in check (exit 2),
    # though the run reads the rows: none meets the condition, so every one is published.
    url = sqlite_db(
        tmp_path / "crm.db",
        "CREATE TABLE tickets (subject TEXT, reply TEXT)",
        "INSERT INTO tickets VALUES ('Card declined', 'Travel notice set.')",
    )
    source = {"type": "sql", "url": url, "table": "tickets"}
    template = "{{ reply }}{% if subject == 'VIP' %} {{ perk }}{% endif %}"
    record = {"kind": "instruction", "prompt": "subject", "completion": template}
    # All to train: the one record's side would hang on its id, so on the temporary folder's name.
    spec = {"dataset": "t", "sources": [source], "record": record, "output": {"validation_fraction": 0}}
    recipe = write_recipe(tmp_path, spec)
    checked = curation("check", str(recipe), cwd=tmp_path)
    said = " ".join(checked.stderr.split())
    assert checked.returncode == 0 and "input error" not in said, checked.stderr
    assert f"warning {url}#tickets: completion: column 'perk' is missing; the template uses it only under" in said
    ran = curation("run", str(recipe), "--quiet", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    published = tmp_path / "output" / "t" / "v1" / "train" / "part-00000.jsonl"
    assert [json.loads(line)["completion"] for line in published.read_text().splitlines()] == ["Travel notice set."]


def test_demo_prints_output_and_summary(tmp_path: Path) -> None:
    done = curation("demo", "--folder", "demo", "--rows", "500", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    version = tmp_path / "demo" / "output" / "transactions" / "v1"
    assert f"published {version}" in done.stdout
    manifest = json.loads((version / "manifest.json").read_text())
    input_row = next(line for line in done.stdout.splitlines() if line.startswith("│ input"))
    assert input_row.split("│")[3].strip() == f"{manifest['counts']['input']:,}"
    assert "exact_duplicate" in done.stdout and "malformed_csv" in done.stdout


def test_demo_into_a_file_is_a_one_line_usage_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    done = curation("demo", "--folder", "afile", cwd=tmp_path)
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and "Traceback" not in said, said
    assert "--folder afile: cannot write the demo (afile/input: Not a directory)" in said


def test_run_and_check_exit_codes(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "docs.jsonl", [{"text": "hello"}, {"text": "world"}])
    good = write_recipe(
        tmp_path, {"dataset": "docs", "sources": [{"path": "docs.jsonl"}], "record": {"kind": "document"}}
    )
    checked = curation("check", str(good), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "1 input(s)" in checked.stdout
    assert not (tmp_path / "output").exists(), "check must not run anything"

    ran = curation("run", str(good), "--quiet", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "output" / "docs" / "v1" / "manifest.json").exists()

    bad = write_recipe(
        tmp_path, {"dataset": "docs", "sources": [{"path": "docs.jsonl", "colour": "red"}]}, name="bad.yaml"
    )
    for command in ("check", "run"):
        refused = curation(command, str(bad), cwd=tmp_path)
        assert refused.returncode == 2
        assert "sources.0.colour (line 4)" in refused.stderr
        assert "Traceback" not in refused.stderr

    deep = "nowhere/" + "exports-of-the-billing-team/" * 4 + "*.jsonl"  # longer than a terminal line
    missing = write_recipe(
        tmp_path,
        {"dataset": "docs", "sources": [{"path": deep}], "record": {"kind": "document"}},
        name="missing.yaml",
    )
    failed = curation("run", str(missing), "--quiet", cwd=tmp_path)
    assert failed.returncode == 1
    assert "no input files match" in failed.stderr and "nothing published" in failed.stderr
    assert "Traceback" not in failed.stderr
    # One line, the path whole, as a log (cron, a file) keeps it: grep finds the file by its name.
    (said,) = [line for line in failed.stderr.splitlines() if "no input files match" in line]
    assert str(tmp_path / deep) in said


@pytest.mark.parametrize(
    ("recipe", "said"),
    [
        # Each was a traceback, exit 1, from check or run (or both).
        (b"dataset: tx\nsources: [{path: in.csv}]\nx: &a [*a]\n", "x.0 (line 3): an alias inside the value it names"),
        (b"dataset: tx\nsources: [{path: caf\xe9.csv}]\n", "not UTF-8: byte 0xe9 at line 2, column 21"),
        (
            b"dataset: tx\nsources: [{path: in.csv}]\nbatch_rows: 99999999999999999999999999\n",
            "batch_rows (line 3): Input should be less than or equal to 10000000",
        ),
        (
            b"dataset: tx\nsources: [{path: in.csv}]\nstate: postgresql+psycopg2://u@127.0.0.1:1/db\n",
            "state (line 3): the state store's postgresql driver is psycopg",
        ),
        # check said ok, and the run failed (File name too long) once it had read its input.
        (
            b"dataset: " + b"a" * 300 + b"\nsources: [{path: in.csv}]\n",
            "dataset (line 1): String should have at most 200",
        ),
    ],
)
def test_a_recipe_run_and_check_cannot_take_is_a_recipe_error_exit_2(tmp_path: Path, recipe: bytes, said: str) -> None:
    (tmp_path / "in.csv").write_text("prompt,completion\nhi,there\n")
    (tmp_path / "r.yaml").write_bytes(recipe)
    for command in ("check", "run"):
        refused = curation(command, "r.yaml", cwd=tmp_path)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.startswith("recipe error r.yaml: ") and said in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr


def test_a_dest_that_is_a_file_is_refused_by_check_and_before_the_run_reads_its_input(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "docs.jsonl", [{"text": "hello"}])
    spec = {"dataset": "docs", "sources": [{"path": "docs.jsonl"}], "record": {"kind": "document"}}
    (tmp_path / "out").write_text("x")
    recipe = write_recipe(tmp_path, {**spec, "output": {"dest": "out/nested"}})
    said = f"{tmp_path / 'out'} is a file, not a folder: no version can be published under {tmp_path / 'out/nested'}"
    checked = curation("check", str(recipe), cwd=tmp_path)  # it said ok
    assert checked.returncode == 2 and said in checked.stderr, checked.stderr
    ran = curation("run", str(recipe), "--quiet", cwd=tmp_path)  # it failed "Not a directory" once all was read
    assert ran.returncode == 1 and f"run failed, nothing published: {said}" in ran.stderr, ran.stderr
    assert "Traceback" not in checked.stderr + ran.stderr


def test_a_run_that_sets_every_record_aside_warns_that_its_version_holds_none(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("q,a\nonly one field\nthree,fields,here\n")
    spec = {
        "dataset": "rows",
        "sources": [{"path": "rows.csv"}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        # All to train: v2's one record could otherwise go to validation, and its empty train split is warned of.
        "output": {"validation_fraction": 0},
    }
    ran = curation("run", str(write_recipe(tmp_path, spec)), "--quiet", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "warning rows v1 holds no record: every one of the 2 read was set aside" in ran.stderr, ran.stderr
    (tmp_path / "rows.csv").write_text("q,a\nWhat is two and two?,Four\n")
    kept = curation("run", str(tmp_path / "recipe.yaml"), "--quiet", cwd=tmp_path)
    assert kept.returncode == 0 and "holds no record" not in kept.stderr, kept.stderr
    (tmp_path / "empty.csv").write_text("")
    spec = {**spec, "dataset": "empty", "sources": [{"path": "empty.csv"}]}
    empty = curation("run", str(write_recipe(tmp_path, spec, name="empty.yaml")), "--quiet", cwd=tmp_path)
    assert empty.returncode == 0 and "warning empty v1 holds no record: its input gave none" in empty.stderr


def test_in_a_log_file_warnings_and_the_inputs_check_lists_keep_file_names_whole(tmp_path: Path) -> None:
    # cron or CI keeps stderr in a file, 80 columns by default: grep must find the file a warning names,
    # and the inputs `check` lists.
    folder = tmp_path / ("exports-of-the-billing-team/" * 3)
    write_jsonl(folder / "notes.jsonl", [{"text": "a note"}])
    skipped = folder / "customer-invoices-2026-11-26-final.xml"
    skipped.write_text("<invoice/>")
    spec = {"dataset": "docs", "sources": [{"path": str(folder)}], "record": {"kind": "document"}}
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(Path(__file__).parents[1])}
    recipe = str(write_recipe(tmp_path, spec))
    checked, ran = (curation(*args, recipe, cwd=tmp_path, env=env) for args in (["check"], ["run", "--quiet"]))
    assert checked.returncode == 0 and f"  {folder / 'notes.jsonl'} (" in checked.stdout.splitlines()[1], checked.stdout
    assert ran.returncode == 0, ran.stderr
    (said,) = [line for line in ran.stderr.splitlines() if "not a kind of file this source reads" in line]
    assert said.endswith(str(skipped)) and " WARNING connectors.storage " in said, ran.stderr


def test_a_recipe_error_found_in_the_records_is_found_by_check_and_named_with_the_recipe_by_run(tmp_path: Path) -> None:
    # The column's type shows only in the rows (undeclared, mixed numbers and text): found on the first batch.
    write_jsonl(tmp_path / "in.jsonl", [{"q": "a question", "a": "an answer", "n": 5}, {"q": "b", "a": "c", "n": "x"}])
    check = {"type": "expectations", "expect": [{"column": "n", "check": "between", "min": 1, "max": 10}]}
    recipe = {
        "dataset": "qa",
        "sources": [{"path": "in.jsonl"}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "stages": [{"type": "expectations", "expect": [{"column": "prompt", "check": "not_null"}]}, check],
        "output": {"group_by": "n"},
    }
    path = write_recipe(tmp_path, recipe, name="qa.yaml")
    checked = curation("check", str(path), cwd=tmp_path)  # it said "ok", and the run failed
    line = [n for n, text in enumerate(path.read_text().splitlines(), 1) if text == "- type: expectations"][1]
    said = f"stages.1 (line {line}): expectations_2: between compares numbers, and 'n' holds text"
    assert checked.returncode == 2 and said in checked.stderr
    ran = curation("run", str(path), "--quiet", cwd=tmp_path)
    assert ran.returncode == 2 and "Traceback" not in ran.stderr
    (said,) = [line for line in ran.stderr.splitlines() if "between compares numbers" in line]
    # The recipe, and the place in it of the stage that cannot run: the second expectations entry.
    assert f"nothing published: {path}: stages.1 (line {line}): expectations_2: between compares numbers" in said
    assert "declare it int or float in input_schema" in said


def test_check_says_when_a_file_name_does_not_tell_its_format(tmp_path: Path) -> None:
    # `check` said "ok" for a path naming data.txt; only the run then failed on it.
    (tmp_path / "data.txt").write_text('{"text": "hello"}\n')
    recipe = write_recipe(
        tmp_path, {"dataset": "docs", "sources": [{"path": "data.txt"}], "record": {"kind": "document"}}
    )
    checked = curation("check", str(recipe), cwd=tmp_path)
    assert checked.returncode == 2, checked.stdout
    assert (
        f"{tmp_path / 'data.txt'}: cannot tell the format from the name; set 'format' on the source" in checked.stderr
    )
    assert "Traceback" not in checked.stderr


def test_check_and_run_warn_of_a_clean_stage_after_pii(tmp_path: Path) -> None:
    # `clean` after `pii` turned "Maria&nbsp;Garcia", passed over by the PII stage, into a name in clear.
    write_jsonl(tmp_path / "in.jsonl", [{"text": "Ask for Maria&nbsp;Garcia at the desk."}])
    spec = {"dataset": "docs", "sources": [{"path": "in.jsonl"}], "record": {"kind": "document"}}
    said = "clean (stage 2) comes after pii (stage 1): the text it rewrites"
    in_order = curation(
        "check", str(write_recipe(tmp_path, {**spec, "stages": [{"type": "clean"}, {"type": "pii"}]})), cwd=tmp_path
    )
    assert in_order.returncode == 0 and "comes after pii" not in in_order.stderr
    recipe = write_recipe(tmp_path, {**spec, "stages": [{"type": "pii"}, {"type": "clean"}]})
    checked = curation("check", str(recipe), cwd=tmp_path)
    assert checked.returncode == 0 and f"warning stages: {said}" in checked.stderr  # the run logs the same


def bad_heads(folder: Path) -> dict[str, str]:
    """Input files whose head a run refuses or cannot shape, in ``folder``, each with what is said of it."""
    folder.mkdir()
    write_jsonl(folder / "a-good.jsonl", [{"question": "Where?", "answer": "Here."}])
    (folder / "b-twice.csv").write_text("question,answer,question\nWhere?,Here.,Why?\n")
    (folder / "c-ids.csv").write_text("id,input_id,question,answer\n7,A-7,Where?,Here.\n")
    (folder / "d-array.json").write_text(json.dumps([{"question": "Where?", "answer": "Here."}], indent=2))
    write_jsonl(folder / "e-typo.jsonl", [{"questoin": "Where?", "answer": "Here."}])
    (folder / "f-latin1.csv").write_bytes("question,r\u00e9ponse\nWhere?,Ici.\n".encode("latin-1"))
    (folder / "g-damaged.parquet").write_bytes(b"PAR1 not really")
    (folder / "h-empty.jsonl").write_text("")  # no record, as in a run: no problem
    return {
        "b-twice.csv": "b-twice.csv: column(s) 'question' appear more than once in the header",
        "c-ids.csv": "c-ids.csv: column 'id' is read as 'input_id' (id is the record's own), and the input has an "
        "'input_id' column too: rename one of them",
        "d-array.json": "d-array.json: holds a JSON array, not JSON Lines (one object per line)",
        "e-typo.jsonl": "e-typo.jsonl:1: prompt: column 'question' is missing (the template uses it)",
        "f-latin1.csv": "f-latin1.csv:2: completion: column 'answer' is missing",
        "g-damaged.parquet": "g-damaged.parquet: not a readable parquet file",
    }


def test_check_reads_the_head_of_each_input_and_says_what_the_run_would(tmp_path: Path) -> None:
    # `check` opened no input: each of these said "ok", and surfaced only once a run was under way.
    said_of = bad_heads(tmp_path / "in")
    spec = {
        "dataset": "faq",
        "sources": [{"path": "in/"}],
        "record": {"kind": "instruction", "prompt": "{{ question }}", "completion": "answer"},
    }
    recipe = write_recipe(tmp_path, spec)
    checked = curation("check", str(recipe), cwd=tmp_path)
    said = checked.stdout + checked.stderr
    assert checked.returncode == 2 and "Traceback" not in said, said
    problems = [line for line in checked.stderr.splitlines() if line.startswith("input error ")]
    assert len(problems) == len(said_of), problems
    for problem, (name, message) in zip(problems, sorted(said_of.items()), strict=True):
        assert problem.startswith(f"input error {tmp_path / 'in' / name}") and message in problem, (name, problem)
    # The header that is not UTF-8, as the run warns of it.
    assert "f-latin1.csv:1: the header is not UTF-8: byte 0xe9 at column 11" in " ".join(checked.stderr.split())
    assert not (tmp_path / "output").exists() and not (tmp_path / "state.db").exists()  # nothing run
    # The run says the same of the first such file it reads.
    (tmp_path / "in" / "a-good.jsonl").rename(tmp_path / "in" / "z-good.jsonl")
    ran = curation("run", str(recipe), "--quiet", cwd=tmp_path)
    assert ran.returncode == 1 and said_of["b-twice.csv"] in " ".join(ran.stderr.split())
    assert not (tmp_path / "output" / "faq" / "v1").exists()


def test_check_reads_the_heads_of_the_first_files_and_says_how_many_it_did_not_open(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for n in range(3):
        write_jsonl(tmp_path / "in" / f"part-{n}.jsonl", [{"text": f"note {n}"}, "{broken"])
    (tmp_path / "in" / "part-3.jsonl").write_text("[]")  # past the files opened: not looked at
    recipe = write_recipe(tmp_path, {"dataset": "docs", "sources": [{"path": "in/"}], "record": {"kind": "document"}})
    checked = curation("check", str(recipe), "--head-files", "3", cwd=tmp_path)
    said = " ".join(checked.stdout.split())
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"read the head (1,024 KiB) of the first 3 file(s) of {tmp_path / 'in'}; 1 not opened (--head-files)" in said
    none = curation("check", str(recipe), "--head-files", "0", cwd=tmp_path)
    # Not "read the head ... of the first 0 file(s)".
    assert f"opened none of the 4 file(s) of {tmp_path / 'in'} (--head-files 0)" in " ".join(none.stdout.split())
    # A bad line is the run's to quarantine: noted, not a failure of the check.
    assert (
        f"1 of the first records of {tmp_path / 'in' / 'part-0.jsonl'} would be set aside, for example "
        f"{tmp_path / 'in' / 'part-0.jsonl'}:2: malformed JSON" in said
    )
    refused = curation("check", str(recipe), "--head-files", "4", cwd=tmp_path)
    assert refused.returncode == 2 and "part-3.jsonl: holds a JSON array" in refused.stderr


def test_check_notes_a_set_aside_record_redacted_as_the_run_publishes_it(tmp_path: Path) -> None:
    # A reader's message can quote what it read (a key named twice): with a PII stage, check said it in clear.
    (tmp_path / "in.jsonl").write_text(
        '{"text": "hello", "dana.whitfield@example.org": 1, "dana.whitfield@example.org": 2}\n{"text": "ok"}\n'
    )
    spec = {"dataset": "docs", "sources": [{"path": "in.jsonl"}], "record": {"kind": "document"}}
    recipe = write_recipe(tmp_path, {**spec, "stages": [{"type": "pii", "fields": ["text"]}]})
    checked = curation("check", str(recipe), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    said = " ".join(checked.stdout.split())
    assert "dana.whitfield" not in checked.stdout + checked.stderr
    assert 'the key "<EMAIL_ADDRESS>" appears twice in one object' in said
    # A second PII stage redacts it as the run's set_aside/ does: check said it with the first stage's alone.
    stages = [{"type": "pii", "fields": ["text"], "entities": ["PERSON"]}, {"type": "pii", "fields": ["text"]}]
    checked = curation("check", str(write_recipe(tmp_path, {**spec, "stages": stages})), cwd=tmp_path)
    assert "dana.whitfield" not in checked.stdout + checked.stderr, checked.stdout


def test_check_reads_only_the_head_of_a_large_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from connectors.files import HEAD_BYTES, FilesSourceReader
    from schemas.config import FilesSource

    line = json.dumps({"text": "x" * 100}) + "\n"
    (tmp_path / "big.jsonl").write_text(line * (4 * HEAD_BYTES // len(line)) + "{broken\n")
    reader = FilesSourceReader(FilesSource(path=str(tmp_path / "big.jsonl")), batch_rows=50_000)
    head = reader.head(reader.entries()[0])
    assert 0 < head.input_bytes <= HEAD_BYTES and head.set_aside.num_rows == 0  # the broken last line: not read
    # The reader reads as before once the head is taken: the whole file, to the broken last line.
    assert sum(batch.set_aside.num_rows for batch in reader.batches()) == 1
    # A JSON array on one line (a minified export) is refused from its first bytes: it was gathered
    # whole as one long line first (the run held the whole file; check took 33 s on 200 MB).
    import connectors.files as files
    from connectors.storage import StorageError

    rows = [{"q": f"Question {n}?", "a": "Yes."} for n in range(4 * HEAD_BYTES // 30)]
    (tmp_path / "export.json").write_text(json.dumps(rows))
    taken = []
    read = files._LineFeeds.read
    monkeypatch.setattr(files._LineFeeds, "read", lambda self, size=-1: taken.append(read(self, size)) or taken[-1])
    reader = FilesSourceReader(FilesSource(path=str(tmp_path / "export.json")), batch_rows=50_000)
    with pytest.raises(StorageError, match=r"export\.json: holds a JSON array"):
        reader.head(reader.entries()[0])
    assert sum(map(len, taken)) <= HEAD_BYTES
    monkeypatch.undo()
    # A CSV record longer than the head is read as the run reads it, not refused as "straddling".
    (tmp_path / "long.csv").write_text("q,a\n" + "x" * (2 * HEAD_BYTES) + ",y\nb,c\n")
    reader = FilesSourceReader(FilesSource(path=str(tmp_path / "long.csv")), batch_rows=50_000)
    assert reader.head(reader.entries()[0]).rows.num_rows == 2


# A malformed line beside them is set aside before the template; a null (line 1) fails it as the data's fault.
_NULL_ROW = '{"description": null, "category": "Dining"}\n'
_ROWS = '{"description": "coffee", "category": "Dining"}\n{"description": "taxi", "category": "Travel"}\n'


@pytest.mark.parametrize(
    ("name", "text", "shaped", "aside"),
    [
        ("tx.csv", "description,category\ncoffee,Dining\ntea,Dining,extra\ntaxi,Travel\n", 2, "malformed_csv"),
        ("tx.jsonl", _NULL_ROW + _ROWS, 3, "template"),
    ],
)
def test_a_template_failing_on_every_record_fails_the_run_and_the_fixed_recipe_reads_the_input(
    tmp_path: Path, name: str, text: str, shaped: int, aside: str
) -> None:
    # A TypeError on every row: check said ok, its example a malformed line beside it; the run published an empty
    # v1, after which the fixed recipe found nothing new. As for a misspelt column, the run fails and takes nothing.
    # A null row among them hid it so too, as the data's fault.
    (tmp_path / name).write_text(text)
    spec = {
        "dataset": "tx",
        "sources": [{"path": name}],
        "record": {"kind": "instruction", "prompt": "{{ description.upper(1) }}", "completion": "category"},
    }
    recipe = write_recipe(tmp_path, spec)
    failure = f"{tmp_path / name}:2: prompt: template failed: str.upper() takes no arguments (1 given)"
    checked = curation("check", str(recipe), cwd=tmp_path)
    said = " ".join((checked.stdout + checked.stderr).split())
    assert checked.returncode == 2 and f"input error {failure}; so on all {shaped} record(s) of the head" in said, said
    refused = curation("run", str(recipe), "--quiet", cwd=tmp_path)
    said = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode == 2 and "Traceback" not in said, said
    assert "recipe error, nothing published" in said and "record.prompt ('{{ description.upper(1) }}')" in said
    assert f"failed on every record it was given ({shaped}), for example {failure}; fix the template" in said
    assert not (tmp_path / "output" / "tx" / "v1").exists()
    write_recipe(tmp_path, {**spec, "record": {**spec["record"], "prompt": "{{ description.upper() }}"}})
    ran = curation("run", str(recipe), "--quiet", cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    counts = json.loads((tmp_path / "output" / "tx" / "v1" / "manifest.json").read_text())["counts"]
    assert (counts["written"], counts["reasons"]) == (2, {"quarantined": {aside: 1}})


def test_a_template_failing_on_every_record_quotes_its_example_as_set_aside_rows_are_published(tmp_path: Path) -> None:
    # The template's message quotes the row's value; with a PII stage, check redacted it, while the run's recipe
    # error quoted it in clear (a name and an e-mail on stderr, in a scheduler's log).
    text = "Write to Maria Garcia at maria.garcia@example.com"
    write_jsonl(tmp_path / "qa.jsonl", [{"q": None, "a": "A"}, {"q": text, "a": "B"}])
    spec = {
        "dataset": "qa",
        "sources": [{"path": "qa.jsonl"}],
        "record": {"kind": "instruction", "prompt": "{{ {'x': 1}[q] }}", "completion": "a"},
        "stages": [{"type": "pii"}],
    }
    recipe = write_recipe(tmp_path, spec)
    quoted = f"{tmp_path / 'qa.jsonl'}:2: prompt: template failed: 'dict object' has no attribute 'Write to <PERSON> at <EMAIL_ADDRESS>'"
    for command in ("check", "run"):
        refused = curation(command, str(recipe), cwd=tmp_path)
        said = " ".join((refused.stdout + refused.stderr).split())
        assert refused.returncode == 2 and quoted in said, said
        assert "Garcia" not in said and "maria.garcia@" not in said, said


def _v1_split_on_a_colon(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    """A recipe whose template splits on a colon, and v1 that it made from ``qa/``."""
    write_jsonl(tmp_path / "qa" / "a.jsonl", [{"q": f"Q:{n}", "a": "A"} for n in range(5)])
    spec = {
        "dataset": "qa",
        "sources": [{"path": "qa"}],
        "record": {"kind": "instruction", "prompt": "{{ q.split(':')[1] }}", "completion": "a"},
    }
    recipe = write_recipe(tmp_path, spec)
    assert curation("run", str(recipe), "--quiet", cwd=tmp_path).returncode == 0
    return spec, recipe


def test_check_says_a_template_failing_on_every_head_row_as_the_run_does(tmp_path: Path) -> None:
    # v1 was made by this template: a new file whose rows all lack the colon it splits on is the rows' fault, and
    # the run quarantines them. Check called it an input error (exit 2), so `check && run` never ran again.
    spec, recipe = _v1_split_on_a_colon(tmp_path)
    path = write_jsonl(tmp_path / "qa" / "b.jsonl", [{"q": "no colon", "a": "B"}])
    failure = f"{path}:1: prompt: template failed: list object has no element 1; so on all 1 record(s) of the head"
    write_recipe(tmp_path, {**spec, "batch_rows": 1_000})  # another setting changed: not the templates
    checked = curation("check", str(recipe), cwd=tmp_path)
    said = " ".join((checked.stdout + checked.stderr).split())
    assert checked.returncode == 0 and f"ok {recipe}: dataset qa" in said and "input error" not in said, said
    assert f"{failure}; v1 was made with these templates: a run quarantines them as the rows' fault" in said
    ran = curation("run", str(recipe), "--quiet", cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    counts = json.loads((tmp_path / "output" / "qa" / "v2" / "manifest.json").read_text())["counts"]
    assert (counts["input"], counts["quarantined"]) == (1, 1)
    # Changed templates are on trial again: check and run both call it the recipe's error.
    write_recipe(tmp_path, {**spec, "record": {**spec["record"], "prompt": "{{ q.split(':')[2] }}"}})
    checked = curation("check", str(recipe), cwd=tmp_path)
    said = " ".join((checked.stdout + checked.stderr).split())
    assert checked.returncode == 2 and "input error" in said, said
    assert "no element 2; so on all 1 record(s) of the head: fix the template" in said, said
    write_jsonl(tmp_path / "qa" / "c.jsonl", [{"q": "Q:1", "a": "C"}])
    refused = curation("run", str(recipe), "--quiet", cwd=tmp_path)
    said = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode == 2 and "failed on every record it was given (1)" in said, said


def test_check_puts_templates_on_trial_where_no_source_was_read_before_as_the_run_does(tmp_path: Path) -> None:
    # A changed source path is read from scratch: the version it makes extends nothing, so its templates are on
    # trial. Check judged the head against the latest version all the same: ok, where the run then failed.
    spec, recipe = _v1_split_on_a_colon(tmp_path)
    write_jsonl(tmp_path / "qa2" / "b.jsonl", [{"q": "no colon", "a": "B"}])
    write_recipe(tmp_path, {**spec, "sources": [{"path": "qa2"}]})
    checked = curation("check", str(recipe), cwd=tmp_path)
    said = " ".join((checked.stdout + checked.stderr).split())
    assert checked.returncode == 2 and "so on all 1 record(s) of the head: fix the template" in said, said
    assert "v1 was made with these templates" not in said, said
    refused = curation("run", str(recipe), "--quiet", cwd=tmp_path)
    said = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode == 2 and "failed on every record it was given (1)" in said, said


@pytest.mark.parametrize("prompt", ["questoin", "Q: {{ questoin }}"])  # a column name, a template
def test_a_column_no_record_has_fails_the_run_and_the_fixed_recipe_reads_the_input(tmp_path: Path, prompt: str) -> None:
    write_jsonl(tmp_path / "faq.jsonl", [{"question": f"Q{n}?", "answer": f"A{n}."} for n in range(3)])
    spec = {
        "dataset": "faq",
        "sources": [{"path": "faq.jsonl"}],
        "record": {"kind": "instruction", "prompt": prompt, "completion": "answer"},
    }
    recipe = write_recipe(tmp_path, spec)
    refused = curation("run", str(recipe), "--quiet", cwd=tmp_path)
    said = " ".join((refused.stdout + refused.stderr).split())  # as one line, however the console wrapped it
    assert refused.returncode == 2 and "Traceback" not in said
    assert "nothing published" in said and "faq.jsonl:1: prompt: column 'questoin' is missing" in said
    assert not (tmp_path / "output" / "faq" / "v1").exists()
    # Fixed: the input was not taken as read, so this run reads it.
    write_recipe(tmp_path, {**spec, "record": {**spec["record"], "prompt": "question"}})
    ran = curation("run", str(recipe), "--quiet", cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert json.loads((tmp_path / "output" / "faq" / "v1" / "manifest.json").read_text())["counts"]["written"] == 3
    # A later change to the recipe reads nothing again, and says so.
    write_recipe(tmp_path, {**spec, "record": {**spec["record"], "prompt": "Q: {{ question }}"}})
    again = curation("run", str(recipe), "--quiet", cwd=tmp_path)
    said = " ".join((again.stdout + again.stderr).split())
    assert again.returncode == 0 and "nothing new since faq v1" in said
    assert "the recipe changed since v1" in said and "--full-refresh" in said


def test_a_stage_field_no_record_has_is_a_recipe_error_before_anything_runs(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "faq.jsonl", [{"prompt": "Q?", "completion": "A."}] * 2)
    spec = {
        "dataset": "faq",
        "sources": [{"path": "faq.jsonl"}],
        "stages": [{"type": "exact_dedup", "fields": ["promt"]}],
    }
    recipe = write_recipe(tmp_path, spec)
    for command in ("check", "run"):
        refused = curation(command, str(recipe), cwd=tmp_path)
        said = " ".join((refused.stdout + refused.stderr).split())
        assert refused.returncode == 2 and "Traceback" not in said
        assert "stages.0.fields (line 6): ['promt'] are not columns of the records" in said
        assert "instruction records have ['prompt', 'completion', 'label']" in said
    assert not (tmp_path / "output").exists()


def test_a_template_syntax_error_is_a_recipe_error_with_its_line(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "faq.jsonl", [{"question": "Q?", "answer": "A."}])
    spec = {
        "dataset": "faq",
        "sources": [{"path": "faq.jsonl"}],
        "record": {"kind": "instruction", "prompt": "{{ question }", "completion": "answer"},
    }
    recipe = write_recipe(tmp_path, spec)
    for command in ("check", "run"):
        refused = curation(command, str(recipe), cwd=tmp_path)
        said = " ".join((refused.stdout + refused.stderr).split())
        assert refused.returncode == 2 and "Traceback" not in said
        assert "record.prompt (line 6)" in said and "template syntax error" in said


@pytest.mark.parametrize(("command", "stop", "said"), [("run", "SIGTERM", "SIGTERM"), ("check", "SIGINT", "^C")])
def test_a_stop_while_the_recipe_loads_says_nothing_was_published(
    tmp_path: Path, command: str, stop: str, said: str
) -> None:
    # The handlers came with the run: SIGTERM killed a command still reading its recipe without a word,
    # and ^C left a bare exit 130. A FIFO holds the command in reading the recipe until it is stopped.
    import time

    recipe = tmp_path / "recipe.yaml"
    os.mkfifo(recipe)
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    process = subprocess.Popen(
        [sys.executable, "-m", "curation.cli", command, str(recipe)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    writer = None
    deadline = time.monotonic() + 60
    while writer is None and time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError):  # ENXIO until the command opens the recipe to read it
            writer = os.open(recipe, os.O_WRONLY | os.O_NONBLOCK)
        time.sleep(0.05)
    assert writer is not None, "the command never opened its recipe"
    try:
        time.sleep(0.2)  # in its read of the recipe, which waits on the writer
        process.send_signal(signal.Signals[stop])
        stdout, stderr = process.communicate(timeout=60)
    finally:
        os.close(writer)
    assert process.returncode == 128 + signal.Signals[stop], stdout + stderr
    assert f"stopped by {said}, nothing published" in " ".join(stderr.split())
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("command", "stop", "said"),
    [("run", "SIGTERM", "SIGTERM"), ("run", "SIGINT", "^C"), ("demo", "SIGTERM", "SIGTERM")],
)
def test_a_stop_while_the_run_loads_its_modules_says_nothing_was_published(
    tmp_path: Path, command: str, stop: str, said: str
) -> None:
    # Between the recipe's loading and the run's own handler, execute imports curation.pipeline (~0.8 s):
    # a stop there was a Stopped traceback and exit 1. The signal is sent from an import hook at that moment.
    five_notes(tmp_path)
    args = ["run", "recipe.yaml"] if command == "run" else ["demo", "--folder", "demo", "--rows", "10"]
    hooked = tmp_path / "hooked.py"
    hooked.write_text(
        "import importlib.abc, os, signal, sys\n"
        "class Hook(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'curation.pipeline':\n"
        "            sys.meta_path.remove(self)\n"
        f"            os.kill(os.getpid(), signal.{stop})\n"
        "import curation.cli\n"
        "sys.meta_path.insert(0, Hook())\n"
        f"sys.argv = ['curation', *{args!r}]\n"
        "curation.cli.app()\n"
    )
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, str(hooked)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 128 + signal.Signals[stop], done.stdout + done.stderr
    assert f"stopped by {said}, nothing published" in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.glob("**/manifest.json"))


def console_script(folder: Path, args: list[str], stop: str, at: tuple[str, ...]) -> subprocess.CompletedProcess:
    """``curation ARGS`` started as its console script is (pyproject's entry point), in ``folder``, sent the
    signal ``stop`` from an import hook as the first of the modules ``at`` is imported."""
    import tomllib

    root = Path(__file__).parents[1]
    entry = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]["curation"]
    module, function = entry.split(":")
    script = folder / "console_script.py"
    script.write_text(
        "import importlib.abc, os, signal, sys\n"
        "class Hook(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        f"        if name in {at!r}:\n"
        "            sys.meta_path.remove(self)\n"
        f"            os.kill(os.getpid(), signal.{stop})\n"
        "sys.meta_path.insert(0, Hook())\n"
        f"sys.argv = ['curation', *{args!r}]\n"
        f"from {module} import {function}\n"  # as the console script does, then calls it
        f"sys.exit({function}())\n"
    )
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(root)}
    return subprocess.run(
        [sys.executable, str(script)], cwd=folder, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(("stop", "said"), [("SIGTERM", "SIGTERM"), ("SIGINT", "^C")])
def test_a_stop_while_the_command_imports_its_libraries_says_nothing_was_published(
    tmp_path: Path, stop: str, said: str
) -> None:
    # The handler came with curation.cli, after its imports (~1.2 s): a SIGTERM before them was an exit 143
    # without a word. The signal is sent as the first third-party library the command needs is imported.
    five_notes(tmp_path)
    done = console_script(tmp_path, ["run", "recipe.yaml"], stop, ("typer", "rich", "pydantic", "sqlalchemy", "yaml"))
    assert done.returncode == 128 + signal.Signals[stop], done.stdout + done.stderr
    assert f"stopped by {said}, nothing published" in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "output").exists()


def test_a_command_that_publishes_nothing_is_stopped_by_ctrl_c_as_typer_stops_it(tmp_path: Path) -> None:
    # The entry point took the stop signals for every command: `train wait` stopped by ^C said "stopped by ^C,
    # nothing published" while the training job went on. Typer's own ending is kept: exit 130, no word.
    # ^C is sent in the command, as it starts following the job.
    done = console_script(tmp_path, ["train", "wait", "job-1"], "SIGINT", ("train.sagemaker",))
    assert done.returncode == 128 + signal.SIGINT, done.stdout + done.stderr
    assert "published" not in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize(("stop", "said"), [("SIGTERM", "SIGTERM"), ("SIGINT", "^C")])
def test_sigterm_stops_a_run_and_leaves_nothing_behind(tmp_path: Path, stop: str, said: str) -> None:
    import signal
    import time

    from bench.pii_corpus import generate

    docs = generate(400, seed=3)
    write_jsonl(tmp_path / "in.jsonl", [{"message": d.text, "reply": "Noted."} for d in docs] * 5)
    recipe = write_recipe(
        tmp_path,
        {
            "dataset": "support",
            "sources": [{"path": "in.jsonl"}],
            "record": {"kind": "instruction", "prompt": "message", "completion": "reply"},
            "stages": [{"type": "pii", "workers": 2, "batch_size": 8}],
            "batch_rows": 2000,
        },
    )
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    run = subprocess.Popen(
        [sys.executable, "-m", "curation.cli", "run", str(recipe), "--quiet"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a job in a terminal
    )
    workers: list[int] = []
    deadline = time.monotonic() + 90
    while not workers and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.2)
        children = Path(f"/proc/{run.pid}/task/{run.pid}/children")
        workers = [int(pid) for pid in children.read_text().split()] if children.exists() else []
    assert workers, "the PII stage's worker pool never started"
    if stop == "SIGINT":
        os.killpg(run.pid, signal.SIGINT)  # a terminal's ^C reaches every process of the job, workers too
    else:
        run.send_signal(signal.SIGTERM)  # a scheduler stops the process it started
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 128 + signal.Signals[stop], stdout + stderr
    assert f"stopped by {said}, nothing published" in " ".join((stdout + stderr).split())
    assert "Traceback" not in stderr
    time.sleep(1)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)]
    assert alive == []
    staging = tmp_path / "output" / "support" / "_staging"
    assert not staging.exists() or list(staging.iterdir()) == []
    assert not (tmp_path / "output" / "support" / "v1").exists()


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT"])
def test_sigterm_once_the_version_is_visible_is_held_until_the_run_has_recorded_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: str
) -> None:
    import signal

    from connectors.state import Watermarks
    from curation.pipeline import Stopped, run_recipe
    from curation.stopping import on_stop_signal as _stop

    recipe = five_notes(tmp_path)
    commit = Watermarks.commit

    def stopped_meanwhile(self: Watermarks, run_id: str, *args: Any) -> None:
        os.kill(os.getpid(), signal.Signals[stop])  # as cron, Kubernetes or ^C would, right after the version appeared
        commit(self, run_id, *args)

    before = signal.signal(signal.Signals[stop], _stop)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(Watermarks, "commit", stopped_meanwhile)
            with pytest.raises(Stopped) as stopped:
                run_recipe(recipe)
    finally:
        signal.signal(signal.Signals[stop], before)
    assert stopped.value.published is not None and stopped.value.published.manifest.version == 1
    # Recorded as published: the next run finds nothing new, instead of publishing the five again.
    again = run_recipe(recipe)
    assert again.manifest is None and "nothing new since docs v1" in again.message


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "gone"


def test_usage_mistakes_are_usage_errors(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "docs.jsonl", [{"text": "hello"}])
    recipe = write_recipe(
        tmp_path, {"dataset": "docs", "sources": [{"path": "docs.jsonl"}], "record": {"kind": "document"}}
    )
    for args in (("--address", "auto"), ("--log-level", "loud")):
        refused = curation("run", str(recipe), *args, cwd=tmp_path)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert not (tmp_path / "output").exists()
    (tmp_path / "a-folder").mkdir()  # not a database file: SQLite cannot open it
    for state, said in (
        ("mysql://x/y", "SQLite or PostgreSQL, not mysql"),
        (f"sqlite:///{tmp_path / 'a-folder'}", "state store error"),
    ):
        bad = write_recipe(
            tmp_path,
            {"dataset": "docs", "sources": [{"path": "docs.jsonl"}], "record": {"kind": "document"}, "state": state},
            name="bad.yaml",
        )
        refused = curation("run", str(bad), cwd=tmp_path)
        text = " ".join((refused.stdout + refused.stderr).split())
        assert refused.returncode in (1, 2) and said in text and "Traceback" not in text, text


def test_check_creates_no_state_store_where_it_reads_which_version_a_run_would_extend(tmp_path: Path) -> None:
    # A template failing on the head had check open the state store for the watermarks: a store not made yet
    # was created there (its folder, its SQLite file and tables) by a command that is to change nothing.
    spec, recipe = _v1_split_on_a_colon(tmp_path)
    write_jsonl(tmp_path / "qa" / "b.jsonl", [{"q": "no colon", "a": "B"}])
    folder = tmp_path / "moved"
    state = folder / "state.db"
    write_recipe(tmp_path, {**spec, "state": f"sqlite:///{state}"})
    for lacking in ("folder", "file", "tables"):
        if lacking == "file":
            folder.mkdir()
        if lacking == "tables":
            state.touch()
        checked = curation("check", str(recipe), cwd=tmp_path)
        said = " ".join((checked.stdout + checked.stderr).split())
        # No store: no source was read before, so the version a run makes extends nothing and the templates are on
        # trial, as the run judges them.
        assert checked.returncode == 2 and "so on all 1 record(s) of the head: fix the template" in said, said
        assert folder.exists() == (lacking != "folder"), lacking
        left = [(path.name, path.stat().st_size) for path in folder.glob("*")]
        assert left == ([("state.db", 0)] if lacking == "tables" else []), lacking


def test_a_sqlite_state_file_that_cannot_be_created_is_a_state_store_error_in_check_and_run(tmp_path: Path) -> None:
    # `check` said ok, and the run failed with "[Errno 2] No such file or directory: '/proc/nope'", naming no store.
    write_jsonl(tmp_path / "docs.jsonl", [{"text": "hello"}])
    (tmp_path / "a-file").write_text("")
    for state, why in (
        ("sqlite:////proc/nope/state.db", "cannot create the folder /proc/nope for the SQLite file"),
        (
            f"sqlite:///{tmp_path}/a-file/store/state.db",
            f"cannot create the folder {tmp_path}/a-file/store for the SQLite file: {tmp_path}/a-file is a file",
        ),
    ):
        spec = {"dataset": "docs", "sources": [{"path": "docs.jsonl"}], "record": {"kind": "document"}}
        recipe = write_recipe(tmp_path, {**spec, "state": state})
        for command, said in (("check", "state store error"), ("run", "state store error, nothing published:")):
            refused = curation(command, str(recipe), cwd=tmp_path)
            text = " ".join((refused.stdout + refused.stderr).split())
            assert refused.returncode == 1 and f"{said} {state}: {why}" in text and "Traceback" not in text, text
    assert not (tmp_path / "output").exists()


def test_an_input_two_sources_match_is_a_recipe_error(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in" / "x.jsonl", [{"text": "Parcel 1 left the depot."}])
    spec = {"dataset": "docs", "sources": [{"path": "in"}, {"path": "in/*.jsonl"}], "record": {"kind": "document"}}
    recipe = write_recipe(tmp_path, spec)
    for args in (("check", str(recipe)), ("run", str(recipe), "--quiet")):
        refused = curation(*args, cwd=tmp_path)
        said = " ".join((refused.stdout + refused.stderr).split())
        assert refused.returncode == 2 and "Traceback" not in said, said
        assert "x.jsonl: matched by sources.0 and sources.1" in said
    assert not (tmp_path / "output").exists()
    # A source added to a recipe that ran: the file it matches is not new to the first source, and
    # still belongs to it.
    write_recipe(tmp_path, {**spec, "sources": spec["sources"][:1]})
    assert curation("run", str(recipe), "--quiet", cwd=tmp_path).returncode == 0
    write_recipe(tmp_path, spec)
    refused = curation("run", str(recipe), "--quiet", cwd=tmp_path)
    assert refused.returncode == 2 and "x.jsonl: matched by sources.0 and sources.1" in refused.stderr


def test_a_sigterm_whose_exception_python_swallowed_still_stops_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import curation.pipeline as pipeline
    import curation.stopping as stopping
    from curation.stages.shape import Shape

    write_jsonl(tmp_path / "faq.jsonl", [{"question": f"Q{n}?", "answer": f"A{n}."} for n in range(3)])
    spec = {
        "dataset": "faq",
        "sources": [{"path": "faq.jsonl"}],
        "record": {"kind": "instruction", "prompt": "question", "completion": "answer"},
    }
    shape = Shape.__call__

    def signalled_meanwhile(self: Shape, batch: Any) -> Any:
        # What the CLI's handler leaves when its Stopped is raised where Python ignores exceptions
        # (an at-fork hook, as the PII stage's pool forks): the signal noted, the run going on.
        monkeypatch.setattr(stopping, "stop_signals", [signal.SIGTERM])
        return shape(self, batch)

    monkeypatch.setattr(Shape, "__call__", signalled_meanwhile)
    with pytest.raises(pipeline.Stopped):
        run_recipe(load_recipe(write_recipe(tmp_path, spec)))
    assert not (tmp_path / "output" / "faq" / "v1").exists()


def test_messages_show_brackets_in_paths_and_errors_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The terminal's markup does not eat a ``[word]`` of a message (a folder name, an install hint), nor
    fail on a ``[/word]``: the message names the file as it is."""
    from typer.testing import CliRunner

    from curation.cli import app
    from curation.executors import ray_executor

    runner = CliRunner()
    for folder in ("[raw]", "[/raw]"):
        recipe = {
            "dataset": "brackets",
            "sources": [{"path": f"{folder}/missing.jsonl"}],
            "record": {"kind": "instruction", "prompt": "{{ q }}", "completion": "a"},
            "output": {"dest": str(tmp_path / "out")},
        }
        result = runner.invoke(app, ["run", str(write_recipe(tmp_path, recipe)), "--quiet"])
        assert result.exit_code == 1, result.output
        assert f"{tmp_path}/{folder}/missing.jsonl: no input files match" in result.output

    def no_ray() -> None:
        raise ray_executor.RayUnavailable(
            "engine 'ray' needs Ray Data: install the ray extra (pip install 'curation[ray]')"
        )

    monkeypatch.setattr(ray_executor, "_ray", no_ray)
    write_jsonl(tmp_path / "in.jsonl", [{"q": "question", "a": "answer"}])
    recipe = {**recipe, "sources": [{"path": "in.jsonl"}], "engine": "ray"}
    result = runner.invoke(app, ["run", str(write_recipe(tmp_path, recipe)), "--quiet"])
    assert "pip install 'curation[ray]'" in result.output


@pytest.mark.parametrize(("stop", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_stop_while_the_summary_is_printed_says_the_run_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stop: str, code: int
) -> None:
    import curation.stopping as stopping
    from curation import cli

    monkeypatch.setattr(stopping, "stop_signals", [])  # what the handler notes stays in this test
    recipe = five_notes(tmp_path)
    printing = cli.out.print

    def stopped_meanwhile(*args: Any, **kwargs: Any) -> None:
        if str(args[0]).startswith("published"):  # the run has returned: its version is visible and recorded
            os.kill(os.getpid(), signal.Signals[stop])
        printing(*args, **kwargs)

    monkeypatch.setattr(cli.out, "print", stopped_meanwhile)
    with stop_handlers_kept():
        assert cli.execute(recipe, quiet=True) == code  # not a traceback and exit 1
    said = "^C" if stop == "SIGINT" else stop
    assert f"stopped by {said} after publishing" in " ".join(capsys.readouterr().err.split())
    assert run_recipe(recipe).manifest is None  # recorded: the next run finds nothing new


@pytest.mark.parametrize("where", ["staging removed", "lock given back"])
def test_a_stop_once_the_run_has_recorded_its_version_says_it_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    import contextlib

    import curation.pipeline as pipeline
    import curation.stopping as stopping
    from curation.stopping import Stopped, on_stop_signal
    from curation.writer import DatasetWriter

    monkeypatch.setattr(stopping, "stop_signals", [])  # what the handler notes stays in this test
    recipe = five_notes(tmp_path)
    if where == "staging removed":
        clean_up = DatasetWriter.clean_up

        def stopped_meanwhile(self: DatasetWriter) -> None:
            os.kill(os.getpid(), signal.SIGTERM)
            clean_up(self)

        monkeypatch.setattr(DatasetWriter, "clean_up", stopped_meanwhile)
    else:
        lock = pipeline.run_lock

        @contextlib.contextmanager
        def stopped_as_it_is_given_back(*args: Any) -> Any:
            with lock(*args) as held:
                yield held
            os.kill(os.getpid(), signal.SIGTERM)

        monkeypatch.setattr(pipeline, "run_lock", stopped_as_it_is_given_back)
    before = signal.signal(signal.SIGTERM, on_stop_signal)
    try:
        with pytest.raises(Stopped) as stopped:
            run_recipe(recipe)
    finally:
        signal.signal(signal.SIGTERM, before)
    # Not "nothing published": v1 is visible and recorded (the next run finds nothing new).
    assert stopped.value.published is not None and stopped.value.published.manifest.version == 1
    monkeypatch.undo()
    assert run_recipe(recipe).manifest is None
    assert not list((tmp_path / "output" / "docs" / "_staging").glob("*"))


def test_a_stop_as_the_progress_bar_closes_after_the_run_says_it_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import curation.stopping as stopping
    from curation import cli

    monkeypatch.setattr(stopping, "stop_signals", [])  # what the handler notes stays in this test
    recipe = five_notes(tmp_path)
    close = cli.Progress.__exit__

    def stopped_meanwhile(self: Any, *args: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        return close(self, *args)

    monkeypatch.setattr(cli.Progress, "__exit__", stopped_meanwhile)
    with stop_handlers_kept():
        assert cli.execute(recipe, quiet=True) == 143
    assert "stopped by SIGTERM after publishing" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("engine", ["[/x]", "[bold]ray"])
def test_a_refused_engine_is_named_as_typed_even_with_brackets(tmp_path: Path, engine: str) -> None:
    # Put into rich markup as it was, "[/x]" was a MarkupError traceback and "[bold]ray" read "not 'ray'".
    five_notes(tmp_path)
    done = curation("run", "recipe.yaml", "--quiet", "--engine", engine, cwd=tmp_path)
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and "Traceback" not in said, said
    assert f"--engine must be local or ray, not '{engine}'" in said


def test_engine_ray_without_ray_installed_is_a_recipe_error(tmp_path: Path) -> None:
    """``engine: ray`` (or ``--engine ray``) where Ray is not installed: ``check`` said ok and ``run`` failed
    with exit 1 once started. Both are exit 2, naming the setting and the install command."""
    (tmp_path / "hide").mkdir()
    (tmp_path / "hide" / "sitecustomize.py").write_text("import sys\nsys.modules['ray'] = None\n")  # import ray fails
    write_jsonl(tmp_path / "in.jsonl", [{"q": "question", "a": "answer"}])
    recipe = {
        "dataset": "noray",
        "sources": [{"path": "in.jsonl"}],
        "record": {"kind": "instruction", "prompt": "{{ q }}", "completion": "a"},
        "output": {"dest": str(tmp_path / "out")},
        "state": f"sqlite:///{tmp_path}/state.db",
    }
    on_ray = write_recipe(tmp_path, {**recipe, "engine": "ray"}, name="ray.yaml")
    local = write_recipe(tmp_path, recipe, name="local.yaml")
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    env["PYTHONPATH"] = f"{tmp_path / 'hide'}{os.pathsep}{Path(__file__).parents[1]}"
    for args, setting in (
        (["check", str(on_ray)], "engine (line"),
        (["run", str(on_ray), "--quiet"], "engine (line"),
        (["run", str(local), "--quiet", "--engine", "ray"], "--engine ray"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "curation.cli", *args], env=env, capture_output=True, text=True, timeout=120
        )
        shown = " ".join((done.stdout + done.stderr).split())
        assert done.returncode == 2, shown
        assert setting in shown and "pip install 'curation[ray]'" in shown and "Traceback" not in shown
    # Ray without Ray Data (its data extra): found, so the check passes, but the run is a recipe error too.
    (tmp_path / "hide" / "sitecustomize.py").write_text("import sys\nsys.modules['ray.data'] = None\n")
    done = subprocess.run(
        [sys.executable, "-m", "curation.cli", "run", str(on_ray), "--quiet"], env=env, capture_output=True, text=True
    )
    shown = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2 and "engine 'ray' needs Ray Data" in shown and "curation[ray]" in shown, shown
    assert not (tmp_path / "out" / "noray" / "v1").exists()


def test_check_says_in_one_line_that_ray_is_installed_without_ray_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pip install ray`` leaves out Ray Data's packages (its ``data`` extra: pandas and the rest): Ray was
    found, so ``check`` said ok and the run failed once started. ``check`` names what is missing, in one
    line (here an installed Ray's metadata, whose data extra needs a package that is not installed)."""
    from typer.testing import CliRunner

    from curation.cli import app

    pytest.importorskip("ray")
    info = tmp_path / "site" / "ray-2.60.0.dist-info"
    info.mkdir(parents=True)
    info.joinpath("METADATA").write_text(
        "Metadata-Version: 2.1\nName: ray\nVersion: 2.60.0\n"
        "Requires-Dist: curation-absent-base\n"  # Ray's own requirement: not the data extra's
        'Requires-Dist: numpy>=1.20; extra == "data"\n'
        'Requires-Dist: curation-absent-pandas>=2.2.3; extra == "data"\n'
        'Requires-Dist: curation-absent-client; extra == "client"\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))  # found before the installed Ray's metadata
    write_jsonl(tmp_path / "in.jsonl", [{"q": "question", "a": "answer"}])
    recipe = {
        "dataset": "nodata",
        "sources": [{"path": str(tmp_path / "in.jsonl")}],
        "record": {"kind": "instruction", "prompt": "{{ q }}", "completion": "a"},
        "output": {"dest": str(tmp_path / "out")},
        "state": f"sqlite:///{tmp_path}/state.db",
        "engine": "ray",
    }
    result = CliRunner().invoke(app, ["check", str(write_recipe(tmp_path, recipe))], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.output.splitlines() if "engine (line" in line]  # a recipe error, its setting
    assert (
        "engine 'ray' needs Ray Data: Ray 2.60.0 is installed without it (curation-absent-pandas not installed)" in line
    )
    assert "pip install 'curation[ray]'" in line


def test_run_quiet_on_ray_prints_only_the_summary(tmp_path: Path) -> None:
    """``--quiet`` on Ray printed Ray's notes (token authentication, "Progress bars disabled...") and its
    workers' output (the raylet's disk warnings) around the summary: quiet is quiet on Ray too."""
    pytest.importorskip("ray")
    write_jsonl(tmp_path / "in.jsonl", [{"q": f"question {n % 3}", "a": "answer"} for n in range(6)])
    spec = {
        "dataset": "hush",
        "sources": [{"path": "in.jsonl"}],
        "record": {"kind": "instruction", "prompt": "{{ q }}", "completion": "a"},
        # All to train: the 3 records left once duplicates are set aside could all go to validation (their
        # ids hang on the temporary folder's name), and the warning that train holds none is on stderr.
        "output": {"dest": "out", "validation_fraction": 0},
        "state": "sqlite:///state.db",
    }
    write_recipe(tmp_path, spec)
    done = fresh_curation("run", "recipe.yaml", "--engine", "ray", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    assert "published" in done.stdout and "Ray" not in done.stdout and "WARNING" not in done.stdout


def test_check_reads_the_head_of_an_images_sidecar_for_the_columns_the_recipe_names(tmp_path: Path) -> None:
    # `check` did not open a sidecar: it said "ok" of a misspelt image_column or question_column, and
    # the run failed with exit code 2.
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "a.png")
    (tmp_path / "qa.csv").write_text("picture,q,answer\na.png,What colour?,Black\n")
    source = {"type": "images", "path": "img", "sidecar": "qa.csv", "image_column": "image", "question_column": "qq"}
    recipe = write_recipe(tmp_path, {"dataset": "vqa", "sources": [source], "record": {"kind": "vqa"}})
    checked = curation("check", str(recipe), cwd=tmp_path)
    said = " ".join(checked.stderr.split())
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert f"input error {tmp_path / 'qa.csv'}:2: column 'image' (image_column) is missing; column 'qq'" in said
    assert not (tmp_path / "output").exists()
    fixed = {**source, "image_column": "picture", "question_column": "q"}
    recipe = write_recipe(tmp_path, {"dataset": "vqa", "sources": [fixed], "record": {"kind": "vqa"}})
    checked = curation("check", str(recipe), cwd=tmp_path)
    assert checked.returncode == 0 and "input error" not in checked.stderr, checked.stderr
    # A record field's column the sidecar lacks (a space after each comma of the header), as the run says.
    (tmp_path / "qa.csv").write_text("image, question, answer\na.png, What colour?, Black\n")
    source = {"type": "images", "path": "img", "sidecar": "qa.csv"}
    recipe = write_recipe(tmp_path, {"dataset": "vqa", "sources": [source], "record": {"kind": "vqa"}})
    checked = curation("check", str(recipe), cwd=tmp_path)
    said = " ".join(checked.stderr.split())
    assert checked.returncode == 2 and f"{tmp_path / 'qa.csv'}:2: question: column 'question' is missing" in said


def test_check_reads_the_head_of_an_hf_source_as_the_run_reads_its_first_batch(tmp_path: Path) -> None:
    # `check` opened no data file of an hf source: it said "ok" of an Image() column read as text, of a column
    # the files lack, of image_dedup on pictures named by a path, of a damaged file, and the run failed at once.
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.test_hf import image_rows, png

    (tmp_path / "hub" / "data").mkdir(parents=True)
    file = tmp_path / "hub" / "data" / "train-00000-of-00001.parquet"
    table = image_rows([{"bytes": png(0), "path": "a.png"}, {"bytes": png(9), "path": "b.png"}])
    pq.write_table(table, file)
    spec = {"dataset": "d", "sources": [{"type": "hf", "path": "hub"}]}

    def check(record: dict[str, str], stages: list[dict[str, Any]] | None = None, *args: str) -> tuple[int, str]:
        recipe = write_recipe(tmp_path, {**spec, "record": record, "stages": stages or []})
        checked = curation("check", str(recipe), *args, cwd=tmp_path)
        assert "Traceback" not in checked.stderr, checked.stderr
        return checked.returncode, " ".join((checked.stdout + checked.stderr).split())

    code, said = check({"kind": "vqa"}, [{"type": "image_dedup"}])
    assert code == 0 and said.startswith("ok") and "input error" not in said, said
    as_text = {"kind": "vqa", "question": "{{ question }} ({{ image.path }})"}
    code, said = check(as_text)
    assert code == 2 and f"input error {file}: column 'image' is a Hugging Face Image feature, read here" in said
    code, said = check({"kind": "vqa", "answer": "answers"})
    assert code == 2 and f"input error {file}:1: answer: column 'answers' is missing" in said, said
    # Pictures named by a text column: image_dedup would compare nothing.
    paths = table.drop_columns(["image"]).append_column("image", pa.array(["a.png", "b.png"]))
    pq.write_table(paths, file)
    code, said = check({"kind": "vqa"}, [{"type": "image_dedup"}])
    assert code == 2 and f"input error {file}: image_dedup needs the images' bytes" in said, said
    file.write_bytes(b"not a parquet file")
    code, said = check({"kind": "vqa"})
    assert code == 2 and f"input error {file}: cannot read" in said, said
    pq.write_table(table, tmp_path / "hub" / "data" / "test-00000-of-00001.parquet")  # listed before train
    code, said = check({"kind": "vqa"}, None, "--head-files", "1")
    noted = f"read the first batch of the first 1 file(s) of {tmp_path / 'hub'}; 1 not opened (--head-files)"
    assert code == 0 and noted in said, said
    assert not (tmp_path / "output").exists() and not (tmp_path / "state.db").exists()  # nothing run


def test_check_refuses_image_dedup_on_a_carried_column_of_text_as_the_run_does(tmp_path: Path) -> None:
    # `group_by: team` carries `team`: image_dedup comparing it said "ok" in check, and the run failed at the stage.
    import pyarrow as pa

    from tests.test_hf import hub_parquet, image_rows, png

    table = image_rows([{"bytes": png(0), "path": "a.png"}, {"bytes": png(0), "path": "b.png"}])
    file = hub_parquet(tmp_path, table.append_column("team", pa.array(["x", "y"], pa.large_string())))
    recipe = {"dataset": "d", "sources": [{"type": "hf", "path": "hub"}], "record": {"kind": "vqa"}}
    grouped = {**recipe, "output": {"group_by": "team"}, "stages": [{"type": "image_dedup", "column": "team"}]}
    path = write_recipe(tmp_path, grouped)
    said = "image_near_dedup compares images in 'team', which holds string, not an image's bytes"
    for command in ("check", "run"):
        done = curation(command, str(path), cwd=tmp_path)
        told = " ".join(done.stderr.split())
        assert done.returncode == 2 and "Traceback" not in told and f"{path}: stages.0 (line" in told, told
        assert said in told and (command == "run" or f"(the first records of {file})" in told), told
    path = write_recipe(tmp_path, {**recipe, "output": {"group_by": "team"}, "stages": [{"type": "image_dedup"}]})
    checked = curation("check", str(path), cwd=tmp_path)
    assert checked.returncode == 0 and checked.stdout.startswith("ok"), checked.stdout + checked.stderr


def test_check_leaves_to_the_run_an_hf_file_whose_first_row_group_it_would_decode_is_too_big(tmp_path: Path) -> None:
    # The head decoded the first row group whole, every column: a 300 MB one took 675 MB for 4 rows.
    import pyarrow as pa
    import pyarrow.parquet as pq

    from connectors.hf import HEAD_ROW_GROUP_BYTES

    (tmp_path / "hub" / "data").mkdir(parents=True)
    file = tmp_path / "hub" / "data" / "train-00000-of-00001.parquet"
    rows = HEAD_ROW_GROUP_BYTES // 2**20 + 1  # a MiB each, packed small
    table = pa.table({"big": ["x" * 2**20] * rows, "q": ["Why?"] * rows})
    pq.write_table(table, file, compression="zstd", use_dictionary=False)
    spec = {"dataset": "d", "sources": [{"type": "hf", "path": "hub"}]}
    for prompt, noted in (("{{ big }}", True), ("{{ q }}", False)):  # only the columns the recipe reads count
        recipe = write_recipe(
            tmp_path, {**spec, "record": {"kind": "instruction", "prompt": prompt, "completion": "q"}}
        )
        checked = curation("check", str(recipe), cwd=tmp_path)
        said = " ".join((checked.stdout + checked.stderr).split())
        assert checked.returncode == 0 and "Traceback" not in said, said
        assert (f"{file}: head not read: its first row group holds {rows} MiB of the columns" in said) is noted, said


def test_check_reads_an_hf_parquet_files_id_column_the_recipe_names_input_id(tmp_path: Path) -> None:
    # The head kept a column only where the recipe named it as the file does: `id`, read as `input_id`, was left
    # out, so `check` said "column 'input_id' is missing" of a file the run publishes, and missed an `id` beside
    # an `input_id`, which the run refuses.
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "hub" / "data").mkdir(parents=True)
    file = tmp_path / "hub" / "data" / "train-00000-of-00001.parquet"
    spec = {"dataset": "d", "sources": [{"type": "hf", "path": "hub"}]}
    recipe = write_recipe(
        tmp_path, {**spec, "record": {"kind": "instruction", "prompt": "{{ input_id }}: {{ q }}", "completion": "q"}}
    )
    pq.write_table(pa.table({"id": ["a1", "a2"], "q": ["Why?", "How?"]}), file)
    checked = curation("check", str(recipe), cwd=tmp_path)
    said = " ".join((checked.stdout + checked.stderr).split())
    assert checked.returncode == 0 and said.startswith("ok") and "missing" not in said, said
    pq.write_table(pa.table({"id": ["a1"], "input_id": ["b1"], "q": ["Why?"]}), file)
    checked = curation("check", str(recipe), cwd=tmp_path)
    said = " ".join((checked.stdout + checked.stderr).split())
    assert checked.returncode == 2 and f"{file}: column 'id' is read as 'input_id'" in said, said


def test_a_clean_stage_after_a_second_pii_stage_is_warned_of_too() -> None:
    from curation.pipeline import stage_order_warnings
    from schemas.config import parse_recipe

    recipe = parse_recipe(
        "dataset: docs\nsources: [{path: in.jsonl}]\nrecord: {kind: document}\n"
        "stages: [{type: pii}, {type: clean}, {type: pii}, {type: clean}]\n"
    )
    said = [warning.split(":")[1] for warning in stage_order_warnings(recipe)]
    assert said == [" clean (stage 2) comes after pii (stage 1)", " clean (stage 4) comes after pii (stage 3)"]


def test_an_expectation_that_could_not_run_names_the_recipe_and_the_stages_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from curation.cli import app
    from curation.stages import expectations
    from curation.stages.base import StageError

    # No input we know of makes great-expectations raise, so its failure is given as _Suite words it.
    def could_not_run(self: object, frame: object) -> list:
        raise StageError("expectation expect_column_values_to_be_between on 'n' could not run: boom")

    monkeypatch.setattr(expectations._Suite, "failures", could_not_run)
    write_jsonl(tmp_path / "in.jsonl", [{"q": "a question", "a": "an answer", "n": 5}])
    regex = {"type": "expectations", "expect": [{"column": "prompt", "check": "matches_regex", "regex": "."}]}
    between = {"type": "expectations", "expect": [{"column": "n", "check": "between", "min": 1, "max": 10}]}
    recipe = {
        "dataset": "qa",
        "sources": [{"path": str(tmp_path / "in.jsonl")}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "input_schema": {"columns": {"q": "str", "a": "str", "n": "int"}},
        # The first runs no great-expectations (matches_regex is RE2's): the second is the one that fails.
        "stages": [regex, between],
        "output": {"group_by": "n", "dest": str(tmp_path / "out")},
    }
    path = write_recipe(tmp_path, recipe, name="qa.yaml")
    line = [n for n, text in enumerate(path.read_text().splitlines(), 1) if text == "- type: expectations"][1]
    result = CliRunner().invoke(app, ["run", str(path), "--quiet"], env={"COLUMNS": "300"})
    assert result.exit_code == 1, result.output
    said = f"nothing published: {path}: stages.1 (line {line}): expectations_2: expectation expect_column_values"
    assert said in " ".join(result.output.split())


def test_check_names_a_stage_that_cannot_go_on_as_the_run_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Scrubbing a set-aside record for its note ended `curation check` in a traceback.
    from typer.testing import CliRunner

    import curation.stages.pii as pii_module
    from curation.cli import app

    def missed(*_: object) -> None:
        raise KeyError("dana whitfield")  # a bug: the stage withholds its message

    monkeypatch.setattr(pii_module, "_found_elsewhere", missed)
    (tmp_path / "in.jsonl").write_text('{"text": "hello"}\n{broken\n')
    spec = {"dataset": "docs", "sources": [{"path": "in.jsonl"}], "record": {"kind": "document"}}
    recipe = write_recipe(tmp_path, {**spec, "stages": [{"type": "clean"}, {"type": "pii", "fields": ["text"]}]})
    line = recipe.read_text().splitlines().index("- type: pii") + 1
    result = CliRunner().invoke(app, ["check", str(recipe)], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert f"{recipe}: stages.1 (line {line}): pii: the stage failed: KeyError in missed" in said
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output and "whitfield" not in result.output


def test_check_says_in_one_line_what_a_reader_raised_of_no_kind_it_expects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only some error types were caught around the readers: any other ended `curation check` in a traceback.
    # Then its message was printed as it was, and a message can quote a row's value (a KeyError its key).
    from typer.testing import CliRunner

    from connectors.files import FilesSourceReader
    from curation.cli import app
    from curation.stages.review import ReviewDecisions

    def broken(*_: object) -> None:
        raise RuntimeError("the reader broke on dana.whitfield@example.com")

    monkeypatch.setattr(FilesSourceReader, "head", broken)
    recipe = write_recipe(
        tmp_path, {"dataset": "docs", "sources": [{"path": "in.jsonl"}], "record": {"kind": "document"}}
    )
    (tmp_path / "in.jsonl").write_text('{"text": "hello"}\n')
    result = CliRunner().invoke(app, ["check", str(recipe)], env={"COLUMNS": "300"})
    said = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    line = broken.__code__.co_firstlineno + 1
    assert f"error {tmp_path / 'in.jsonl'}: RuntimeError in broken (test_cli.py line {line}); its message" in said
    assert "whitfield" not in result.output
    assert "Traceback" not in result.output and result.output.count("\n") == 1
    debug = CliRunner().invoke(app, ["check", str(recipe), "--log-level", "debug"], env={"COLUMNS": "300"})
    assert debug.exit_code == 2 and "Traceback" in debug.output and "in broken" in debug.output  # a bug found
    assert "the reader broke on dana.whitfield@example.com" in " ".join(debug.output.split())  # asked for

    monkeypatch.setattr(ReviewDecisions, "from_state", broken)  # the state store's: exit 1, as its other errors
    result = CliRunner().invoke(app, ["check", str(recipe)], env={"COLUMNS": "300"})
    assert result.exit_code == 1 and "state store sqlite:///" in result.output and "Traceback" not in result.output


def test_a_run_forked_from_the_fork_server_says_what_a_fresh_interpreter_says(tmp_path: Path) -> None:
    # The tests above fork their runs from tests/cli_process.py's preloaded server: a setting read at
    # import (the width), the program's name, the messages and exit statuses are a fresh process's.
    env = {**cli_env(), "COLUMNS": "60"}
    for args in (["run", "--help"], ["run", "nosuch.yaml"], ["check", "recipe.yaml", "--log-level", "loud"]):
        forked = curation(*args, cwd=tmp_path, env=env)
        fresh = subprocess.run(
            [sys.executable, "-m", "curation.cli", *args], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
        assert forked.returncode == (0 if "--help" in args else 2)
    assert "Usage: python -m curation.cli check" in forked.stderr


def test_the_run_summary_shows_reasons_and_split_names_as_they_are_not_as_markup(tmp_path: Path) -> None:
    from rich.console import Console

    from curation.cli import summary_table
    from curation.published import read_manifest

    manifest = read_manifest(str(run_recipe(five_notes(tmp_path)).version_uri))
    # A reason holds the recipe's column name: brackets in it are a MarkupError (or silently dropped).
    reasons = {"quarantined": {"expect_column_values_to_not_be_null:tags[/x]": 1, "length:[b]": 2}}
    manifest = manifest.model_copy(update={"counts": manifest.counts.model_copy(update={"reasons": reasons})})
    manifest.splits["[i]train"] = manifest.splits.pop("train")
    console = Console(width=200, record=True)
    console.print(summary_table(manifest))
    shown = console.export_text()
    assert "expect_column_values_to_not_be_null:tags[/x]" in shown and "length:[b]" in shown
    assert "[i]train" in shown


def test_a_review_page_stopped_by_ctrl_c_ends_as_before_without_a_word_of_publishing(tmp_path: Path) -> None:
    # The entry point's handler, taken for every command, made the page's ^C "stopped by ^C, nothing
    # published" and exit 130: uvicorn ends the page on ^C and hands the signal back to the handler it found.
    from tests.conftest import free_port, wait_for_http

    five_notes(tmp_path)
    port = free_port()
    args = ["review", "serve", "--port", str(port), "--recipe", "recipe.yaml"]
    script = f"import sys\nsys.argv = ['curation', *{args!r}]\nfrom curation.__main__ import main\nsys.exit(main())\n"
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    with subprocess.Popen(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            wait_for_http(f"http://127.0.0.1:{port}/login", process)
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=30)
        finally:
            process.kill()
    assert process.returncode == 0, stderr
    assert "published" not in stderr and "Traceback" not in stderr, stderr


def test_check_says_a_file_lacking_a_column_a_version_was_made_naming_as_the_run_does(tmp_path: Path) -> None:
    # v1 was made naming 'q': a new file without it is a bad export the run quarantines. Check called it an input
    # error (exit 2), so a scheduled `check && run` stopped for good.
    write_jsonl(tmp_path / "qa" / "a.jsonl", [{"q": f"Q{n}", "a": "A"} for n in range(3)])
    record = {"kind": "instruction", "prompt": "q", "completion": "a"}
    spec = {"dataset": "qa", "sources": [{"path": "qa"}], "record": record}
    recipe = write_recipe(tmp_path, spec)
    assert curation("run", str(recipe), "--quiet", cwd=tmp_path).returncode == 0
    path = write_jsonl(tmp_path / "qa" / "b.jsonl", [{"a": "B"}])
    lacking = f"{path}:1: prompt: column 'q' is missing"
    checked = curation("check", str(recipe), cwd=tmp_path)
    said = " ".join((checked.stdout + checked.stderr).split())
    assert checked.returncode == 0 and "input error" not in said, said
    assert f"{lacking}; v1 was made naming these columns: a run quarantines them as the rows' fault" in said, said
    # A recipe naming another column puts it on trial: check and run both call it the recipe's error.
    write_recipe(tmp_path, {**spec, "record": {**record, "completion": "{{ a }} {{ ctx }}"}})
    checked = curation("check", str(recipe), cwd=tmp_path)
    said = " ".join((checked.stdout + checked.stderr).split())
    assert checked.returncode == 2 and "input error" in said and "column 'ctx' is missing" in said, said
    assert "made naming these columns" not in said, said
    refused = curation("run", str(recipe), "--quiet", cwd=tmp_path)
    assert refused.returncode == 2 and "lack a column the recipe names" in refused.stderr, refused.stderr
    write_recipe(tmp_path, spec)
    ran = curation("run", str(recipe), "--quiet", cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    counts = json.loads((tmp_path / "output" / "qa" / "v2" / "manifest.json").read_text())["counts"]
    assert counts["reasons"] == {"quarantined": {"missing_column": 1}}


def _images_sources(tmp_path: Path) -> tuple[dict, Callable[[], dict]]:
    from tests.test_images import two_sidecars

    spec, first, second = two_sidecars(tmp_path)
    return spec, lambda: {**spec, "sources": [first, {**second, "image_column": "imgae"}]}


def _instructions(tmp_path: Path) -> tuple[dict, Callable[[], dict]]:
    write_jsonl(tmp_path / "qa" / "a.jsonl", [{"q": f"Q{n}", "a": "A", "category": "x"} for n in range(3)])
    spec = {
        "dataset": "qa",
        "sources": [{"path": "qa"}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
    }

    def after() -> dict:
        write_jsonl(tmp_path / "qa" / "b.jsonl", [{"q": "Q", "a": "B", "category": "y"}])
        return {**spec, "input_schema": {"columns": {"q": "str", "a": "str", "catgory": "str"}}}

    return spec, after


def _sql_and_files(tmp_path: Path) -> tuple[dict, Callable[[], dict]]:
    import sqlalchemy as sa

    from tests.test_sql import fill
    from tests.test_sql import recipe as sql_recipe

    url = f"sqlite:///{tmp_path}/crm.db"
    fill(url, 1, 3)
    write_jsonl(tmp_path / "qa" / "a.jsonl", [{"subject": f"S{n}", "reply": "R"} for n in range(3)])
    spec = sql_recipe(url, table="tickets", cursor="id")
    spec["sources"] = [{"path": "qa"}, spec["sources"][0]]

    def after() -> dict:
        with sa.create_engine(url).begin() as db:
            db.execute(sa.text("ALTER TABLE tickets RENAME COLUMN reply TO answer"))
            insert = (
                "INSERT INTO tickets (id, subject, answer, amount, updated_at) VALUES (4, 's', 'a', 1, '2026-01-02')"
            )
            db.execute(sa.text(insert))
        write_jsonl(tmp_path / "qa" / "b.jsonl", [{"subject": "S", "answer": "R"}])
        return spec

    return spec, after


# The recipe of v1, and what its next run meets (the recipe and input changed since).
NAMED_FIRST = {
    "an input_schema added, a required column misspelt": _instructions,
    "an images source's image_column changed, misspelt": _images_sources,
    "a table that lost a column, beside a files source listed first": _sql_and_files,
}


@pytest.mark.parametrize("case", NAMED_FIRST)
def test_check_and_run_agree_on_columns_a_version_was_not_made_naming(tmp_path: Path, case: str) -> None:
    # Each run quarantined, exit 0, rows lacking a column no version was made naming (check said so of two as an
    # input error, exit 2): the recipe's error, as on a first run, which both say.
    spec, after = NAMED_FIRST[case](tmp_path)
    assert curation("run", str(write_recipe(tmp_path, spec)), "--quiet", cwd=tmp_path).returncode == 0
    recipe = write_recipe(tmp_path, after())
    checked = curation("check", str(recipe), cwd=tmp_path)
    said = " ".join((checked.stdout + checked.stderr).split())
    assert checked.returncode == 2 and "input error" in said, said
    ran = curation("run", str(recipe), "--quiet", cwd=tmp_path)
    assert ran.returncode == 2 and "lack a column the recipe names" in ran.stderr, ran.stdout + ran.stderr


@contextlib.contextmanager
def unwritable(folder: Path) -> Iterator[None]:
    """``folder`` made so that no file can be made in it: by its mode, or, for root (whom a mode does not stop),
    marked immutable (made, if it is not there); the test is skipped where neither stops this process."""
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    marked = False
    try:
        if os.access(folder, os.W_OK) and shutil.which("chattr"):
            marked = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        try:
            (folder / "probe").touch()
        except OSError:
            yield
            return
        (folder / "probe").unlink()
        pytest.skip("no folder this process cannot write to can be made here")
    finally:
        if marked:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_a_dest_that_cannot_be_written_is_an_output_error_in_check_and_refused_before_the_run_reads(
    tmp_path: Path,
) -> None:
    write_jsonl(tmp_path / "docs.jsonl", [{"text": "hello"}])
    spec = {"dataset": "docs", "sources": [{"path": "docs.jsonl"}], "record": {"kind": "document"}}
    recipe = write_recipe(tmp_path, {**spec, "output": {"dest": "locked/out"}})
    with unwritable(tmp_path / "locked"):
        said = f"output.dest {tmp_path / 'locked/out'}: cannot be written ({tmp_path / 'locked'}: "
        checked = curation("check", str(recipe), cwd=tmp_path)  # it said ok
        assert checked.returncode == 2 and f"output error {said}" in checked.stderr, checked.stderr
        # It failed once all was read, in Arrow's words: "Cannot create directory ...".
        ran = curation("run", str(recipe), "--quiet", cwd=tmp_path)
        assert ran.returncode == 1 and f"run failed, nothing published: {said}" in ran.stderr, ran.stderr
        assert not any((tmp_path / "locked").iterdir())  # check made nothing there
    assert curation("check", str(recipe), cwd=tmp_path).returncode == 0  # writable once more
    assert not any((tmp_path / "locked").iterdir())  # the dest is not created by check


def test_nothing_new_over_a_dest_that_cannot_be_written_publishes_nothing_as_before(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": "hello"}])
    recipe = write_recipe(tmp_path, {**docs_recipe("in/"), "output": {"dest": "out"}})
    assert curation("run", str(recipe), "--quiet", cwd=tmp_path).returncode == 0
    said = f"output.dest {tmp_path / 'out'}: cannot be written ({tmp_path / 'out' / 'docs'}: "
    with unwritable(tmp_path / "out" / "docs"):  # a scheduled run over a published dataset made read-only
        checked = curation("check", str(recipe), cwd=tmp_path)  # what a run with anything new would meet
        assert checked.returncode == 2 and f"output error {said}" in checked.stderr, checked.stderr
        ran = curation("run", str(recipe), cwd=tmp_path)  # it failed, exit 1
        assert ran.returncode == 0 and "nothing new since docs v1: published nothing" in ran.stdout, ran.stderr
        write_jsonl(tmp_path / "in" / "b.jsonl", [{"text": "news"}])  # now a run has something to write there
        checked = curation("check", str(recipe), cwd=tmp_path)
        assert checked.returncode == 2 and f"output error {said}" in checked.stderr, checked.stderr
        ran = curation("run", str(recipe), "--quiet", cwd=tmp_path)
        assert ran.returncode == 1 and f"run failed, nothing published: {said}" in ran.stderr, ran.stderr


def _run_on_a_full_disk(tmp_path: Path, stages: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    """`curation run` where no file may grow past 4 MiB (``RLIMIT_FSIZE``: a write past it fails as one on a
    full disk does, from the file system) over 8 MB of distinct records."""
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": f"{n} " + "x" * 10_000} for n in range(800)])
    recipe = write_recipe(tmp_path, {**docs_recipe("in"), "stages": stages})
    (tmp_path / "tmp").mkdir()

    def files_limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails (EFBIG) rather than the process dying
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))

    return subprocess.run(
        [sys.executable, "-m", "curation.cli", "run", str(recipe), "--quiet"],
        cwd=tmp_path,
        env={**cli_env(), "TMPDIR": str(tmp_path / "tmp")},
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=files_limited,
    )


def test_a_full_dest_names_the_shard_it_could_not_write(tmp_path: Path) -> None:
    done = _run_on_a_full_disk(tmp_path, [])
    said = " ".join(done.stderr.split())
    assert done.returncode == 1 and "run failed, nothing published: [Errno 27] cannot write " in said
    assert "/_staging/" in said and "/train/part-00000.jsonl: File too large" in said
    assert "spill folder" not in said


def test_a_full_spill_folder_is_named_as_such(tmp_path: Path) -> None:
    done = _run_on_a_full_disk(tmp_path, [{"type": "exact_dedup"}])
    said = " ".join(done.stderr.split())
    assert done.returncode == 1 and f"run failed, nothing published: [Errno 27] cannot write {tmp_path}/tmp/" in said
    assert "the spill folder (TMPDIR, or the executor's spill_dir) has no room for it" in said


def test_a_run_logged_to_a_file_says_its_progress_in_log_lines_without_an_empty_line(tmp_path: Path) -> None:
    # cron keeps stderr in a file: the terminal's bar left only an empty line there, and said no progress.
    write_jsonl(tmp_path / "docs.jsonl", [{"text": f"note number {n}"} for n in range(30)])
    recipe = str(write_recipe(tmp_path, {**docs_recipe("docs.jsonl"), "batch_rows": 10}))
    ran = curation("run", recipe, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    lines = ran.stderr.splitlines()
    assert "" not in lines, ran.stderr
    # Under a minute: only the line said once all input is read, and the one said as the run ends.
    read, ended = [line.split(" progress: ")[1] for line in lines if " INFO curation.progress " in line]
    size = (tmp_path / "docs.jsonl").stat().st_size
    # Not "0 records written": said before any was (a short run's, or a dedup stage's, writes come after).
    assert re.fullmatch(rf"read {size} bytes of {size} bytes \(100%\), \d+s", read), read
    assert re.fullmatch(r"run ended, 30 records written, \d+s", ended), ended
    quiet = curation("run", recipe, "--quiet", "--full-refresh", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_a_run_logged_to_a_file_says_its_progress_as_often_as_the_heartbeat_interval_lets(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "docs.jsonl", [{"text": f"note number {n}"} for n in range(30)])
    recipe = str(write_recipe(tmp_path, {**docs_recipe("docs.jsonl"), "batch_rows": 10}))
    # A real interpreter, whose module's interval the test shortens (a forked run imports the module afresh).
    shortened = "import sys, curation.cli as cli; cli.HEARTBEAT_S = 0; sys.argv[0] = 'curation'; cli.app()"
    ran = subprocess.run(
        [sys.executable, "-c", shortened, "run", recipe], cwd=tmp_path, env=cli_env(), capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stderr
    assert "" not in ran.stderr.splitlines(), ran.stderr
    said = [line.split(" progress: ")[1] for line in ran.stderr.splitlines() if " INFO curation.progress " in line]
    lines = (tmp_path / "docs.jsonl").read_bytes().splitlines(keepends=True)
    size = sum(map(len, lines))
    ends = [sum(map(len, lines[: end + 10])) for end in (0, 10, 20)]
    # Each of the three batches read said as it came (the records written, said between them, aside).
    reads = list(dict.fromkeys(line.split(",")[0] for line in said[:-1]))
    assert reads == [f"read {n} bytes of {size} bytes ({n * 100 // size}%)" for n in ends], said
    assert f"read {size} bytes of {size} bytes (100%), 30 records written" in [line.rsplit(", ", 1)[0] for line in said]
    assert said[-1].startswith("run ended, 30 records written, "), said


def test_a_sql_run_logged_to_a_file_says_the_records_written_not_the_bytes_it_cannot_count(tmp_path: Path) -> None:
    # A table's size is not known: its progress said "read 0 bytes" all along, and no line as the run ended.
    rows = [f"insert into t (subject, reply) values ('s{n}', 'r{n}')" for n in range(30)]
    url = sqlite_db(tmp_path / "src.db", "create table t (id integer primary key, subject text, reply text)", *rows)
    recipe = {
        "dataset": "support",
        "sources": [{"type": "sql", "url": url, "table": "t"}],
        "record": {"kind": "instruction", "prompt": "{{ subject }}", "completion": "{{ reply }}"},
        "batch_rows": 10,
    }
    shortened = "import sys, curation.cli as cli; cli.HEARTBEAT_S = 0; sys.argv[0] = 'curation'; cli.app()"
    ran = subprocess.run(
        [sys.executable, "-c", shortened, "run", str(write_recipe(tmp_path, recipe))],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
    )
    assert ran.returncode == 0, ran.stderr
    said = [line.split(" progress: ")[1] for line in ran.stderr.splitlines() if " INFO curation.progress " in line]
    assert said and all(re.fullmatch(r"(run ended, )?[\d,]+ records written, \d+s", line) for line in said), said
    assert [line for line in said if line.startswith("run ended, ")] == [said[-1]], said
    assert said[-1].startswith("run ended, 30 records written, "), said
