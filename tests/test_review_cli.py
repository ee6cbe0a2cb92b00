"""`curation review add-user / export / import` as a user runs them: a real process, real exit codes."""

from __future__ import annotations

import json
import os
import pty
import select
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from curation.review import decisions as dec
from curation.review.auth import authenticate
from tests.cli_process import cli_env, curation
from tests.review_seed import NAME, Seeded, seed


def review(*args: str, cwd: Path, password: str | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = cli_env()
    env.pop("CURATION_REVIEW_PASSWORD", None)
    if password is not None:
        env["CURATION_REVIEW_PASSWORD"] = password
    return curation("review", *args, cwd=cwd, env=env, stdin=stdin or "")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seed(tmp_path_factory.mktemp("review-cli"))


def test_add_user_from_env_or_prompt(seeded: Seeded) -> None:
    recipe = str(seeded.recipe_path)
    done = review("add-user", "olga", "--role", "admin", "--recipe", recipe, cwd=seeded.folder, password="s3cret-pass")
    assert done.returncode == 0 and "user olga is an admin" in done.stderr, done.stderr
    typed = ("password: ", "another-pass\n"), ("confirmation: ", "another-pass\n")
    prompted, said = at_a_terminal("add-user", "ivan", "--recipe", recipe, cwd=seeded.folder, typing=typed)
    assert prompted == 0 and "user ivan is a reviewer" in said, said
    assert "another-pass" not in said  # not echoed
    engine = sa.create_engine(seeded.state_url)
    assert authenticate(engine, "olga", "s3cret-pass").role == "admin"
    assert authenticate(engine, "ivan", "another-pass").role == "reviewer"
    assert authenticate(engine, "olga", "another-pass") is None
    # Asked twice: a password typed differently the second time makes no user.
    # ^D at the prompt asking again: no user, and how to give the password.
    typed = (
        ("password: ", "first-pass\n"),
        ("confirmation: ", "first-pasd\n"),
        ("do not match", ""),
        ("password: ", "\x04"),
    )
    mistyped, said = at_a_terminal("add-user", "petra", "--recipe", recipe, cwd=seeded.folder, typing=typed)
    assert mistyped == 2 and "no password given, so no user made" in said, said
    assert authenticate(engine, "petra", "first-pass") is None and authenticate(engine, "petra", "first-pasd") is None
    bad = review("add-user", "x", "--role", "owner", "--recipe", recipe, cwd=seeded.folder, password="long-enough")
    assert bad.returncode == 2 and "unknown role 'owner'" in bad.stderr


def at_a_terminal(*args: str, cwd: Path, typing: tuple[tuple[str, str], ...]) -> tuple[int, str]:
    """`curation review ARGS` with a terminal of its own (a pseudo-terminal, as a user's shell gives it),
    typing each text once what precedes it shows (typed before the prompt, the prompt would discard it);
    its exit code and all it showed."""
    main, terminal = pty.openpty()
    # In the child, before the CLI: a session whose controlling terminal is the pty, which getpass opens.
    start = "import os, runpy, sys\nos.login_tty(int(sys.argv.pop(1)))\n"
    start += "runpy.run_module('curation.cli', run_name='__main__', alter_sys=True)\n"
    env = {**cli_env(), "TERM": "dumb"}
    env.pop("CURATION_REVIEW_PASSWORD", None)
    command = [sys.executable, "-c", start, str(terminal), "review", *args]
    shown = b""
    with subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, pass_fds=(terminal,)) as process:
        os.close(terminal)
        try:
            for awaited, text in typing:
                while awaited.encode() not in shown:
                    assert select.select([main], [], [], 60)[0], shown
                    shown += os.read(main, 4096)
                shown = shown.replace(awaited.encode(), b"", 1)  # the next one is the next prompt
                os.write(main, text.encode())
            while select.select([main], [], [], 60)[0]:
                try:
                    shown += os.read(main, 4096)
                except OSError:  # the child ended, and its terminal with it
                    break
        finally:
            os.close(main)
    return process.returncode, " ".join(shown.decode(errors="replace").split())


def test_export_then_import_label_studio(seeded: Seeded) -> None:
    recipe = str(seeded.recipe_path)
    out = seeded.folder / "exports" / "today" / "tasks.json"  # a folder not made yet
    done = review("export", str(out), "--kind", "near_duplicate", "--recipe", recipe, cwd=seeded.folder)
    assert done.returncode == 0, done.stderr
    (task,) = json.loads(out.read_text())
    assert task["data"]["kind"] == "near_duplicate" and "How can I reset" in task["data"]["member"]
    assert '<Choice value="reject"/>' in out.with_suffix(".xml").read_text()
    redacted = review("export", str(out), "--kind", "pii", "--recipe", recipe, cwd=seeded.folder)
    assert redacted.returncode == 0 and NAME not in out.read_text()

    task["annotations"] = [
        {"id": 7, "result": [{"from_name": "decision", "type": "choices", "value": {"choices": ["reject"]}}]}
    ]
    exported = seeded.folder / "ls-export.json"
    exported.write_text(json.dumps([task]))
    done = review("import", str(exported), "--user", "pia", "--recipe", recipe, cwd=seeded.folder)
    assert done.returncode == 0, done.stderr
    assert "1 reject" in done.stderr
    engine = sa.create_engine(seeded.state_url)
    assert dec.run_decisions(engine, "support").rejected == {seeded.ids[3]}
    (decision,) = dec.history(engine, task["data"]["item_id"])
    assert decision["user"] == "pia"
    # The same export imported again decides nothing twice.
    again = review("import", str(exported), "--user", "pia", "--recipe", recipe, cwd=seeded.folder)
    assert again.returncode == 0 and "0 reject" in again.stderr and "1 already in force" in again.stderr
    assert len(dec.history(engine, task["data"]["item_id"])) == 1

    missing = review("import", "nowhere.json", "--user", "pia", "--recipe", recipe, cwd=seeded.folder)
    assert missing.returncode == 2 and "nowhere.json: cannot read: No such file or directory" in missing.stderr
    exported.write_text('[{"data": {}}]')
    broken = review("import", str(exported), "--user", "pia", "--recipe", recipe, cwd=seeded.folder)
    assert broken.returncode == 2 and "has no data.item_id" in broken.stderr


def test_an_export_filter_that_can_match_nothing_is_said(seeded: Seeded) -> None:
    recipe = str(seeded.recipe_path)
    out = str(seeded.folder / "filtered.json")
    typo = review("export", out, "--kind", "piii", "--recipe", recipe, cwd=seeded.folder)
    assert typo.returncode == 2 and "--kind piii: use one of pii, near_duplicate, quarantined, vqa" in typo.stderr
    typo = review("export", out, "--status", "opne", "--recipe", recipe, cwd=seeded.folder)
    assert typo.returncode == 2 and "--status opne: use one of open, approved, rejected, edited" in typo.stderr
    unknown = review("export", out, "--dataset", "nope", "--recipe", recipe, cwd=seeded.folder)
    assert unknown.returncode == 0 and "the queue holds no item of dataset 'nope'" in unknown.stderr
    known = review("export", out, "--dataset", "support", "--recipe", recipe, cwd=seeded.folder)
    assert known.returncode == 0 and "no item" not in known.stderr
    # A version not run yet (or mistyped) is said as an unknown dataset is: not a bare "0 task(s)".
    unrun = review("export", out, "--version", "7", "--recipe", recipe, cwd=seeded.folder)
    assert unrun.returncode == 0 and "the queue holds no item of version 7" in unrun.stderr, unrun.stderr
    unrun = review("export", out, "--dataset", "support", "--version", "7", "--recipe", recipe, cwd=seeded.folder)
    assert "the queue holds no item of version 7 of dataset 'support'" in unrun.stderr, unrun.stderr
    run = review("export", out, "--dataset", "support", "--version", "1", "--recipe", recipe, cwd=seeded.folder)
    assert run.returncode == 0 and "no item" not in run.stderr and "0 task(s)" not in run.stderr, run.stderr


def test_without_a_recipe_or_state_in_a_folder_with_no_state_store_the_command_says_so(tmp_path: Path) -> None:
    done = review("export", "tasks.json", cwd=tmp_path)
    assert done.returncode == 2 and "no state store" in done.stderr and "--recipe" in done.stderr
    assert not (tmp_path / ".curation").exists() and not (tmp_path / "tasks.json").exists()
    typo = review("export", "tasks.json", "--state", f"sqlite:///{tmp_path}/stat.db", cwd=tmp_path)
    assert typo.returncode == 2 and f"no state store at {tmp_path}/stat.db:" in typo.stderr
    assert not (tmp_path / "stat.db").exists()
    path = review("export", "tasks.json", "--state", "stat.db", cwd=tmp_path)
    assert path.returncode == 2 and "--state stat.db: not a database URL" in path.stderr
    assert "Traceback" not in path.stderr
    asked = review("add-user", "olga", "--state", f"sqlite:///{tmp_path}/stat.db", cwd=tmp_path, stdin="")
    assert asked.returncode == 2 and "no state store" in asked.stderr and "password" not in asked.stdout


def test_add_user_reads_one_line_piped_on_stdin_with_the_same_checks(tmp_path: Path) -> None:
    # `printf 'secret-pass\n' | curation review add-user ann`: refused for want of a terminal, where a script has
    # no other way than the variable. Its first line is the password, held to the prompt's checks.
    url = f"sqlite:///{tmp_path}/state.db"
    (tmp_path / "state.db").touch()  # a store that is there, empty
    none = (
        "error no password given, so no user made: nothing on stdin (not a terminal) to read it from; "
        "pipe it in or set $CURATION_REVIEW_PASSWORD"
    )
    for piped, said in (("", none), ("\n", none), ("short\n", "error a password needs at least 8 characters")):
        refused = review("add-user", "ann", "--state", url, cwd=tmp_path, stdin=piped)
        assert refused.returncode == 2 and " ".join(refused.stderr.split()) == said, refused.stderr
    done = review("add-user", "ann", "--state", url, cwd=tmp_path, stdin="secret pass\r\nignored\n")
    assert done.returncode == 0 and "user ann is a reviewer" in done.stderr, done.stderr
    assert "secret" not in done.stdout + done.stderr
    engine = sa.create_engine(url)
    assert authenticate(engine, "ann", "secret pass").role == "reviewer"  # its line ending is not the password's
    assert authenticate(engine, "ann", "ignored") is None
    # Set but empty (a secret that did not come through): said as such, stdin not read.
    empty = review("add-user", "olga", "--state", url, cwd=tmp_path, password="", stdin="s3cret-pass\ns3cret-pass\n")
    said = " ".join(empty.stderr.split())
    assert empty.returncode == 2, said
    assert (
        said == "error $CURATION_REVIEW_PASSWORD is set but empty, so no user made: set it to the password, or unset it"
    )


def test_add_user_with_stdin_closed_says_no_password_was_given(tmp_path: Path) -> None:
    # `curation review add-user ann 0<&-` (a daemon's closed stdin): Python makes sys.stdin None, and it crashed
    # asking None whether it is a terminal.
    url = f"sqlite:///{tmp_path}/state.db"
    (tmp_path / "state.db").touch()
    env = cli_env()
    env.pop("CURATION_REVIEW_PASSWORD", None)
    script = 'exec "$0" -m curation.cli review add-user ann --state "$1" 0<&-'
    done = subprocess.run(
        ["sh", "-c", script, sys.executable, url], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and "Traceback" not in said, said
    assert said == (
        "error no password given, so no user made: nothing on stdin (not a terminal) to read it from; "
        "pipe it in or set $CURATION_REVIEW_PASSWORD"
    )


def test_a_state_store_that_cannot_be_read_is_said_in_one_line_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "state.db").write_text("not a SQLite database, e.g. a file copied over it\n")
    (tmp_path / "tasks.json").write_text("[]")
    stores = [f"sqlite:///{tmp_path}/state.db", "postgresql+psycopg://curation:pw-123@127.0.0.1:1/crm"]
    for url in stores:
        for args in (["export", "out.json"], ["import", "tasks.json", "--user", "maria"], ["add-user", "olga"]):
            done = review(*args, "--state", url, cwd=tmp_path, password="long-enough")
            assert done.returncode == 1, (args, url, done.stderr)
            assert "Traceback" not in done.stderr and "state store error" in done.stderr, done.stderr
            assert "pw-123" not in done.stderr


def test_the_pii_labeling_config_has_a_label_for_the_recipes_own_entities() -> None:
    import xml.etree.ElementTree as ET

    from curation.review.labelstudio import label_config

    tasks = [{"data": {}, "predictions": [{"result": [{"value": {"start": 0, "end": 4, "labels": ["PAYEE"]}}]}]}]
    config = ET.fromstring(label_config("pii", tasks, ["US_BANK_NUMBER", "PERSON"]))
    labels = [label.get("value") for label in config.iter("Label")]
    assert labels[:2] == ["PERSON", "EMAIL_ADDRESS"] and labels.count("PERSON") == 1
    assert {"US_BANK_NUMBER", "PAYEE"} <= set(labels)
    assert label_config("near_duplicate", tasks) is not None and label_config("other", tasks) is None


def test_a_command_says_which_state_store_it_read(seeded: Seeded, tmp_path: Path) -> None:
    # A user made with --recipe is not in another store: the error says which store was asked, so a
    # user who left out --recipe sees why the user just made "does not exist".
    from curation.state import StateStore

    other = f"sqlite:///{tmp_path / 'other.db'}"
    StateStore(other)
    exported = tmp_path / "tasks.json"
    done = review("export", str(exported), "--state", other, cwd=tmp_path)
    assert done.returncode == 0 and f"0 task(s) written to {exported}, from {other}" in done.stderr, done.stderr
    wrong = review("import", str(exported), "--user", "pia", "--state", other, cwd=tmp_path)
    assert wrong.returncode == 2 and f"no review user 'pia' in the state store {other}:" in wrong.stderr, wrong.stderr
    recipe = str(seeded.recipe_path)
    right = review("export", str(exported), "--recipe", recipe, cwd=tmp_path)
    assert f"from {seeded.state_url} (the recipe's)" in right.stderr, right.stderr


def test_an_export_holding_an_integer_too_long_to_read_is_refused_in_one_line(tmp_path: Path) -> None:
    from tests.test_review_bulk import pii_queue

    state = f"sqlite:///{tmp_path / 'state.db'}"
    pii_queue(state, 1)
    export = tmp_path / "export.json"
    export.write_text('[{"id": ' + "9" * 5000 + ', "data": {"item_id": 1}}]')  # over Python's 4300 digits
    done = review("import", str(export), "--user", "pia", "--state", state, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"{export}: not a Label Studio JSON export (Exceeds the limit (4300 digits)" in " ".join(done.stderr.split())


def test_an_export_to_a_dot_xml_path_is_refused_before_it_overwrites_the_tasks_with_the_config(tmp_path: Path) -> None:
    from tests.test_review_bulk import pii_queue

    state = f"sqlite:///{tmp_path / 'state.db'}"
    pii_queue(state, 1)
    for name in ("queue.xml", "queue.XML"):
        done = review("export", str(tmp_path / name), "--kind", "pii", "--state", state, cwd=tmp_path)
        assert done.returncode == 2 and "the labeling config is written beside them" in done.stderr, done.stderr
        assert "written to" not in done.stderr and not (tmp_path / name).exists()


def test_a_labeling_config_that_cannot_be_written_is_said_in_one_line(tmp_path: Path) -> None:
    from tests.test_review_bulk import pii_queue

    state = f"sqlite:///{tmp_path / 'state.db'}"
    pii_queue(state, 1)
    (tmp_path / "queue.xml").mkdir()  # where the config goes
    done = review("export", str(tmp_path / "queue.json"), "--kind", "pii", "--state", state, cwd=tmp_path)
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and "Traceback" not in said, said
    assert f"{tmp_path / 'queue.xml'}: cannot write the labeling config (Is a directory)" in said
    assert len(json.loads((tmp_path / "queue.json").read_text())) == 1  # and the tasks are there


def test_a_recipe_error_quoting_brackets_is_said_whole_in_one_line(tmp_path: Path) -> None:
    # Printed as rich markup, a key "[/x]" was a MarkupError traceback and "[b]y" lost its "[b]".
    (tmp_path / "r.yaml").write_text('dataset: tx\nsources: [{path: in.csv}]\n"[/x]": 1\n"[b]y": 2\n')
    done = review("export", "o.json", "--recipe", "r.yaml", cwd=tmp_path)
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and "Traceback" not in said, said
    assert "[/x] (line 3): Extra inputs are not permitted" in said
    assert "[b]y (line 4): Extra inputs are not permitted" in said
    refused = review("export", "o.json", "--kind", "[b]pii", cwd=tmp_path)
    assert refused.returncode == 2 and "--kind [b]pii: use one of" in " ".join(refused.stderr.split())


def test_a_recipe_whose_sql_driver_is_not_installed_is_refused_only_where_its_sources_are_read(tmp_path: Path) -> None:
    # The review commands read the recipe's state store, never its sources: refusing the recipe for a database
    # driver they do not use kept the page from starting (exit 2).
    (tmp_path / "r.yaml").write_text(
        "dataset: crm\nsources:\n  - type: sql\n    url: mysql://x@y/z\n    table: tickets\n"
        f"record: {{kind: document}}\nstate: sqlite:///{tmp_path}/state.db\n"
    )
    done = review("export", "o.json", "--recipe", "r.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "o.json").read_text()) == []
    checked = curation("check", "r.yaml", cwd=tmp_path)
    said = " ".join(checked.stderr.split())
    assert checked.returncode == 2 and "sources.0.url (line 4): mysql needs the driver 'MySQLdb'" in said, said


def test_a_review_command_refusing_a_recipe_does_not_name_a_sql_driver_it_does_not_use(tmp_path: Path) -> None:
    # The recipe is checked again past its wrong setting, for every mistake in one try: that check asked for the
    # driver that review commands never use, so the message named a problem they do not have.
    (tmp_path / "r.yaml").write_text(
        "dataset: crm\nsources:\n  - type: sql\n    url: mysql://x@y/z\n    table: tickets\n"
        "record: {kind: document}\nstate: ftp://nowhere\n"
    )
    done = review("export", "o.json", "--recipe", "r.yaml", cwd=tmp_path)
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and "1 problem(s) in the recipe" in said, said
    assert "state (line 7): the state store is SQLite or PostgreSQL, not ftp" in said and "MySQLdb" not in said, said


def test_serving_on_a_port_another_process_holds_says_so_instead_of_the_pages_address(seeded: Seeded) -> None:
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        done = review("serve", "--port", str(port), "--recipe", str(seeded.recipe_path), cwd=seeded.folder)
    said = " ".join(done.stderr.split())
    assert done.returncode == 2, said  # README's exit codes: a setting this machine cannot serve
    assert f"error port {port} on 127.0.0.1 is taken by another process: stop it, or pass another --port" in said
    assert "review page on" not in said and "Errno" not in said, said


def test_serving_on_ipv6_is_not_refused_for_a_port_another_process_holds_on_ipv4_only() -> None:
    # uvicorn's socket for '::' is IPv6 only (asyncio's): it serves beside a process on 0.0.0.0 at the same port,
    # while the probe before it, binding IPv4 too, said the port was taken.
    from curation.review.cli import _cannot_listen

    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 on this machine")
    with socket.create_server(("0.0.0.0", 0)) as other:
        assert _cannot_listen("::", other.getsockname()[1]) is None
    with socket.create_server(("::", 0), family=socket.AF_INET6) as other:  # the same port in IPv6: taken
        port = other.getsockname()[1]
        assert (
            _cannot_listen("::", port)
            == f"port {port} on :: is taken by another process: stop it, or pass another --port"
        )
