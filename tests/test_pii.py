"""The PII stage on a real presidio analyzer and the packaged spaCy model (loaded once per session)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

from bench.pii_corpus import generate, recall
from curation.pii_engine import MODEL_VERSION, PiiEngineError, check_model
from curation.stages.base import StageError
from curation.stages.clean import Clean
from curation.stages.pii import PiiRedaction, Placeholders, _names_a_person, string_by_string
from schemas.config import RecipeError, parse_recipe, stage_place
from schemas.pii import PiiConfig
from schemas.records import source_array
from tests.helpers import BILLING, outputs, run, set_aside, write_jsonl

# Every test uses the same entities and recognizers, so the analyzer is built once per session.
CUSTOMER_ID = {
    "entity": "CUSTOMER_ID",
    "patterns": [{"regex": r"\bCUST-\d{6}\b", "score": 0.4}],
    "context": ["customer"],
}
SECRET = "test-secret-key"


def stage(**settings: Any) -> PiiRedaction:
    config = PiiConfig.model_validate({"type": "pii", "recognizers": [CUSTOMER_ID], **settings})
    return PiiRedaction(config, "instruction")


def records(prompts: list[str], completion: str = "noted") -> pa.Table:
    count = len(prompts)
    return pa.table(
        {
            "id": [f"r{i}" for i in range(count)],
            "source": source_array("files", "mem://input.jsonl", list(range(1, count + 1))),
            "prompt": prompts,
            "completion": [completion] * count,
            "label": [None] * count,
        }
    )


@pytest.fixture(scope="session")
def corpus() -> list:
    return generate(100, seed=11)


def test_recall_on_labelled_faker_slice(corpus: list) -> None:
    pii = stage()
    found = pii.analyzer.analyze([doc.text for doc in corpus], pii.config.threshold)
    scores = recall(corpus, [[(e, s, t) for e, s, t, _ in doc] for doc in found])
    for entity in ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN"):
        assert scores[entity] >= 0.95, scores
    assert scores["PERSON"] >= 0.92, scores  # 0.86 before names after role words were read (bench/pii.py)

    # And through the stage: no email, card or SSN of the slice survives in the redacted output.
    result = pii(records([doc.text for doc in corpus]))
    text = "\n".join(result.kept["prompt"].to_pylist())
    for doc in corpus:
        for entity, start, end in doc.spans:
            if entity in ("EMAIL_ADDRESS", "CREDIT_CARD", "US_SSN"):
                assert doc.text[start:end] not in text
    assert result.stats["EMAIL_ADDRESS"] >= 0.95 * sum(e == "EMAIL_ADDRESS" for d in corpus for e, _, _ in d.spans)


def test_a_local_phone_number_is_taken_beside_a_word_that_says_so() -> None:
    pii = stage()
    texts = [
        "Contact me at 555-0199 or by mail.",
        "My mobile: 555 0199.",
        "Invoice 555-0199 was paid on time.",  # no such word: an invoice number stays
        "Reference ORD-555-0199 shipped.",
    ]
    assert pii.rewrite_texts(texts)[:3] == [
        "Contact me at <PHONE_NUMBER> or by mail.",
        "My mobile: <PHONE_NUMBER>.",
        "Invoice 555-0199 was paid on time.",
    ]
    assert "555-0199" in pii.rewrite_texts(texts)[3]


def test_an_address_with_its_at_sign_url_encoded_is_redacted_alone() -> None:
    texts = [
        "see https://crm.example.com/c?email=tom.jones%40example.org&name=x",
        "write to Tom.Jones%2Bnews%40Example.ORG today",
        "x%40localhost and 50%40 off",  # no domain: no address
    ]
    assert stage().rewrite_texts(texts) == [
        "see https://crm.example.com/c?email=<EMAIL_ADDRESS>&name=x",
        "write to <EMAIL_ADDRESS> today",
        "x%40localhost and 50%40 off",
    ]


def test_a_card_written_with_dots_underscores_or_slashes_is_redacted_whole() -> None:
    pii = stage()
    texts = [
        "card 5555.5555.5555.4444 was declined",
        "card 5555_5555_5555_4444 was declined",
        "card 5555/5555/5555/4444 please",
        "card 2221.0000.0000.0009.",
    ]
    assert pii.rewrite_texts(texts) == [
        "card <CREDIT_CARD> was declined",
        "card <CREDIT_CARD> was declined",
        "card <CREDIT_CARD> please",
        "card <CREDIT_CARD>.",
    ]
    # The Luhn check still decides, the separator is one throughout, and versions and dates are no cards.
    clear = [
        "card 5555.5555.5555.4445 was declined",
        "card 5555.5555_5555.4444 was declined",
        "release 1.2.3.4 of 2024.01.15, card 2024/01/15",
    ]
    found = pii.analyzer.analyze(clear, pii.config.threshold)
    assert [[entity for entity, *_ in detections if entity == "CREDIT_CARD"] for detections in found] == [[], [], []]
    assert pii.rewrite_texts(clear)[:2] == clear[:2]


def test_pool_of_processes_finds_the_same(corpus: list) -> None:
    pii = stage()
    texts = [doc.text for doc in corpus] * 2  # enough texts for two workers
    pii.analyzer.workers = 1
    alone = pii.analyzer.analyze(texts, 0.3)
    pii.analyzer.workers = 2
    assert pii.analyzer.analyze(texts, 0.3) == alone


# Armed by a test, this raises SIGTERM in the parent's at-fork hooks, where Python ignores exceptions
# (registered once: a hook cannot be removed).
_signal_as_the_pool_forks: list[int] = []
os.register_at_fork(
    after_in_parent=lambda: _signal_as_the_pool_forks and signal.raise_signal(_signal_as_the_pool_forks.pop())
)


def test_a_stop_between_two_forks_of_the_pool_leaves_no_worker_behind(
    corpus: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Blocked in the main thread, SIGTERM goes to another thread, and Python runs the handler in the
    # main thread all the same: here, right after the pool's first worker started.
    from multiprocessing.process import BaseProcess

    import curation.stopping as stopping

    pii = stage()
    pii.analyzer.workers = 2
    monkeypatch.setattr(stopping, "stop_signals", [])
    start, armed = BaseProcess.start, [signal.SIGTERM]

    def start_then_signal(self: BaseProcess) -> None:
        start(self)
        if armed:
            stopping.on_stop_signal(armed.pop(), None)

    monkeypatch.setattr(BaseProcess, "start", start_then_signal)
    try:
        with pytest.raises(stopping.Stopped):
            pii.analyzer.analyze([doc.text for doc in corpus] * 2, 0.3)
        assert multiprocessing.active_children() == []  # the pool was made whole, then terminated
    finally:
        for child in multiprocessing.active_children():
            child.kill()


def test_a_stop_right_after_the_pool_is_made_terminates_its_workers(
    corpus: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The moment stops are no longer deferred, the handler raises at once: the pool must already be in
    # the block that terminates it.
    import curation.pii_engine as pii_engine
    import curation.stopping as stopping

    pii = stage()
    pii.analyzer.workers = 2
    monkeypatch.setattr(stopping, "stop_signals", [])
    deferred = stopping.stops_deferred

    @contextlib.contextmanager
    def stopped_as_it_ends() -> Iterator[None]:
        with deferred():
            yield
        stopping.on_stop_signal(signal.SIGTERM, None)

    monkeypatch.setattr(pii_engine, "stops_deferred", stopped_as_it_ends)
    try:
        with pytest.raises(stopping.Stopped) as stopped:
            pii.analyzer.analyze([doc.text for doc in corpus] * 2, 0.3)
        # Ended as the stop left the analysis, not when the stop is let go of (its traceback holds the pool).
        assert multiprocessing.active_children() == [] and stopped.value.args == (signal.SIGTERM,)
    finally:
        for child in multiprocessing.active_children():
            child.kill()


def test_a_sigterm_as_the_pool_forks_stops_the_analysis_where_it_can_be_raised(
    corpus: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    import curation.pipeline as pipeline
    import curation.stopping as stopping
    from curation.stopping import on_stop_signal as _stop

    pii = stage()
    pii.analyzer.workers = 2
    swallowed: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: swallowed.append(unraisable.exc_value))
    monkeypatch.setattr(stopping, "stop_signals", [])
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        _signal_as_the_pool_forks.append(signal.SIGTERM)
        with pytest.raises(pipeline.Stopped):
            pii.analyzer.analyze([doc.text for doc in corpus] * 2, 0.3)
    finally:
        _signal_as_the_pool_forks.clear()
        signal.signal(signal.SIGTERM, previous)
    assert swallowed == []  # the signal was held while the pool forked, not raised in a hook
    assert multiprocessing.active_children() == []  # the stopped pool left no worker


def test_a_name_is_found_again_whole_or_by_its_capitalised_runs_but_not_by_common_words() -> None:
    import re

    from curation.stages.pii import _found_elsewhere

    prompt = "Customer Maria de la Cruz asked; we told Sushi Go Smith. John Smith wrote."
    completion = (
        "MARIA DE LA CRUZ and maria de la cruz. La casa de la playa. Customer Maria replied. "
        "We told Sushi Go. JOHN SMITH came, then John SMİTH. Customer service. Ask Paris about Sophie. "
        "Sophie Smith called. paris hilton said hi."
    )
    names = ["Customer Maria de la Cruz", "Sushi Go Smith", "John Smith", "Paris Hilton", "Sophie Smith"]
    prompt += " Paris Hilton and Sophie Smith too."
    found = [[("PERSON", prompt.index(n), prompt.index(n) + len(n), 0.85) for n in names]]
    found.append([("PERSON", completion.rindex("Sophie"), completion.rindex("Sophie") + 6, 0.9)])  # the model's part
    allowed = re.compile(r"(?<!\w)(?:Sushi\ Go|Paris)(?!\w)", re.IGNORECASE)
    echoes = _found_elsewhere([("prompt", 0), ("completion", 0)], [prompt, completion], found, allowed)
    assert echoes["prompt", 0] == []  # its own detections are not found twice
    # The name, or its runs between capitals, in any case; a first or last word alone as written; not "de la",
    # not "Customer" alone (a title), not inside an allowed value ("Paris" alone), though a name may hold one.
    got = [(completion[e.detection[1] : e.detection[2]], e.value) for e in echoes["completion", 0]]
    assert got == [
        ("MARIA DE LA CRUZ", "Customer Maria de la Cruz"),
        ("maria de la cruz", "Customer Maria de la Cruz"),
        ("Customer Maria", "Customer Maria de la Cruz"),
        ("JOHN SMITH", "John Smith"),
        ("John SMİTH", "John Smith"),
        ("Sophie", "Sophie Smith"),  # its first word alone: the name's placeholder
        ("Sophie Smith", "Sophie Smith"),  # holds the model's "Sophie", which gives way
        ("paris hilton", "Paris Hilton"),
    ]


def test_a_shorter_detection_inside_a_place_of_a_longer_value_gives_way(monkeypatch: pytest.MonkeyPatch) -> None:
    pii = stage()
    # As the model answers at times: the whole name in the prompt, only its first word in the completion.
    monkeypatch.setattr(pii.analyzer, "analyze", lambda texts, *_: [[("PERSON", 0, 12, 0.9)], [("PERSON", 0, 6, 0.9)]])
    kept = pii(records(["Sophie Smith asked"], completion="Sophie Smith called")).kept
    assert kept["prompt"][0].as_py() == "<PERSON> asked" and kept["completion"][0].as_py() == "<PERSON> called"


@pytest.mark.parametrize("city", ["Izmir", "İzmir"])  # a dotted capital İ: lowercasing moves offsets
def test_a_longer_name_found_again_is_redacted_whole_though_a_shorter_one_was_found_first(
    monkeypatch: pytest.MonkeyPatch, city: str
) -> None:
    pii = stage()
    # The model found "Sophie Smith" and "Sophie Smith Jones" in the prompt, nothing in the completion.
    found = [[("PERSON", 0, 12, 0.9), ("PERSON", 17, 35, 0.9)], []]
    monkeypatch.setattr(pii.analyzer, "analyze", lambda texts, *_: found)
    kept = pii(
        records(["Sophie Smith and Sophie Smith Jones"], completion=f"From {city}: Sophie Smith Jones called")
    ).kept
    assert kept["completion"][0].as_py() == f"From {city}: <PERSON> called"


def test_detections_that_overlap_in_part_are_redacted_as_one_span(monkeypatch: pytest.MonkeyPatch) -> None:
    pii = stage()
    # The model's PERSON in "Sophie Smith" and LOCATION in "Smith Jones": kept apart, the loser's rest
    # stayed in clear ("Sophie <LOCATION> asked").
    monkeypatch.setattr(
        pii.analyzer, "analyze", lambda texts, *_: [[("PERSON", 0, 12, 0.85), ("LOCATION", 7, 18, 0.9)], []]
    )
    assert pii(records(["Sophie Smith Jones asked"])).kept["prompt"][0].as_py() == "<LOCATION> asked"
    # A name found in the prompt, and the model's "Smith Jones" in the completion: one span there too.
    found = [[("PERSON", 0, 12, 0.9)], [("PERSON", 7, 18, 0.9)]]
    monkeypatch.setattr(pii.analyzer, "analyze", lambda texts, *_: found)
    kept = pii(records(["Sophie Smith asked"], completion="Sophie Smith Jones called")).kept
    assert kept["completion"][0].as_py() == "<PERSON> called"


def test_a_bug_in_the_stage_is_named_without_its_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import curation.stages.pii as pii_module

    def missed(*_: object) -> None:
        raise KeyError("dana whitfield")  # as a lookup by a value would

    monkeypatch.setattr(pii_module, "_found_elsewhere", missed)
    with pytest.raises(StageError) as error:
        stage()(records(["Dana Whitfield wrote from dana@example.org"]))
    assert "KeyError in missed" in str(error.value) and "its message is withheld" in str(error.value)
    assert "whitfield" not in str(error.value).lower() and error.value.__cause__ is None
    # Scrubbing texts for the review queue (near-duplicate items made before the stage) as well: a
    # KeyError quoting a name reached the run's error message and its traceback.
    with pytest.raises(StageError) as error:
        stage().rewrite_texts(["Dana Whitfield wrote from dana@example.org"])
    assert "KeyError in missed" in str(error.value) and "whitfield" not in str(error.value).lower()
    assert error.value.__cause__ is None and error.value.__suppress_context__


def test_an_error_leaving_the_stage_carries_no_text_in_its_context_or_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """An error tracker (Sentry) reads an error's context and the locals of its traceback's frames: the
    error withheld stayed attached as the context, and the frames it was raised in held the texts."""
    import curation.stages.pii as pii_module
    from curation.pii_engine import PiiTextError

    def missed(*_: object) -> None:
        raise KeyError("dana whitfield")  # as a lookup by a value would

    def presidio_failed(_: object, texts: list[str], *__: object) -> None:
        try:
            raise ValueError(f"cannot parse {texts[0]}")  # as presidio's message would quote it
        except ValueError:
            raise PiiTextError(0, "ValueError") from None  # as the engine does: its context is that error

    text = "Dana Whitfield wrote from dana@example.org"
    for patch, call, said in (
        ((pii_module, "_found_elsewhere", missed), lambda pii: pii(records([text])), "KeyError in missed"),
        ((pii_module, "_found_elsewhere", missed), lambda pii: pii.rewrite_texts([text]), "KeyError in missed"),
        ((pii_module.PiiAnalyzer, "analyze", presidio_failed), lambda pii: pii(records([text])), "with ValueError"),
    ):
        with monkeypatch.context() as patched:
            patched.setattr(*patch)
            with pytest.raises(StageError) as error:
                call(stage())
        assert said in str(error.value) and "whitfield" not in str(error.value).lower()
        assert error.value.__context__ is None and error.value.__cause__ is None
        held = error.value.__traceback__
        while held is not None:
            if held.tb_frame.f_code.co_filename != __file__:  # the stage's frames, past this test's own
                for name, value in held.tb_frame.f_locals.items():
                    assert "whitfield" not in repr(value).lower(), (held.tb_frame.f_code.co_name, name)
            held = held.tb_next


def test_a_run_the_pii_stage_fails_names_the_recipe_and_the_stages_place(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As another stage failing on a batch is named (``stage_place``): the recipe file, then the place of
    the stage in it. The PII stage's errors opened "the pii stage ...", which names no stage of the run,
    so the place was left out."""
    from typer.testing import CliRunner

    import curation.stages.pii as pii_module
    from curation.cli import app
    from curation.pii_engine import PiiTextError
    from tests.helpers import write_recipe

    def presidio_failed(*_: object) -> None:
        raise PiiTextError(0, "ValueError")

    def missed(*_: object) -> None:
        raise KeyError("dana whitfield")

    write_jsonl(workdir / "in.jsonl", [{"prompt": "Dana Whitfield wrote from dana@example.org", "completion": "ok"}])
    stages = [{"type": "exact_dedup"}, {"type": "pii", "recognizers": [CUSTOMER_ID]}]
    recipe = write_recipe(workdir, {"dataset": "faq", "sources": [{"path": "in.jsonl"}], "stages": stages})
    line = recipe.read_text().splitlines().index("- type: pii") + 1
    for patch, said in (
        ((pii_module.PiiAnalyzer, "analyze", presidio_failed), f"pii: {workdir / 'in.jsonl'}:1: record "),
        ((pii_module, "_found_elsewhere", missed), "pii: the stage failed: KeyError in missed"),
    ):
        with monkeypatch.context() as patched:
            patched.setattr(*patch)
            result = CliRunner().invoke(app, ["run", str(recipe), "--quiet"], env={"COLUMNS": "300"})
        output = " ".join(result.output.split())
        assert result.exit_code == 1, output
        assert f"nothing published: {recipe}: stages.1 (line {line}): {said}" in output
        assert "whitfield" not in output.lower()


def test_a_field_the_records_lack_is_named_as_other_stages_name_theirs() -> None:
    from curation.stages.base import StageSettingError

    with pytest.raises(StageSettingError, match=r"^pii fields: \['completion'\] are not columns of the records"):
        stage()(records(["hello"]).drop_columns(["completion"]))
    with pytest.raises(StageSettingError, match=r"^pii fields: 'completion' holds int64, not text"):
        stage()(records(["hello"]).set_column(3, "completion", pa.array([7])))


def test_the_engines_error_for_a_text_presidio_failed_on_carries_not_presidios(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The engine names the text by its place only; presidio's own error, whose message can quote the
    text, is not attached as its context (for any caller of the engine, not only the stage)."""
    from presidio_analyzer import AnalyzerEngine

    from curation.pii_engine import PiiTextError

    analyze = AnalyzerEngine.analyze

    def failed(engine: AnalyzerEngine, text: str, *args: object, **kwargs: object) -> object:
        if "Dana" in text:
            raise ValueError(f"cannot parse {text}")
        return analyze(engine, text, *args, **kwargs)

    monkeypatch.setattr(AnalyzerEngine, "analyze", failed)
    with pytest.raises(PiiTextError) as error:
        stage().analyzer.analyze(["a fine text", "Dana Whitfield wrote"], 0.3)
    assert error.value.index == 1 and "whitfield" not in str(error.value).lower()
    assert error.value.__context__ is None and error.value.__cause__ is None


def test_pseudonyms_are_consistent_and_keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CURATION_PII_SECRET", SECRET)
    prompts = [
        "Please call John Carter back about the refund.",
        "Yesterday John Carter asked for a new card.",
        "Maria Lopez wants her statement by email.",
    ]
    kept = stage(operators={"PERSON": "pseudonym"})(records(prompts)).kept["prompt"].to_pylist()
    first, second, other = (p.split()[2 if i == 0 else 1 if i == 1 else 0] for i, p in enumerate(kept))
    assert first.startswith("<PERSON_") and first == second, kept
    assert other.startswith("<PERSON_") and other != first, kept
    assert not any(name in " ".join(kept) for name in ("John", "Carter", "Maria", "Lopez"))

    # A different key (here from the recipe, which wins over the environment) gives different
    # pseudonyms: the output alone does not reveal them. The key is never printed with the settings.
    keyed = stage(operators={"PERSON": "pseudonym"}, secret="another-key")
    assert "another-key" not in repr(keyed.config)
    again = keyed(records(prompts[:1])).kept["prompt"][0].as_py()
    assert again.startswith("Please call <PERSON_") and first not in again


def test_pseudonym_without_a_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CURATION_PII_SECRET", raising=False)
    with pytest.raises(StageError, match="CURATION_PII_SECRET") as error:
        stage(operators={"default": "pseudonym"})
    assert isinstance(error.value, ValueError)  # so `curation check` reports it as a recipe error


def test_pseudonym_without_a_secret_is_said_by_the_stages_line_in_check_and_run(tmp_path: Path) -> None:
    # It was `stages.1 (pii): ...`, the one recipe error without "(line N)".
    from tests.cli_process import cli_env, curation
    from tests.helpers import write_recipe

    write_jsonl(tmp_path / "in.jsonl", [{"text": "Call Ann."}])
    spec = {
        "dataset": "notes",
        "sources": [{"path": "in.jsonl"}],
        "record": {"kind": "document"},
        "stages": [{"type": "exact_dedup"}, {"type": "pii", "operators": {"default": "pseudonym"}}],
    }
    recipe = write_recipe(tmp_path, spec)
    line = next(n for n, text in enumerate(recipe.read_text().splitlines(), 1) if "type: pii" in text)
    env = {name: value for name, value in cli_env().items() if name != "CURATION_PII_SECRET"}
    for command in ("check", "run"):
        refused = curation(command, str(recipe), cwd=tmp_path, env=env)
        said = " ".join(refused.stderr.split())
        assert refused.returncode == 2 and "Traceback" not in said, said
        assert f"stages.1 (line {line}): pii: the pii stage's pseudonym operator needs a secret key" in said, said


def test_mask_keeps_the_shape_and_drop_sets_the_record_aside() -> None:
    batch = records(
        ["My card 4111 1111 1111 1111 was declined.", "My SSN is 536-22-8146, please update it.", "Thanks!"]
    )
    result = stage(operators={"CREDIT_CARD": "mask", "US_SSN": "drop"})(batch)
    assert result.kept["prompt"].to_pylist() == ["My card **** **** **** **** was declined.", "Thanks!"]
    assert result.set_aside["id"].to_pylist() == ["r1"]
    assert result.set_aside["outcome"].to_pylist() == ["filtered"]
    assert result.set_aside["reason"].to_pylist() == ["pii"]
    assert result.set_aside["detail"][0].as_py() == "prompt holds US_SSN (operator drop)"
    assert result.stats["records_dropped"] == 1 and result.stats["CREDIT_CARD"] == 1


def test_review_band_redacts_flags_and_can_be_undone() -> None:
    # A bare number with no context scores 0.4 (between threshold 0.3 and review_below 0.6): redacted
    # and flagged. The e-mail scores 1.0: redacted, not flagged.
    prompt = "Reach me at 212-555-0187 or at dana@example.org."
    result = stage()(records([prompt]))
    assert result.kept["prompt"][0].as_py() == "Reach me at <PHONE_NUMBER> or at <EMAIL_ADDRESS>."
    assert result.flags.num_rows == 1
    flag = result.flags.to_pylist()[0]
    assert (flag["id"], flag["kind"], flag["stage"]) == ("r0", "pii", "pii")
    assert flag["detail"] == "1 uncertain PII span(s) in prompt: PHONE_NUMBER"
    payload = json.loads(flag["payload"])
    assert payload["field"] == "prompt" and payload["original"] == prompt
    assert payload["redacted"] == result.kept["prompt"][0].as_py()
    [span] = payload["spans"]
    assert prompt[span["start"] : span["end"]] == "212-555-0187"
    assert span["entity"] == "PHONE_NUMBER" and 0.3 <= span["score"] < 0.6 and span["placeholder"] == "<PHONE_NUMBER>"

    # An annotator marks it "not PII": the next run leaves it and counts it.
    config = PiiConfig.model_validate({"type": "pii", "recognizers": [CUSTOMER_ID]})
    undone = {"r0": {("prompt", span["start"], span["end"])}}
    again = PiiRedaction(config, "instruction", undone=undone)(records([prompt]))
    assert again.kept["prompt"][0].as_py() == "Reach me at 212-555-0187 or at <EMAIL_ADDRESS>."
    assert again.stats["review_restored"] == 1 and again.flags.num_rows == 0


def test_custom_recognizer_uses_its_context_words() -> None:
    result = stage()(records(["Customer number CUST-204518 asked for a refund.", "Ref CUST-204518 on file."]))
    assert [p.split()[2] if i == 0 else p.split()[1] for i, p in enumerate(result.kept["prompt"].to_pylist())] == [
        "<CUSTOMER_ID>",
        "<CUSTOMER_ID>",
    ]
    # With "customer" nearby the score rises above review_below; without it, the match is only flagged.
    assert result.flags["id"].to_pylist() == ["r1"]
    assert result.stats["CUSTOMER_ID"] == 2


def test_ner_runs_only_on_ner_fields() -> None:
    batch = records(["Ada Lovelace wrote from dana@example.org"], completion="Reply to Dana Whitfield today.")
    kept = stage(ner_fields=["completion"])(batch).kept
    assert kept["prompt"][0].as_py() == "Ada Lovelace wrote from <EMAIL_ADDRESS>"  # patterns only
    assert kept["completion"][0].as_py() == "Reply to <PERSON> today."


def test_a_value_found_in_one_field_is_redacted_wherever_its_record_holds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CURATION_PII_SECRET", SECRET)
    # The completion is not scanned for names (as the model can miss one in any field): the name found
    # in the prompt must not stay there in clear beside its pseudonym, which would name the person in
    # every record that holds it.
    batch = records(["Customer Dana Whitfield asked about a refund"], completion="Refund sent to Dana Whitfield.")
    pii = stage(ner_fields=["prompt"], operators={"PERSON": "pseudonym"})
    result = pii(batch)
    prompt, completion = result.kept["prompt"][0].as_py(), result.kept["completion"][0].as_py()
    assert "Dana" not in prompt + completion and "Whitfield" not in prompt + completion, (prompt, completion)
    assert completion.startswith("Refund sent to <PERSON_") and result.stats["found_elsewhere_in_record"] == 1
    # Broken over a line, or with two spaces, it is the same name, with the same pseudonym.
    for spaced in ("Dana\nWhitfield", "DANA  WHITFIELD", "Dana \r\n Whitfield"):
        again = pii(records(["Customer Dana Whitfield asked about a refund"], completion=f"Sent to {spaced}."))
        pseudonym = again.kept["prompt"][0].as_py().split()[1]
        assert again.kept["completion"][0].as_py() == f"Sent to {pseudonym}.", spaced
    # A name found again by some of its words takes the name's pseudonym: one person, one placeholder.
    named, _ = pii._redact("to Maria Whitfield", [("PERSON", 3, 18, 0.9)], {(3, 18): "Anna Maria Whitfield"})
    assert named == "to " + pii.placeholder("pseudonym", "PERSON", "Anna Maria Whitfield")
    # An annotator's "not PII" on that place holds: the value is left there as they decided.
    undone = PiiRedaction(pii.config, "instruction", undone={"r0": [("completion", 15, 29)]}, analyzer=pii.analyzer)
    assert undone(batch).kept["completion"][0].as_py() == "Refund sent to Dana Whitfield."


def test_review_restored_counts_each_place_a_not_pii_leaves_in_clear_its_echoes_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The model sees an uncertain name in the prompt; the stage redacts it in the completion too (found
    # elsewhere in the record). Marked not PII there or where the model saw it (which looks for it
    # nowhere else), each place left in clear is counted: with the redactions made, as many as without
    # a mark.
    batch = records(["Customer Dana Whitfield asked about a refund"], completion="Refund sent to Dana Whitfield.")
    pii = stage(ner_fields=["prompt"])
    monkeypatch.setattr(
        pii.analyzer, "analyze", lambda texts, *_: [[("PERSON", 9, 23, 0.5)] if "Customer" in t else [] for t in texts]
    )
    first = pii(batch)
    assert first.stats["PERSON"] == 2 and first.stats["found_elsewhere_in_record"] == 1
    prompt, completion = ("prompt", 9, 23), ("completion", 15, 29)
    for marked, in_clear in (
        ({prompt}, ["prompt", "completion"]),  # its echo in the completion comes back with it
        ({completion}, ["completion"]),
        ({prompt, completion}, ["prompt", "completion"]),
    ):
        again = PiiRedaction(pii.config, "instruction", undone={"r0": marked}, analyzer=pii.analyzer)(batch)
        assert [name for name in ("prompt", "completion") if "Dana" in again.kept[name][0].as_py()] == in_clear
        assert again.stats["review_restored"] == len(in_clear), marked
        assert again.stats.get("PERSON", 0) + again.stats["review_restored"] == first.stats["PERSON"]


def test_table_rows_need_fields_and_skip_ner_on_codes() -> None:
    config = PiiConfig.model_validate({"type": "pii", "recognizers": [CUSTOMER_ID]})
    with pytest.raises(StageError, match="needs `fields` for table records"):
        PiiRedaction(config, "table")
    from curation.pii_engine import may_hold_names

    assert not may_hold_names("INV-204518") and not may_hold_names("1,250.00") and not may_hold_names("42")
    assert may_hold_names("Refund for Dana Whitfield") and may_hold_names("Whitfield")


def test_model_is_checked_and_a_missing_one_is_a_clear_error() -> None:
    meta = check_model()
    assert meta["version"] == MODEL_VERSION and meta["author"] == "Explosion" and "ner" in meta["pipeline"]
    with pytest.raises(PiiEngineError, match=r"not installed; install it with `pip install"):
        check_model("en_core_web_missing")


def test_bad_recognizer_regex_names_the_recipe_line() -> None:
    text = "dataset: d\nsources:\n  - path: in.jsonl\nstages:\n  - type: pii\n    recognizers:\n      - entity: TICKET\n        patterns:\n          - regex: 'TK-(\\d+'\n"
    with pytest.raises(
        RecipeError, match=r"stages\.0\.recognizers\.0\.patterns\.0\.regex \(line 9\): .*regular expression"
    ):
        parse_recipe(text)


def test_debug_run_logs_no_pii_and_counts_entities(
    workdir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, corpus: list
) -> None:
    monkeypatch.setenv("CURATION_PII_SECRET", SECRET)
    docs = corpus[:30]
    write_jsonl(workdir / "in.jsonl", [{"message": d.text, "reply": "We are on it."} for d in docs])
    recipe = {
        "dataset": "support",
        "sources": [{"path": "in.jsonl"}],
        "record": {"kind": "instruction", "prompt": "message", "completion": "reply"},
        "stages": [
            {"type": "pii", "recognizers": [CUSTOMER_ID], "operators": {"PERSON": "pseudonym", "CREDIT_CARD": "mask"}}
        ],
        "output": {"validation_fraction": 0.0},
    }
    with caplog.at_level(logging.DEBUG):
        result = run(workdir, recipe)
    assert caplog.records, "the run logged nothing at DEBUG: the check below would prove nothing"
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    values = {d.text[s:e] for d in docs for _, s, e in d.spans}
    assert not [v for v in values if v in logged]

    version = Path(result.version_uri)
    published = "\n".join(json.dumps(row) for row in outputs(version) + set_aside(version))
    leaked = [d.text[s:e] for d in docs for ent, s, e in d.spans if ent != "PERSON" and d.text[s:e] in published]
    assert not leaked
    stats = result.manifest.stats["stages"]["pii"]
    emails = sum(entity == "EMAIL_ADDRESS" for d in docs for entity, _, _ in d.spans)
    assert stats["EMAIL_ADDRESS"] == emails and stats["records_scanned"] == 30
    # Uncertain spans went to the review queue in the state store, with their PII, and only there.
    with sa.create_engine(f"sqlite:///{workdir / 'state.db'}").connect() as conn:
        queued = conn.execute(sa.text("select detail, payload from review_items where kind = 'pii'")).all()
    assert len(queued) == stats["review_flagged"]


def test_quarantined_raw_input_is_published_redacted_and_queued_raw(workdir: Path, corpus: list) -> None:
    docs = [d for d in corpus if any(entity == "EMAIL_ADDRESS" for entity, _, _ in d.spans)][:3]
    emails = [d.text[s:e] for d in docs for entity, s, e in d.spans if entity == "EMAIL_ADDRESS"]
    # Each line misses its reply: quarantined by the template before the PII stage sees it.
    write_jsonl(workdir / "in.jsonl", [{"message": d.text} for d in docs] + [{"message": "hi", "reply": "ok"}])
    recipe = {
        "dataset": "support",
        "sources": [{"path": "in.jsonl"}],
        "record": {"kind": "instruction", "prompt": "message", "completion": "reply"},
        "stages": [{"type": "pii"}],
        "output": {"validation_fraction": 0.0},
    }
    result = run(workdir, recipe)
    assert result.manifest.counts.quarantined == 3
    published = json.dumps(set_aside(Path(result.version_uri)))
    assert emails and not [email for email in emails if email in published]
    assert "<EMAIL_ADDRESS>" in published
    with sa.create_engine(f"sqlite:///{workdir / 'state.db'}").connect() as conn:
        queued = " ".join(
            conn.execute(sa.text("select payload from review_items where kind = 'quarantined'")).scalars()
        )
    assert all(email in queued for email in emails)  # annotators see what came in
    # ... if their role sees PII; a reviewer sees the input as published.
    from curation.review.auth import User
    from curation.review.views import item_view

    with sa.create_engine(f"sqlite:///{workdir / 'state.db'}").connect() as conn:
        items = [
            dict(row)
            for row in conn.execute(sa.text("select * from review_items where kind = 'quarantined'")).mappings()
        ]
    assert len(items) == 3
    for item in items:
        reviewer, pii_reviewer = item_view(item, User("rita", "reviewer")), item_view(item, User("pia", "pii-reviewer"))
        assert reviewer["redacted"] and "<EMAIL_ADDRESS>" in reviewer["raw"]
        assert not [email for email in emails if email in reviewer["raw"] + (reviewer["reason_detail"] or "")]
        assert not pii_reviewer["redacted"] and pii_reviewer["raw"] == json.loads(item["payload"])["record"]
    raw = " ".join(item_view(item, User("pia", "pii-reviewer"))["raw"] for item in items)
    assert all(email in raw for email in emails)
    # Label Studio tasks hold the input as published unless raw PII is asked for.
    from curation.review.labelstudio import export_tasks

    engine = sa.create_engine(f"sqlite:///{workdir / 'state.db'}")
    exported = json.dumps(export_tasks(engine, {"kind": "quarantined"}))
    assert "<EMAIL_ADDRESS>" in exported and not [email for email in emails if email in exported]
    assert all(email in json.dumps(export_tasks(engine, {"kind": "quarantined"}, include_pii=True)) for email in emails)


def test_allowed_values_are_left_as_they_are() -> None:
    pii = stage(allow=["cust-000001"])  # in any case: CUST-000001 is the bank's own test account
    prompts = ["Customer CUST-000001 and customer CUST-123456 asked about fees."]
    kept = pii(records(prompts)).kept["prompt"].to_pylist()
    assert kept == ["Customer CUST-000001 and customer <CUSTOMER_ID> asked about fees."]
    assert pii.rewrite_texts(prompts) == kept


def test_ner_fields_must_be_fields_the_stage_scans() -> None:
    from curation.stages.pii import PiiSettingError

    with pytest.raises(PiiSettingError, match=r"ner_fields names \['promt'\]"):
        stage(ner_fields=["promt"])  # fields left at the kind's default: prompt, completion
    assert stage(ner_fields=["prompt"]).ner_fields == {"prompt"}


def test_set_aside_details_keep_their_location_and_wording(workdir: Path) -> None:
    # Line 1690 of a file looks like a phone number, and "Input" like a name, to the analyzer.
    filler = [{"message": f"How do I close account {n}?", "reply": "Open Settings.", "amount": n} for n in range(1688)]
    rows = [
        *filler,
        {
            "message": "Refund for dana.whitfield@example.com",
            "customer": "Dr. Ekaterina Volkova",
            "question": "Ekaterina Volkova here, I live at 221B Baker Street. The courier left the package outside "
            "in the rain, everything is wet.",
            "reply": "Sorry about that. Please send photos of the damage and we will replace the items at no cost.",
            "amount": "twelve",
        },
    ]
    lines = [json.dumps(row) for row in rows] + ['{"message": "Write to omar.haddad@example.org", "reply": ']
    (workdir / "in.jsonl").write_text("\n".join(lines) + "\n")
    recipe = {
        "dataset": "support",
        "sources": [{"path": "in.jsonl"}],
        "input_schema": {"columns": {"message": "str", "reply": "str", "amount": "int"}},
        "record": {"kind": "instruction", "prompt": "message", "completion": "reply"},
        "stages": [{"type": "pii"}],
        "output": {"validation_fraction": 0.0},
    }
    version = Path(run(workdir, recipe).version_uri)
    aside = {row["reason"]: row for row in set_aside(version)}
    schema, unreadable = aside["schema"], aside["malformed_json"]
    # A validator's detail names the field and the rule, not the value: published as it was written.
    assert (
        schema["detail"]
        == f"{workdir / 'in.jsonl'}:1689: amount: Input should be a valid integer, unable to parse string as an integer"
    )
    assert "dana.whitfield" not in schema["record"] and "<EMAIL_ADDRESS>" in schema["record"]
    # Each value of a parsed row is scanned alone, as the stage scans a field (as one JSON text, a name was missed).
    assert json.loads(schema["record"])["question"].startswith("<PERSON> here")
    # A reader's detail can quote the input: scanned, all but its file:line.
    assert unreadable["detail"].startswith(f"{workdir / 'in.jsonl'}:1690: ")
    assert "omar.haddad" not in unreadable["record"] + unreadable["detail"]


def test_a_format_name_in_a_message_is_not_taken_for_a_name() -> None:
    # The model reads "JSON" as a person's name: the reader's messages were published "malformed <PERSON>".
    messages = [
        "in.jsonl:3: malformed JSON: \\ud800 is half of a UTF-16 surrogate pair, not a character",
        "in.jsonl:4: q: a JSON array, not a string; ask Maria Garcia",
    ]
    scrubbed = stage().rewrite_texts(messages)
    assert scrubbed[0] == messages[0]
    assert scrubbed[1] == "in.jsonl:4: q: a JSON array, not a string; ask <PERSON>"


def test_a_set_aside_row_is_scrubbed_one_record_one_redaction(monkeypatch: pytest.MonkeyPatch) -> None:
    from curation.pipeline import set_aside_scrub
    from schemas.records import set_aside_rows

    pii = stage()
    # As the model answers at times: the name seen in one value of the raw input, missed in the other
    # and in the reader's message, which quotes the line.
    line = {"message": "Refund for Dana Whitfield", "reply": "Sent to DANA\nWHITFIELD today", "amount": "x"}
    seen = ("PERSON", 11, 25, 0.9)
    monkeypatch.setattr(
        pii.analyzer, "analyze", lambda texts, *_: [[seen] if t == line["message"] else [] for t in texts]
    )
    table = set_aside_rows(
        ["r0", "r1"],
        source_array("files", "mem://input.jsonl", [1, 2]),
        "shape",
        "quarantined",
        "schema",
        ["mem://input.jsonl:1: cannot read 'Dana Whitfield'", "mem://input.jsonl:2: Dana Whitfield"],
        [json.dumps(line), "Dana Whitfield wrote"],
    )
    scrubbed = set_aside_scrub([pii])(table).to_pylist()
    assert json.loads(scrubbed[0]["record"]) == {
        **line,
        "message": "Refund for <PERSON>",
        "reply": "Sent to <PERSON> today",
    }
    assert scrubbed[0]["detail"] == "mem://input.jsonl:1: cannot read '<PERSON>'"
    # Another row is another record: what was found in the first is not looked for in it.
    assert scrubbed[1]["record"] == "Dana Whitfield wrote" and scrubbed[1]["detail"].endswith(": Dana Whitfield")


def test_near_duplicates_found_before_the_pii_stage_are_shown_redacted(workdir: Path) -> None:
    from curation.review.auth import User
    from curation.review.labelstudio import export_tasks
    from curation.review.views import item_view

    base = BILLING
    emails = ["dana.whitfield@example.com", "omar.haddad@example.org"]
    rows = [{"message": f"{base}. Write to {email}.", "reply": "Done, the address is updated."} for email in emails]
    write_jsonl(workdir / "in.jsonl", rows)

    def near_duplicate_items(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        recipe = {
            "dataset": "support",
            "sources": [{"path": "in.jsonl"}],
            "record": {"kind": "instruction", "prompt": "message", "completion": "reply"},
            "stages": stages,
            "output": {"validation_fraction": 0.0},
        }
        version = run(workdir, recipe, full_refresh=True).manifest.version
        with sa.create_engine(f"sqlite:///{workdir / 'state.db'}").connect() as conn:
            query = "select * from review_items where kind = 'near_duplicate' and version = :v"
            return [dict(row) for row in conn.execute(sa.text(query), {"v": version}).mappings()]

    # Near-dedup before PII: the flag quotes the raw texts, and the redacted ones beside them.
    (item,) = near_duplicate_items([{"type": "near_dedup", "threshold": 0.6}, {"type": "pii"}])
    payload = json.loads(item["payload"])
    assert emails[0] in payload["kept"]["text"] and emails[1] in payload["member"]["text"]
    reviewer, pii_reviewer = item_view(item, User("rita", "reviewer")), item_view(item, User("pia", "pii-reviewer"))
    diff = [segment.text for segment in reviewer["left"] + reviewer["right"]]
    shown = " ".join([reviewer["kept"]["text"], reviewer["member"]["text"], *diff])
    assert reviewer["redacted"] and "<EMAIL_ADDRESS>" in shown
    assert not [email for email in emails if email in shown]
    assert not pii_reviewer["redacted"] and pii_reviewer["member"]["text"] == payload["member"]["text"]
    engine = sa.create_engine(f"sqlite:///{workdir / 'state.db'}")
    exported = json.dumps(export_tasks(engine, {"kind": "near_duplicate", "version": item["version"]}))
    assert "<EMAIL_ADDRESS>" in exported and not [email for email in emails if email in exported]
    raw = json.dumps(export_tasks(engine, {"kind": "near_duplicate", "version": item["version"]}, include_pii=True))
    assert all(email in raw for email in emails)

    # PII before near-dedup: the texts the flag quotes are already redacted; nothing to add.
    (item,) = near_duplicate_items([{"type": "pii"}, {"type": "near_dedup", "threshold": 0.6}])
    payload = json.loads(item["payload"])
    assert "published_text" not in payload["member"] and "<EMAIL_ADDRESS>" in payload["member"]["text"]
    assert not item_view(item, User("rita", "reviewer"))["redacted"]


def test_near_duplicates_are_shown_as_every_later_pii_stage_redacts_them(workdir: Path) -> None:
    base = BILLING
    base += ", and please send the confirmation letter to the same address as soon as you can"
    sent = [("dana.whitfield@example.com", "CUST-204518"), ("omar.haddad@example.org", "CUST-311207")]
    rows = [
        {"message": f"{base}. Write to {email} on {cust}.", "reply": "Done, it is updated."} for email, cust in sent
    ]
    write_jsonl(workdir / "in.jsonl", rows)
    email = {"type": "pii", "entities": ["EMAIL_ADDRESS"]}
    customer = {"type": "pii", "entities": ["CUSTOMER_ID"], "recognizers": [CUSTOMER_ID]}
    near = {"type": "near_dedup", "threshold": 0.6}
    for stages in ([near, email, customer], [email, near, customer]):
        recipe = {
            "dataset": "support",
            "sources": [{"path": "in.jsonl"}],
            "record": {"kind": "instruction", "prompt": "message", "completion": "reply"},
            "stages": stages,
            "output": {"validation_fraction": 0.0},
        }
        version = run(workdir, recipe, full_refresh=True).manifest.version
        with sa.create_engine(f"sqlite:///{workdir / 'state.db'}").connect() as conn:
            query = "select payload from review_items where kind = 'near_duplicate' and version = :v"
            (payload,) = conn.execute(sa.text(query), {"v": version}).scalars()
        payload = json.loads(payload)
        member = payload["member"]
        published = [payload["kept"]["published_text"], member["published_text"], *member["published_fields"].values()]
        # What pii_2 redacts is redacted too, after pii where pii comes after near_dedup.
        assert not [value for pair in sent for value in pair if value in " ".join(published)], (stages, published)
        assert "<CUSTOMER_ID>" in member["published_text"] and "<EMAIL_ADDRESS>" in member["published_text"]


def document_image() -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", 28)
    image = Image.new("RGB", (900, 220), "white")
    draw = ImageDraw.Draw(image)
    for line, text in enumerate(
        ("Statement for account holder", "Email: dana.whitfield@example.com", "Total due: 120")
    ):
        draw.text((30, 30 + 60 * line), text, fill="black", font=font)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_a_record_quarantined_for_its_image_is_not_counted_redacted() -> None:
    batch = pa.table(
        {
            "id": ["img1"],
            "source": source_array("images", "mem://images.jsonl", [1]),
            "image": ["broken.png"],
            "question": ["Is dana.whitfield@example.com on it?"],
            "answer": ["no"],
            "image_bytes": pa.array([b"not an image"], pa.binary()),
        }
    )
    result = PiiRedaction(PiiConfig.model_validate({"type": "pii", "ocr": True}), "vqa")(batch)
    assert result.kept.num_rows == 0 and result.set_aside.to_pylist()[0]["reason"] == "bad_image"
    assert result.stats.get("records_redacted", 0) == 0 and result.stats.get("EMAIL_ADDRESS", 0) == 0


def test_ocr_fills_pii_boxes_in_document_images() -> None:
    import pytesseract
    from PIL import Image

    original = document_image()
    assert "dana.whitfield@example.com" in pytesseract.image_to_string(Image.open(io.BytesIO(original)))
    batch = pa.table(
        {
            "id": ["img0", "img1"],
            "source": source_array("images", "mem://images.jsonl", [1, 2]),
            "image": ["statement.png", "broken.png"],
            "question": ["What is the total due?", "What is shown?"],
            "answer": ["120", "nothing"],
            "image_bytes": pa.array([original, b"not an image"], pa.binary()),
        }
    )
    config = PiiConfig.model_validate({"type": "pii", "recognizers": [CUSTOMER_ID], "ocr": True})
    result = PiiRedaction(config, "vqa")(batch)
    assert result.kept["id"].to_pylist() == ["img0"]
    assert result.set_aside.to_pylist()[0]["reason"] == "bad_image"
    assert (
        result.set_aside.to_pylist()[0]["detail"]
        == "mem://images.jsonl:2: image_bytes: not a readable image (UnidentifiedImageError)"
    )
    redacted = Image.open(io.BytesIO(result.kept["image_bytes"][0].as_py()))
    assert redacted.format == "PNG" and redacted.size == (900, 220)
    text = pytesseract.image_to_string(redacted)
    assert "whitfield" not in text.lower() and "Statement for account holder" in text
    assert result.stats["image_EMAIL_ADDRESS"] == 1 and result.stats["images_redacted"] == 1
    # The box is filled: the e-mail's line is now mostly black where the text was.
    line = redacted.convert("L").crop((140, 95, 500, 120))
    assert sum(1 for p in line.getdata() if p < 50) > 0.8 * line.width * line.height


def _ocr_redacted(data: bytes, copies: int = 1) -> Any:
    """The PII stage with OCR run on a batch of ``copies`` records holding the image ``data``."""
    batch = pa.table(
        {
            "id": [f"q{n}" for n in range(copies)],
            "source": source_array("images", "mem://images.jsonl", list(range(1, copies + 1))),
            "image": ["statement.png"] * copies,
            "question": [f"Question {n} about the page?" for n in range(copies)],
            "answer": ["120"] * copies,
            "image_bytes": pa.array([data] * copies, pa.binary()),
        }
    )
    return PiiRedaction(PiiConfig.model_validate({"type": "pii", "ocr": True}), "vqa")(batch)


# Dark-grey text on a light background as a 16-bit scanner writes it; 8-bit values widened without
# scaling; a 12-bit scanner's. Pillow's own conversion to 8 bits clipped the first to a white page (OCR
# found nothing), and shifting by 8 bits made the second a black one.
@pytest.mark.parametrize(("dark", "light"), [(5140, 60000), (20, 230), (320, 3680)])
def test_a_16bit_scan_is_redacted_and_stays_16bit(dark: int, light: int) -> None:
    import numpy as np
    import pytesseract
    from PIL import Image

    from connectors.images import eight_bit

    # As the stage is handed it (the images connector publishes such a scan as 8-bit grey).
    grey = np.asarray(Image.open(io.BytesIO(document_image())).convert("L"))
    wide = Image.fromarray(np.where(grey < 128, dark, light).astype(np.uint16))
    out = io.BytesIO()
    wide.save(out, format="PNG")
    result = _ocr_redacted(out.getvalue())
    assert result.stats["images_redacted"] == 1 and result.stats["image_EMAIL_ADDRESS"] == 1
    redacted = Image.open(io.BytesIO(result.kept["image_bytes"][0].as_py()))
    assert redacted.mode == "I;16" and redacted.size == (900, 220)
    samples = np.asarray(redacted)
    assert samples[5, 5] == light  # the page keeps its 16-bit values where nothing was found
    seen = pytesseract.image_to_string(eight_bit(redacted)).lower()
    assert "whitfield" not in seen and "statement for account holder" in seen


def test_redaction_keeps_an_images_transparency() -> None:
    import numpy as np
    from PIL import Image

    from connectors.images import clean_image

    page = np.array(Image.open(io.BytesIO(document_image())).convert("RGBA"))
    page[:, 850:] = (0, 0, 0, 0)  # a transparent band whose hidden colour is black, as exporters leave it
    out = io.BytesIO()
    Image.fromarray(page).save(out, format="PNG")
    result = _ocr_redacted(clean_image(out.getvalue(), ["PNG"], 10**8).data)
    assert result.stats["images_redacted"] == 1
    redacted = np.asarray(Image.open(io.BytesIO(result.kept["image_bytes"][0].as_py())))
    assert redacted.shape == (220, 900, 4)
    assert (redacted[:, 850:, 3] == 0).all() and (redacted[:, :850, 3] == 255).all()
    # A palette picture with a colour drawn transparent (a PNG-8 logo) keeps it too.
    palette = Image.open(io.BytesIO(document_image())).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    out = io.BytesIO()
    palette.save(out, format="PNG", transparency=palette.getpixel((0, 0)))
    result = _ocr_redacted(clean_image(out.getvalue(), ["PNG"], 10**8).data)
    assert result.stats["images_redacted"] == 1
    redacted = Image.open(io.BytesIO(result.kept["image_bytes"][0].as_py()))
    assert redacted.mode == "RGBA" and redacted.getpixel((5, 5))[3] == 0


def test_a_redacted_jpeg_keeps_the_quality_the_connector_wrote_it_at() -> None:
    from PIL import Image

    from connectors.images import clean_image

    out = io.BytesIO()
    Image.open(io.BytesIO(document_image())).convert("RGB").save(out, format="JPEG", quality=95)
    cleaned = clean_image(out.getvalue(), ["JPEG"], 10**8).data
    result = _ocr_redacted(cleaned)
    assert result.stats["images_redacted"] == 1
    redacted = Image.open(io.BytesIO(result.kept["image_bytes"][0].as_py()))
    assert redacted.format == "JPEG"
    assert redacted.quantization == Image.open(io.BytesIO(cleaned)).quantization  # the same quality


def test_one_image_several_records_ask_about_is_read_once_and_counted_for_each_whatever_the_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import curation.stages.pii as stage

    reads: list[bytes] = []
    real = stage.redact_image
    monkeypatch.setattr(stage, "redact_image", lambda data, *more: reads.append(data) or real(data, *more))
    result = _ocr_redacted(document_image(), copies=3)
    published = result.kept["image_bytes"].to_pylist()
    assert len(published) == 3 and len(set(published)) == 1 and published[0] != document_image()
    assert len(reads) == 1  # one OCR for the three records
    # Counted per record, as text is: counted per image of a batch, two batches said 2 where one said 1.
    assert result.stats["images_redacted"] == 3 and result.stats["image_EMAIL_ADDRESS"] == 3
    apart = [_ocr_redacted(document_image(), copies=1).stats for _ in range(3)]
    assert sum(found["images_redacted"] for found in apart) == result.stats["images_redacted"]


def run_again(folder: Path, recipe: dict[str, Any]) -> Any:
    """A second run over the same input that must reprocess it (incremental runs skip seen input)."""
    import inspect

    from curation.pipeline import run_recipe
    from schemas.config import load_recipe
    from tests.helpers import write_recipe

    loaded = load_recipe(write_recipe(folder, recipe))
    if "full_refresh" in inspect.signature(run_recipe).parameters:
        return run_recipe(loaded, full_refresh=True)
    return run_recipe(loaded)


UNDO_PROMPT = "Reach me at 212-555-0187 or at dana@example.org."
UNDO_RECIPE = {
    "dataset": "support",
    "sources": [{"path": "in"}],
    "record": {"kind": "instruction", "prompt": "message", "completion": "reply"},
    "stages": [{"type": "pii", "recognizers": [CUSTOMER_ID]}],
    "output": {"validation_fraction": 0.0},
}


def published_then_marked_not_pii(workdir: Path) -> Any:
    """v1 of a record whose phone number is an uncertain detection, which an annotator then marks not PII."""
    from curation.review.decisions import Edit, decide

    write_jsonl(workdir / "in" / "a.jsonl", [{"message": UNDO_PROMPT, "reply": "Will do."}])
    first = run(workdir, UNDO_RECIPE)
    assert outputs(Path(first.version_uri))[0]["prompt"] == "Reach me at <PHONE_NUMBER> or at <EMAIL_ADDRESS>."
    engine = sa.create_engine(f"sqlite:///{workdir / 'state.db'}")
    with engine.connect() as conn:
        item_id, payload = conn.execute(sa.text("select item_id, payload from review_items where kind = 'pii'")).one()
    [span] = json.loads(payload)["spans"]
    decide(engine, item_id, "annotator", "edit", Edit(not_pii=[("prompt", span["start"], span["end"])]))
    return first


def test_annotator_undo_reaches_the_next_run(workdir: Path) -> None:
    published_then_marked_not_pii(workdir)
    second = run_again(workdir, UNDO_RECIPE)
    assert outputs(Path(second.version_uri))[0]["prompt"] == "Reach me at 212-555-0187 or at <EMAIL_ADDRESS>."
    assert second.manifest.stats["stages"]["pii"]["review_restored"] == 1


def test_a_span_marked_pii_again_on_the_page_is_redacted_by_the_next_run_until_undone(workdir: Path) -> None:
    # The page could set a "not PII" mark aside only by undoing the decision that made it: "PII again" on
    # its span is stored as the Label Studio import stores it, and the next run redacts the span again.
    import re

    from fastapi.testclient import TestClient

    from curation.review.app import create_app
    from curation.review.auth import add_user
    from curation.review.decisions import not_pii_in_force
    from curation.review.queue import list_items
    from schemas.config import load_recipe

    published_then_marked_not_pii(workdir)
    marked_in_clear = run(workdir, UNDO_RECIPE)
    assert outputs(Path(marked_in_clear.version_uri))[0]["prompt"] == "Reach me at 212-555-0187 or at <EMAIL_ADDRESS>."
    recipe = load_recipe(workdir / "recipe.yaml")
    engine = sa.create_engine(recipe.state)
    add_user(engine, "pia", "pii-reviewer", "a long enough password")
    client = TestClient(create_app(recipe.state, [recipe]), base_url="https://testserver")
    login = client.get("/login").text
    form = {"username": "pia", "password": "a long enough password"}
    client.post("/login", data={**form, "csrf_token": re.search(r'name="csrf_token" value="([^"]+)"', login)[1]})
    (item,) = list_items(engine, kind="pii")
    item_id, marked = item["item_id"], not_pii_in_force(engine, item["item_id"])
    [(name, start, end)] = marked
    page = client.get(f"/items/{item_id}").text
    key = f"{name}:{start}:{end}"
    assert f'name="pii_again" value="{key}"' in page and f'name="not_pii" value="{key}"' not in page
    csrf, seen = (re.search(rf'name="{field}" value="([^"]*)"', page)[1] for field in ("csrf_token", "seen"))
    posted = client.post(
        f"/items/{item_id}/decide",
        data={"csrf_token": csrf, "seen": seen, "action": "edit", "pii_again": key},
        follow_redirects=False,
    )
    assert posted.status_code == 303 and not_pii_in_force(engine, item_id) == set()
    second = run(workdir, UNDO_RECIPE)
    assert outputs(Path(second.version_uri))[0]["prompt"] == "Reach me at <PHONE_NUMBER> or at <EMAIL_ADDRESS>."
    # Undone (`u`): the span is not PII again, and published in clear.
    assert client.post("/undo", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    assert not_pii_in_force(engine, item_id) == marked
    third = run(workdir, UNDO_RECIPE)
    assert outputs(Path(third.version_uri))[0]["prompt"] == "Reach me at 212-555-0187 or at <EMAIL_ADDRESS>."


def test_a_not_pii_mark_is_counted_as_an_edit_read_again_as_carried(workdir: Path) -> None:
    # The mark is an edit decision: the carry counted the line it put the span back in as `review_edited`, the
    # review stage did not count the record read again with it as `edited`.
    published_then_marked_not_pii(workdir)
    write_jsonl(workdir / "in" / "b.jsonl", [{"message": "Thanks!", "reply": "Welcome."}])
    carried = run(workdir, UNDO_RECIPE)
    assert carried.manifest.counts.carried == 1 and carried.manifest.stats["carry"]["review_edited"] == 1
    again = run(workdir, UNDO_RECIPE, full_refresh=True)
    stages = again.manifest.stats["stages"]
    assert again.manifest.counts.input == 2 and stages["pii"]["review_restored"] == 1
    assert stages.get("review", {}).get("edited") == 1, stages


def test_a_not_pii_mark_holds_only_while_its_place_holds_the_text_marked(workdir: Path) -> None:
    # A keyed SQL row edited in place keeps its id: the mark's offsets alone left the new phone number at
    # that place in clear, and queued nothing for review.
    from datetime import timedelta

    from curation.review.decisions import Edit, decide
    from tests.test_sql import START, fill, recipe, tickets

    url = f"sqlite:///{workdir}/crm.db"
    fill(url, 1, 2)
    crm = sa.create_engine(url)
    with crm.begin() as db:
        db.execute(
            tickets.update().where(tickets.c.id == 1).values(subject="Reach me at 212-555-0187 or at dana@example.org.")
        )
    spec = {
        **recipe(url, table="tickets", cursor="updated_at", key=["id"]),
        "stages": [{"type": "pii", "recognizers": [CUSTOMER_ID]}],
    }
    first = run(workdir, spec)
    assert "Reach me at <PHONE_NUMBER> or at <EMAIL_ADDRESS>." in [
        line["prompt"] for line in outputs(Path(first.version_uri))
    ]
    state = sa.create_engine(f"sqlite:///{workdir / 'state.db'}")
    with state.connect() as db:
        item_id, payload = db.execute(sa.text("SELECT item_id, payload FROM review_items WHERE kind = 'pii'")).one()
    [span] = json.loads(payload)["spans"]
    decide(state, item_id, "annotator", "edit", Edit(not_pii=[("prompt", span["start"], span["end"])]))
    with crm.begin() as db:  # the same number again: the mark holds
        db.execute(
            tickets.update()
            .where(tickets.c.id == 1)
            .values(subject="Reach me at 212-555-0187 or at dana@example.org.", updated_at=START + timedelta(days=1))
        )
    second = run(workdir, spec)
    assert "Reach me at 212-555-0187 or at <EMAIL_ADDRESS>." in [
        line["prompt"] for line in outputs(Path(second.version_uri))
    ]
    with crm.begin() as db:  # another number at the same place: redacted, as any
        db.execute(
            tickets.update()
            .where(tickets.c.id == 1)
            .values(subject="Reach me at 917-555-0143 or at dana@example.org.", updated_at=START + timedelta(days=2))
        )
    third = run(workdir, spec)
    prompts = [line["prompt"] for line in outputs(Path(third.version_uri))]
    assert "Reach me at <PHONE_NUMBER> or at <EMAIL_ADDRESS>." in prompts
    assert not any("917-555-0143" in prompt for prompt in prompts)


def test_a_not_pii_mark_holds_only_in_the_pii_stage_whose_item_it_was(workdir: Path) -> None:
    from curation.review.decisions import Edit, decide

    # pii_2 scans the prompt as pii left it: its uncertain customer id stands at 32..43 there, where
    # the prompt as read holds the second address. The mark is on pii_2's text: pii must not apply it.
    message = "dana.whitfield.refunds@acme.org ab@cdef.org CUST-204518"
    write_jsonl(workdir / "in" / "a.jsonl", [{"message": message, "reply": "Will do."}])
    recipe = {
        **UNDO_RECIPE,
        "stages": [
            {"type": "pii", "fields": ["prompt"], "entities": ["EMAIL_ADDRESS"]},
            {"type": "pii", "fields": ["prompt"], "entities": ["CUSTOMER_ID"], "recognizers": [CUSTOMER_ID]},
        ],
    }
    first = run(workdir, recipe)
    assert outputs(Path(first.version_uri))[0]["prompt"] == "<EMAIL_ADDRESS> <EMAIL_ADDRESS> <CUSTOMER_ID>"
    engine = sa.create_engine(f"sqlite:///{workdir / 'state.db'}")
    with engine.connect() as conn:
        item_id, stage_name, payload = conn.execute(
            sa.text("select item_id, stage, payload from review_items where kind = 'pii'")
        ).one()
    [span] = json.loads(payload)["spans"]
    assert (stage_name, span["start"], span["end"]) == ("pii_2", 32, 43) and message[32:43] == "ab@cdef.org"
    decide(engine, item_id, "annotator", "edit", Edit(not_pii=[("prompt", span["start"], span["end"])]))
    second = run_again(workdir, recipe)
    assert outputs(Path(second.version_uri))[0]["prompt"] == "<EMAIL_ADDRESS> <EMAIL_ADDRESS> CUST-204518"
    stats = second.manifest.stats["stages"]
    assert stats["pii_2"]["review_restored"] == 1 and not stats["pii"].get("review_restored")


@pytest.mark.parametrize(
    ("marked", "carried"),
    [
        (["pii"], "About <CUSTOMER_ID>: call 212-555-0187 or mail <EMAIL_ADDRESS>."),
        (["pii", "pii_2"], "About CUST-204518: call 212-555-0187 or mail <EMAIL_ADDRESS>."),
    ],
)
def test_a_carried_record_marked_not_pii_keeps_what_the_later_pii_stages_redact(
    workdir: Path, marked: list[str], carried: str
) -> None:
    from curation.review.decisions import Edit, decide

    # pii flags the phone number, pii_2 the customer id (and redacts the address for sure). A mark on pii's
    # item rebuilds the text pii made: pii_2 must redact it again, with its own marks.
    message = "About CUST-204518: call 212-555-0187 or mail dana@example.org."
    write_jsonl(workdir / "in" / "a.jsonl", [{"message": message, "reply": "Will do."}])
    recipe = {
        **UNDO_RECIPE,
        "stages": [
            {"type": "pii", "fields": ["prompt"], "entities": ["PHONE_NUMBER"]},
            {
                "type": "pii",
                "fields": ["prompt"],
                "entities": ["CUSTOMER_ID", "EMAIL_ADDRESS"],
                "recognizers": [CUSTOMER_ID],
            },
        ],
    }
    first = run(workdir, recipe)
    published = "About <CUSTOMER_ID>: call <PHONE_NUMBER> or mail <EMAIL_ADDRESS>."
    assert outputs(Path(first.version_uri))[0]["prompt"] == published
    engine = sa.create_engine(f"sqlite:///{workdir / 'state.db'}")
    with engine.connect() as conn:
        items = conn.execute(sa.text("select item_id, stage, payload from review_items where kind = 'pii'")).all()
    assert sorted(stage for _, stage, _ in items) == ["pii", "pii_2"]
    for item_id, _, payload in (item for item in items if item[1] in marked):
        [span] = json.loads(payload)["spans"]
        decide(engine, item_id, "annotator", "edit", Edit(not_pii=[("prompt", span["start"], span["end"])]))
    # A scheduled run: the record of v1 is carried, rebuilt from the items marked.
    write_jsonl(workdir / "in" / "b.jsonl", [{"message": "Thanks!", "reply": "Welcome."}])
    second = run(workdir, recipe)
    prompts = {row["prompt"] for row in outputs(Path(second.version_uri))}
    assert second.manifest.counts.carried == 1
    assert prompts == {carried, "Thanks!"}


def test_a_carried_record_marked_not_pii_is_cleaned_by_a_clean_stage_after_pii(workdir: Path) -> None:
    from curation.review.decisions import Edit, decide

    # The published line was cleaned after pii: the text rebuilt from pii's flag must be cleaned too.
    write_jsonl(workdir / "in" / "a.jsonl", [{"message": f"<b>{UNDO_PROMPT}</b>", "reply": "Will do."}])
    recipe = {**UNDO_RECIPE, "stages": [*UNDO_RECIPE["stages"], {"type": "clean"}]}
    first = run(workdir, recipe)
    assert outputs(Path(first.version_uri))[0]["prompt"] == "Reach me at <PHONE_NUMBER> or at <EMAIL_ADDRESS>."
    engine = sa.create_engine(f"sqlite:///{workdir / 'state.db'}")
    with engine.connect() as conn:
        item_id, payload = conn.execute(sa.text("select item_id, payload from review_items where kind = 'pii'")).one()
    [span] = json.loads(payload)["spans"]
    decide(engine, item_id, "annotator", "edit", Edit(not_pii=[("prompt", span["start"], span["end"])]))
    write_jsonl(workdir / "in" / "b.jsonl", [{"message": "Thanks!", "reply": "Welcome."}])
    second = run(workdir, recipe)
    prompts = {row["prompt"] for row in outputs(Path(second.version_uri))}
    assert prompts == {"Reach me at 212-555-0187 or at <EMAIL_ADDRESS>.", "Thanks!"}


def test_annotator_undo_reaches_the_carried_copy_of_a_record(workdir: Path) -> None:
    published_then_marked_not_pii(workdir)
    recipe = UNDO_RECIPE
    # A scheduled run: new input only; the record of v1 is carried, with the span put back.
    write_jsonl(workdir / "in" / "b.jsonl", [{"message": "Call 212-555-0199 for dana@example.org.", "reply": "OK."}])
    second = run(workdir, recipe)
    prompts = sorted(row["prompt"] for row in outputs(Path(second.version_uri)))
    assert prompts == ["Call <PHONE_NUMBER> for <EMAIL_ADDRESS>.", "Reach me at 212-555-0187 or at <EMAIL_ADDRESS>."]
    assert second.manifest.counts.carried == 1 and second.manifest.stats["carry"]["review_edited"] == 1
    # The next carry finds the line as decided: copied as it is.
    write_jsonl(workdir / "in" / "c.jsonl", [{"message": "Thanks!", "reply": "Welcome."}])
    third = run(workdir, recipe)
    assert third.manifest.counts.carried == 2 and third.manifest.stats["carry"]["review_edited"] == 0
    assert "Reach me at 212-555-0187 or at <EMAIL_ADDRESS>." in {r["prompt"] for r in outputs(Path(third.version_uri))}


def test_a_flag_rebuilds_its_field_with_only_the_spans_still_redacted() -> None:
    from curation.review.decisions import restored_text

    text = "Call 212-555-0187, mail dana@example.org."
    phone = {"start": 5, "end": 17, "placeholder": "<PHONE_NUMBER>"}
    mail = {"start": 24, "end": 40, "placeholder": "<EMAIL_ADDRESS>"}
    published = "Call <PHONE_NUMBER>, mail <EMAIL_ADDRESS>."
    flag = {"field": "prompt", "original": text, "redacted": published, "spans": [phone], "redactions": [phone, mail]}
    assert restored_text(flag, {(5, 17)}) == "Call 212-555-0187, mail <EMAIL_ADDRESS>."
    assert restored_text(flag, set()) == published
    # Flags written before they held every redaction: rebuilt only when the uncertain spans were all of them.
    older = {key: value for key, value in flag.items() if key != "redactions"}
    assert restored_text(older, {(5, 17)}) is None
    alone = {**older, "spans": [phone, mail]}
    assert restored_text(alone, {(24, 40)}) == "Call <PHONE_NUMBER>, mail dana@example.org."


def test_check_reports_a_pii_stage_that_cannot_work(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from curation.cli import app
    from tests.helpers import write_recipe

    monkeypatch.delenv("CURATION_PII_SECRET", raising=False)
    write_jsonl(workdir / "in.jsonl", [{"text": "hello"}])
    recipe = write_recipe(
        workdir,
        {
            "dataset": "docs",
            "sources": [{"path": "in.jsonl"}],
            "record": {"kind": "document"},
            "stages": [{"type": "pii", "operators": {"PERSON": "pseudonym"}}],
        },
    )
    result = CliRunner().invoke(app, ["check", str(recipe)])
    assert result.exit_code == 2
    assert "recipe error" in result.output and "CURATION_PII_SECRET" in result.output


def test_stage_ships_to_ray_workers_without_its_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle
    import types

    from curation.pii_engine import default_workers

    pii = stage()
    shipped = pickle.dumps(pii)
    assert len(shipped) < 10_000  # settings only: each worker builds (or inherits) the analyzer itself
    copy = pickle.loads(shipped)
    assert copy(records(["Write to dana@example.org"])).kept["prompt"][0].as_py() == "Write to <EMAIL_ADDRESS>"
    # Inside Ray, which already runs one copy of the stage per core, the stage adds no processes.
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: True))
    assert default_workers() == 1 and pii.loads_model


def test_a_name_in_a_field_of_json_lists_or_objects_is_redacted_and_the_json_stays_valid(workdir: Path) -> None:
    # A column of lists or objects reaches a record field as JSON text. Scanned as one text, the model
    # missed a name between JSON's quotes and commas that it finds in the same words alone.
    write_jsonl(
        workdir / "faq.jsonl",
        [
            {"q": "Who called?", "notes": ["Call Daniel Okafor tomorrow.", 'He said "see 4111 1111 1111 1111"']},
            {"q": "Which contact?", "notes": {"who": "Call Daniel Okafor tomorrow.", "path": "C:\\tmp\nnext"}},
        ],
    )
    spec = {
        "dataset": "faq",
        "sources": [{"path": "faq.jsonl"}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "notes"},
        "stages": [{"type": "pii"}],
        "output": {"validation_fraction": 0},
    }
    result = run(workdir, spec)
    published = {line["prompt"]: json.loads(line["completion"]) for line in outputs(Path(result.version_uri))}
    assert published == {
        "Who called?": ["Call <PERSON> tomorrow.", 'He said "see <CREDIT_CARD>"'],
        "Which contact?": {"who": "Call <PERSON> tomorrow.", "path": "C:\\tmp\nnext"},
    }


def test_json_text_is_redacted_string_by_string_escapes_and_numbers_included(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CURATION_PII_SECRET", SECRET)
    # \u escapes and \" make a string's characters and its JSON text's differ: offsets are mapped back,
    # the placeholder is written as JSON writes it, and a number found (a card) becomes a string.
    notes = json.dumps({"note": "Write to Zoë Müller today", "Daniel Okafor": 4111111111111111, "phone": "555-0199"})
    batch = records(["Zoë Müller asked about the refund."], completion=notes)
    pii = stage(operators={"PERSON": "pseudonym", "CREDIT_CARD": "mask"}, mask_char='"')
    result = pii(batch)
    person = pii.placeholder("pseudonym", "PERSON", "Zoë Müller")
    assert result.kept["prompt"][0].as_py() == f"{person} asked about the refund."
    assert json.loads(result.kept["completion"][0].as_py()) == {
        "note": f"Write to {person} today",  # the same pseudonym as in the prompt: the value, not its escapes
        pii.placeholder("pseudonym", "PERSON", "Daniel Okafor"): '"' * 16,
        "phone": "<PHONE_NUMBER>",  # its key is the context word that makes a local number a phone number
    }
    # A flag's spans are places in the field's JSON text, so an annotator's undo and a carried copy's
    # rebuild take the same places.
    notes = json.dumps(["Reach me at 212-555-0187"])
    flagged = stage()(records(["Hello"], completion=notes))
    payload = json.loads(flagged.flags["payload"][0].as_py())
    [span] = payload["spans"]
    assert notes[span["start"] : span["end"]] == "212-555-0187" and payload["original"] == notes
    undone = {"r0": {("completion", span["start"], span["end"])}}
    again = PiiRedaction(pii.config, "instruction", undone=undone, analyzer=pii.analyzer)(
        records(["Hello"], completion=notes)
    )
    assert again.kept["completion"][0].as_py() == notes and again.stats["review_restored"] == 1


def test_a_quarantined_row_has_its_numbers_and_keys_scrubbed_too(workdir: Path) -> None:
    # The raw input of a row the reader parsed was scrubbed string value by string value: a card held
    # as a JSON number, and a name that is a key, were published in clear in set_aside/.
    write_jsonl(
        workdir / "faq.jsonl",
        [
            {"q": "Card?", "a": "Sent.", "amount": "n/a", "card": 4111111111111111, "Call Daniel Okafor tomorrow.": 1},
            {"q": "Hello?", "a": "Hi.", "amount": 2.5, "card": 1},
        ],
    )
    spec = {
        "dataset": "faq",
        "sources": [{"path": "faq.jsonl"}],
        "input_schema": {"columns": {"q": "str", "a": "str", "amount": "float"}},
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "stages": [{"type": "pii"}],
        "output": {"validation_fraction": 0},
    }
    result = run(workdir, spec)
    [row] = set_aside(Path(result.version_uri))
    assert row["reason"] == "schema"
    record = json.loads(row["record"])
    assert record["card"] == "<CREDIT_CARD>" and "Call <PERSON> tomorrow." in record, record
    assert "4111" not in row["record"] and "Okafor" not in row["record"]


@pytest.mark.parametrize(
    "stages",
    [
        [{"type": "clean"}, {"type": "pii"}],
        [{"type": "pii", "entities": ["PERSON"]}, {"type": "clean"}, {"type": "pii"}],
    ],
)
def test_a_set_aside_row_is_cleaned_as_the_records_before_it_is_scrubbed(workdir: Path, stages: list) -> None:
    # PII split by markup, or written with an HTML entity, is found once a clean stage has rewritten
    # it: redacted on the records, it was published in clear in set_aside/, scrubbed on its raw text.
    held = "<b>415</b>-555-0132, maria&#64;example.com"
    lines = [
        {"q": f"Call {held}", "a": "ok", "amount": 1.5},
        {"q": f"Call {held}", "a": "a &quot;quote&quot;", "amount": "n/a"},  # quarantined by the schema
    ]
    (workdir / "faq.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in lines) + '{"q": "Call ' + held + '", broken\n'
    )
    spec = {
        "dataset": "faq",
        "sources": [{"path": "faq.jsonl"}],
        "input_schema": {"columns": {"q": "str", "a": "str", "amount": "float"}},
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "stages": stages,
        "output": {"validation_fraction": 0},
    }
    result = run(workdir, spec)
    [published] = outputs(Path(result.version_uri))
    assert published["prompt"] == "Call <PHONE_NUMBER>, <EMAIL_ADDRESS>", published
    rows = {row["reason"]: row["record"] for row in set_aside(Path(result.version_uri))}
    assert sorted(rows) == ["malformed_json", "schema"]
    for record in rows.values():
        assert "555-0132" not in record and "maria" not in record, record
        assert "<PHONE_NUMBER>" in record and "<EMAIL_ADDRESS>" in record, record
    # The row the reader parsed stays JSON, its strings cleaned as the stage cleans a field.
    assert json.loads(rows["schema"])["a"] == 'a "quote"'


@pytest.mark.parametrize(
    ("stages", "redacted"),
    [([{"type": "clean"}, {"type": "pii"}], [2, 3]), ([{"type": "pii"}], [3])],  # markup: found once cleaned
)
def test_a_set_aside_line_that_is_a_json_string_stays_one_and_its_pii_is_redacted(
    workdir: Path, stages: list, redacted: list[int]
) -> None:
    # A line holding a JSON string (not an object) was cleaned and scanned as text: `&quot;` decoded between its
    # quotes broke its JSON, and a name written with escapes (`Jos\u00e9`) was missed.
    lines = [
        json.dumps({"q": "Hello?", "a": "Hi."}),
        json.dumps("Call &quot;Maria Garcia&quot; at <b>415</b>-555-0132"),
        json.dumps("Write to Jos\u00e9 Garc\u00eda\nat 415-555-0132"),
    ]
    (workdir / "faq.jsonl").write_text("".join(line + "\n" for line in lines))
    spec = {
        "dataset": "faq",
        "sources": [{"path": "faq.jsonl"}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "stages": stages,
        "output": {"validation_fraction": 0},
    }
    rows = set_aside(Path(run(workdir, spec).version_uri))
    assert [row["source"]["line"] for row in rows] == [2, 3]
    for row in rows:
        text = json.loads(row["record"])
        assert isinstance(text, str), row["record"]
        if row["source"]["line"] in redacted:
            assert "<PERSON>" in text and "<PHONE_NUMBER>" in text, text
            assert "Garc" not in text and "555-0132" not in text, text


def test_a_set_aside_row_without_pii_is_published_as_read_whatever_a_clean_stage_makes_of_it(workdir: Path) -> None:
    # A clean stage before the PII stage rewrote every set-aside row, PII or not: the control character the reader
    # names was gone, half a surrogate pair made U+FFFD, spacing collapsed (the detail's column no longer matched).
    # Its rewriting finds PII; only a row in which it does is published as cleaned and redacted.
    held = '{"q": "Call <b>415</b>-555-0132", broken'
    lines = [
        json.dumps({"q": "Hello?", "a": "Hi.", "amount": 1}),
        '{"q": "raw ctrl \x07 and &amp;", "a": "z", "amount": 1}',
        json.dumps({"q": "lone \ud800 surrogate &amp;", "a": "y", "amount": 1}),
        json.dumps({"q": "two  spaces &amp; <i>more</i>", "a": "w", "amount": "n/a"}),
        held,
    ]
    (workdir / "faq.jsonl").write_text("".join(line + "\n" for line in lines))
    published = {}
    for stages in ([{"type": "pii"}], [{"type": "clean"}, {"type": "pii"}]):
        spec = {
            "dataset": f"faq{len(stages)}",
            "sources": [{"path": "faq.jsonl"}],
            "input_schema": {"columns": {"q": "str", "a": "str", "amount": "float"}},
            "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
            "stages": stages,
            "output": {"validation_fraction": 0},
        }
        rows = set_aside(Path(run(workdir, spec).version_uri))
        published[len(stages)] = {row["source"]["line"]: (row["record"], row["detail"]) for row in rows}
    assert sorted(published[2]) == [2, 3, 4, 5]
    for line in (2, 3, 4):
        assert published[2][line] == published[1][line] and published[2][line][0] == lines[line - 1]
    assert published[2][5][0] == '{"q": "Call <PHONE_NUMBER>", broken', published[2][5]


@pytest.mark.parametrize("stages", [[{"type": "pii"}], [{"type": "clean"}, {"type": "pii"}]])
def test_a_name_found_in_a_set_aside_row_is_redacted_in_its_detail_and_the_runs_error(
    workdir: Path, stages: list
) -> None:
    # A detail a clean stage changed but nothing was redacted in was scanned again alone, as read: the name found in
    # its row's input ("Maria Garcia") was no longer looked for in it. And where a value found elsewhere in the row
    # ('title="maria', taken for a place) overlapped the name, the rest of the name stayed in clear.
    quoted = '<span title="maria garcia">hi</span>'
    rows = [{"q": "ok fine", "a": "Thanks."}, {"q": quoted, "a": "Maria Garcia wrote this."}]
    (workdir / "faq.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = {
        "dataset": "faq",
        "sources": [{"path": "faq.jsonl"}],
        "record": {
            "kind": "instruction",
            "prompt": "{% set m = {'x': 1} %}{{ q if q.startswith('ok') else m[q] }}",
            "completion": "a",
        },
        "stages": stages,
        "output": {"validation_fraction": 0},
    }
    [row] = set_aside(Path(run(workdir, spec).version_uri))
    assert row["reason"] == "template" and "has no attribute '<span <" in row["detail"], row
    for text in (row["record"], row["detail"]):
        assert "garcia" not in text.lower(), text
    # Every record failing so, the run fails quoting the detail as published.
    (workdir / "faq.jsonl").write_text(json.dumps(rows[1]) + "\n")
    with pytest.raises(RecipeError, match="failed on every record") as failed:
        run(workdir, {**spec, "dataset": "faq2"})
    assert "has no attribute '<span <" in str(failed.value) and "garcia" not in str(failed.value).lower()


def test_a_missing_column_the_run_quotes_is_redacted_as_its_set_aside_row(workdir: Path) -> None:
    # Every record lacking a column, the run failed quoting the first one's detail as read: here a one-column header
    # (a ';'-separated file read with ','), which holds the file's first line. Check quoted it redacted.
    (workdir / "faq.csv").write_text("Call Maria Garcia at 415-555-0132;hello\nx;y\n")
    spec = {
        "dataset": "faq",
        "sources": [{"path": "faq.csv"}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "stages": [{"type": "pii"}],
        "output": {"validation_fraction": 0},
    }
    with pytest.raises(RecipeError, match="lack a column the recipe names") as failed:
        run(workdir, spec)
    message = str(failed.value)
    assert "the header is one column, 'Call <PERSON> at <PHONE_NUMBER>;hello'" in message, message
    assert "Garcia" not in message and "555-0132" not in message, message


def test_a_clean_stage_rewrites_each_string_of_a_long_set_aside_line_in_its_place() -> None:
    # Each changed string was put in by slicing the whole line anew: 9 s for a line of 900 KB. Now put in at once,
    # each string in its own place, whatever the escapes and lengths before it.
    row = {f"k{n} &amp;": f"<b>{n}</b> &amp; \u00e9" if n % 3 else f"kept {n}" for n in range(3_000)}
    lines = [json.dumps({**row, "n": 1}), json.dumps(["a &amp; b", 2, {"c": "<i>d</i>"}]), json.dumps("&quot;e&quot;")]
    out = string_by_string(Clean(["q"]).rewrite_texts)(lines, [0, 1, 2])
    expected = {
        key: f"{key.split()[0][1:]} & \u00e9" if value.startswith("<b>") else value for key, value in row.items()
    }
    assert json.loads(out[0]) == {**expected, "n": 1}
    assert json.loads(out[1]) == ["a & b", 2, {"c": "d"}]
    assert json.loads(out[2]) == '"e"'


def test_a_clean_stage_after_the_last_pii_stage_leaves_set_aside_rows_as_they_were(workdir: Path) -> None:
    # Only the stages up to the last PII one rewrite a set-aside row: after it nothing is left to redact,
    # so the raw input is published as without a clean stage, markup and all.
    line = '{"q": "Ask Maria Lopez about <i>billing</i>", broken'
    (workdir / "faq.jsonl").write_text('{"q": "Hello?", "a": "Hi."}\n' + line + "\n")
    published = []
    for stages in ([{"type": "pii"}], [{"type": "pii"}, {"type": "clean"}]):
        spec = {
            "dataset": f"faq{len(stages)}",
            "sources": [{"path": "faq.jsonl"}],
            "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
            "stages": stages,
            "output": {"validation_fraction": 0},
        }
        version = Path(run(workdir, spec).version_uri)
        published.append(b"".join(path.read_bytes() for path in sorted((version / "set_aside").glob("*.jsonl"))))
    assert published[0] == published[1]
    [row] = [json.loads(text) for text in published[0].decode().splitlines()]
    assert row["record"] == line.replace("Maria Lopez", "<PERSON>")


def test_a_line_with_half_a_surrogate_pair_is_quarantined_scrubbed_and_the_run_goes_on(workdir: Path) -> None:
    # The reader quarantines the line (malformed JSON), yet Python's json reads it: its strings held a
    # lone surrogate, on which spaCy failed, and the whole run with it.
    (workdir / "faq.jsonl").write_text(
        '{"q": "Hello?", "a": "Hi."}\n{"q": "Odd \\ud800 from Maria Garcia, maria@example.com", "a": "ok"}\n'
    )
    spec = {
        "dataset": "faq",
        "sources": [{"path": "faq.jsonl"}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "stages": [{"type": "pii"}],
        "output": {"validation_fraction": 0},
    }
    result = run(workdir, spec)
    [row] = set_aside(Path(result.version_uri))
    assert row["reason"] == "malformed_json" and "\\ud800" in row["record"]
    assert "maria@example.com" not in row["record"] and "<EMAIL_ADDRESS>" in row["record"]
    assert [line["prompt"] for line in outputs(Path(result.version_uri))] == ["Hello?"]


def test_a_quarantined_row_is_published_and_shown_as_every_pii_stage_redacts_it(workdir: Path) -> None:
    # Set-aside rows were scrubbed by the first PII stage only: the phone number the second one
    # redacts was published in clear in set_aside/ and shown to a reviewer.
    (workdir / "faq.jsonl").write_text(
        '{"q": "Hello?", "a": "Hi."}\n{"q": "Ask Maria Lopez on +1 415 555 0132", broken\n'
    )
    spec = {
        "dataset": "faq",
        "sources": [{"path": "faq.jsonl"}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "stages": [{"type": "pii", "entities": ["PERSON"]}, {"type": "pii", "entities": ["PHONE_NUMBER"]}],
        "output": {"validation_fraction": 0},
    }
    result = run(workdir, spec)
    [row] = set_aside(Path(result.version_uri))
    assert row["reason"] == "malformed_json"
    assert "<PERSON>" in row["record"] and "<PHONE_NUMBER>" in row["record"], row["record"]
    from curation.review.auth import User
    from curation.review.labelstudio import export_tasks
    from curation.review.views import item_view

    engine = sa.create_engine(f"sqlite:///{workdir / 'state.db'}")
    with engine.connect() as conn:
        [item] = [
            dict(row)
            for row in conn.execute(sa.text("select * from review_items where kind = 'quarantined'")).mappings()
        ]
    shown = item_view(item, User("rita", "reviewer"))
    exported = json.dumps(export_tasks(engine, {"kind": "quarantined"}))
    for published in (json.dumps(row), shown["raw"] + (shown["reason_detail"] or ""), exported):
        assert "Lopez" not in published and "555 0132" not in published, published


def test_a_changed_pseudonym_key_is_a_changed_recipe(
    workdir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The key lives in the environment, out of the recipe's fingerprint: a scheduled run with another
    # key published its new records' pseudonyms beside the carried ones', the same person under two
    # names in one version, without a word.
    write_jsonl(workdir / "in" / "a.jsonl", [{"q": "Please call Daniel Okafor tomorrow.", "a": "ok"}])
    recipe = {
        "dataset": "support",
        "sources": [{"path": "in/"}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "stages": [{"type": "pii", "operators": {"PERSON": "pseudonym"}}],
        "output": {"validation_fraction": 0.0},
    }
    monkeypatch.setenv("CURATION_PII_SECRET", SECRET)
    first = run(workdir, recipe)
    write_jsonl(workdir / "in" / "b.jsonl", [{"q": "Yesterday Daniel Okafor wrote again.", "a": "ok"}])
    monkeypatch.setenv("CURATION_PII_SECRET", "another-key")
    with caplog.at_level(logging.WARNING):
        second = run(workdir, recipe)
    assert "the recipe changed since v1 (or its pseudonym key, or the PII stage's detection rules" in caplog.text
    assert "--full-refresh" in caplog.text
    assert first.manifest.recipe_sha256 != second.manifest.recipe_sha256
    assert "another-key" not in json.dumps(second.manifest.model_dump(mode="json"))
    # The same key again: the same recipe.
    caplog.clear()
    write_jsonl(workdir / "in" / "c.jsonl", [{"q": "Then Daniel Okafor wrote once more.", "a": "ok"}])
    with caplog.at_level(logging.WARNING):
        third = run(workdir, recipe)
    assert "recipe changed" not in caplog.text and third.manifest.recipe_sha256 == second.manifest.recipe_sha256


def _no_key_twice(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), keys
    return dict(pairs)


@pytest.mark.parametrize(
    ("operator", "keys", "nested"),
    [
        ("replace", ["{D} (2)", "{M} (3)", "<PERSON>", "{D} (4)"], ["{A}", "{B} (2)"]),
        ("mask", ["{D}", "{M}", "<PERSON>", "{D} (2)"], ["{A}", "{B} (2)"]),  # the same shapes
        ("pseudonym", ["{D}", "{M}", "<PERSON>", "{D} (2)"], ["{A}", "{B}"]),  # one person, two ways
    ],
)
def test_keys_redacted_alike_stay_distinct_keys(
    monkeypatch: pytest.MonkeyPatch, operator: str, keys: list[str], nested: list[str]
) -> None:
    import re

    monkeypatch.setenv("CURATION_PII_SECRET", SECRET)
    # Keys that were names all became "<PERSON>" (masked alike, or pseudonyms of one person): an
    # object naming a key twice, which the reader quarantines and most JSON tools read as one key, a
    # value lost. The second and later get a number, and none takes the name of a key kept as written.
    notes = json.dumps(
        {
            "Daniel Okafor": "called twice",
            "Maria Garcia": "no answer",
            "<PERSON>": "as written",
            "DANIEL OKAFOR": 3,
            "nested": [{"Ann Lee": 1, "Bob Kim": 2}],
        }
    )
    names = re.compile(r"Daniel Okafor|DANIEL OKAFOR|Maria Garcia|Ann Lee|Bob Kim")
    pii = stage(operators={"PERSON": operator})
    monkeypatch.setattr(
        pii.analyzer,
        "analyze",
        lambda texts, *_: [[("PERSON", *m.span(), 0.9) for m in names.finditer(text)] for text in texts],
    )
    redacted = pii(records(["Hello"], completion=notes)).kept["completion"][0].as_py()
    published = json.loads(redacted, object_pairs_hook=_no_key_twice)
    person = {
        n[0]: pii.placeholder(operator, "PERSON", n) for n in ("Daniel Okafor", "Maria Garcia", "Ann Lee", "Bob Kim")
    }
    assert list(published) == [*(key.format(**person) for key in keys), "nested"], redacted
    assert list(published["nested"][0]) == [key.format(**person) for key in nested], redacted
    assert list(published.values())[:4] == ["called twice", "no answer", "as written", 3]
    assert not names.search(redacted)
    # A quarantined row's raw input, every entity made <ENTITY>, as well.
    [scrubbed] = pii.rewrite_texts([notes])
    assert list(json.loads(scrubbed, object_pairs_hook=_no_key_twice))[:4] == [
        "<PERSON> (2)",
        "<PERSON> (3)",
        "<PERSON>",
        "<PERSON> (4)",
    ]


def test_json_a_template_writes_after_words_is_scanned_string_by_string(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `prompt: "Notes: {{ notes }}"` with a list or object column: the field is not JSON as a whole,
    # so it was scanned as free text only, where the model missed a name between JSON's quotes.
    write_jsonl(
        workdir / "faq.jsonl",
        [
            {"q": "Who called?", "notes": ["Call Daniel Okafor tomorrow."]},
            {"q": "Which contact?", "notes": {"who": "Call Daniel Okafor tomorrow."}},
        ],
    )
    spec = {
        "dataset": "faq",
        "sources": [{"path": "faq.jsonl"}],
        "record": {"kind": "instruction", "prompt": "Notes [1]: {{ notes }} (see {x})", "completion": "q"},
        "stages": [{"type": "pii"}],
        "output": {"validation_fraction": 0},
    }
    published = sorted(line["prompt"] for line in outputs(Path(run(workdir, spec).version_uri)))
    assert published == [
        'Notes [1]: ["Call <PERSON> tomorrow."] (see {x})',
        'Notes [1]: {"who": "Call <PERSON> tomorrow."} (see {x})',
    ]
    # A placeholder is written as JSON writes it inside the JSON's strings (a mask of quotes), as it
    # is around them; keys redacted alike stay apart there too.
    import re

    names = re.compile(r"Ann Lee|Bob Kim")
    pii = stage(operators={"PERSON": "mask"}, mask_char='"')
    monkeypatch.setattr(
        pii.analyzer,
        "analyze",
        lambda texts, *_: [[("PERSON", *m.span(), 0.9) for m in names.finditer(text)] for text in texts],
    )
    text = 'Ann Lee wrote ["Ann Lee", {"Ann Lee": 1, "Bob Kim": 2}] and {"to": "Bob Kim"}.'
    redacted = pii(records([text])).kept["prompt"][0].as_py()
    assert redacted.startswith('""" """ wrote [') and redacted.endswith("}.")
    inner, other = re.findall(r"\[.*\]|\{\"to.*\}", redacted)
    assert json.loads(inner, object_pairs_hook=_no_key_twice) == ['""" """', {'""" """': 1, '""" """ (2)': 2}]
    assert json.loads(other) == {"to": '""" """'}


# Names the model takes, with the word before them, for an organisation (or misses), or whose PERSON
# span holds the role word: each must be redacted whole.
NAMES_AFTER_ROLE_WORDS = [
    ("Dear Sophie Smith, your card is ready.", "Sophie Smith"),
    ("Payer Sophie Smith sent the transfer.", "Sophie Smith"),
    ("Recipient Sophie Smith called.", "Sophie Smith"),
    ("The beneficiary Sophie Smith called.", "Sophie Smith"),
    ("Borrower Lucas Meyer missed a payment.", "Lucas Meyer"),
    ("Nurse Sophie Smith changed the dressing.", "Sophie Smith"),
    ("Call Daniel Okafor at 212-555-0187.", "Daniel Okafor"),
    ("Transfer to payee Lucas Meyer confirmed.", "Lucas Meyer"),
    ("Hi Sophie, your card is ready.", "Sophie"),
    ("Hey Connie Jones, quick question.", "Connie Jones"),
    ("Attention Wendy Ruiz: see the memo.", "Wendy Ruiz"),
    ("Beneficiary: Mitchell Munoz", "Mitchell Munoz"),
    ("Text Jordan Young tomorrow.", "Jordan Young"),
    ("Mr Mitchell Munoz asked for a callback.", "Mitchell Munoz"),
    ("Hello Mitchell Munoz, your refund was issued.", "Mitchell Munoz"),
    ("Sender Olivia Chen-Park wrote again.", "Olivia Chen-Park"),
    ("Call  Daniel   Okafor about it.", "Daniel   Okafor"),  # extra spaces: spaCy tokens of their own
    # A line break after a salutation, a title or a colon, as letters and forms break lines.
    ("Dear\nSophie,\nyour card is ready.", "Sophie"),
    ("Thanks,\nSophie Smith", "Sophie Smith"),
    ("Sincerely,\n\nLucas Meyer\nAccount Manager", "Lucas Meyer"),
    ("Beneficiary:\nWendy Ruiz", "Wendy Ruiz"),
    # In capitals: after a salutation (two words or more), a title, or a role word as a form's label.
    ("DEAR SOPHIE SMITH, YOUR CARD IS READY.", "SOPHIE SMITH"),
    ("Dear SOPHIE SMITH, your card is ready.", "SOPHIE SMITH"),
    ("DEAR MR OKAFOR, YOUR CARD IS READY.", "OKAFOR"),
    ("PAYEE: MARIA GARCIA", "MARIA GARCIA"),
    ("Beneficiary: MARIA O'BRIEN-GARCIA", "MARIA O'BRIEN-GARCIA"),
    ("REGARDS,\nDANIEL OKAFOR", "DANIEL OKAFOR"),
    # A past tense ends a name in capitals, as a lower-case word does in title case.
    ("MR OKAFOR CALLED ABOUT HIS CARD.", "OKAFOR"),
    ("DEAR SOPHIE SMITH PHONED TODAY.", "SOPHIE SMITH"),
    ("MR JARED OKAFOR ASKED FOR IT.", "JARED OKAFOR"),  # a past tense of "jar" as a name's first word
    # A surname alone after a title, or as a form's value (one no English word).
    ("Dear Mr Okafor,", "Okafor"),
    ("Payee: Okafor", "Okafor"),
    ("Beneficiary: Nwachukwu\nAmount: $40", "Nwachukwu"),
    # A person named as a chain is not: the chain is "Tim Hortons".
    ("Dear Tim Horton, your card is ready.", "Tim Horton"),
]
# Organisations, departments and headings after the same words: no name there.
NOT_NAMES_AFTER_ROLE_WORDS = [
    "Dear Customer Service, my card was declined.",
    "Payee Bank of America received $40.",
    "Call Center hours are 9 to 5.",
    "Call Customer Service at 212-555-0187.",
    "Hi Team, the report is attached.",
    "Hi All, meeting moved.",
    "Dear Valued Customer, welcome.",
    "Dear Hiring Manager, please find my CV.",
    "Attn: Accounts Payable, invoice 42.",
    "Contact Support for help.",
    "Recipient Wells Fargo Bank confirmed.",
    "Payee Amazon Web Services charged $12.",
    "Dear Amazon Customer, your order shipped.",
    "Dear Hester-Johnson team, hello.",
    "Customer Service called back.",
    "Driver License Number on file.",
    "Applicant Tracking System down.",
    "Hello World",
    "Dear Customer, your card is ready.",
    "Sender Western Union",
    "Dear Sir, thank you.",
    "Hi Monday team",
    # Role words the model takes for a name of their own.
    "Email dana@example.org for help.",
    "Email Support if stuck.",
    "Dear Sir or Madam, I write about my account.",
    # A role word or verb ending a line of a menu or a heading; a salutation far above a heading.
    "Home\nAbout\nContact\nPrivacy Policy",
    "Regards\n\n\n\nQuarterly Report",
    # In capitals: acronyms, headings, departments.
    "ATTN: IRS",
    "ATTN: HR",
    "Thanks, IBM",
    "CUSTOMER SATISFACTION SURVEY RESULTS",
    "TEXT STOP TO 12345 TO OPT OUT.",
    "CALL CENTER HOURS: 9 TO 5",
    "PAYEE: BANK OF AMERICA",
    "DEAR CUSTOMER SERVICE,",
    "HI ALL, MEETING MOVED.",
    # Headings: a role word or verb and capitalised words making a line of their own.
    "Customer Satisfaction Survey Results",
    "See the guide below.\nMember Benefits Guide\nYour plan covers two visits a year.",
    # An English word alone as a form's value.
    "Customer: New",
    "Member: Gold",
    "Applicant: Approved",
    "Applicant: Denied",  # deny: a regular past tense in -ied
    # Well-known brands, which the rule (after "Dr", "Payee") or the model took for people.
    "Dr Pepper is my favourite drink.",
    "Payee Wells Fargo received $40.",
    "Payee: Wells Fargo",
    "Payee Home Depot charged $12.",
    "Payee: Tim Hortons",
    "Hi Ben & Jerry's team, thanks.",
    "Payee: Trader Joe's",
    "Payee Wendy's",
    # A shop's name with a possessive, where no word follows it.
    "Payee: Pollard's",
]


def test_a_name_after_a_role_or_salutation_word_is_redacted_whole_and_flagged() -> None:
    pii = stage()
    result = pii(records([text for text, _ in NAMES_AFTER_ROLE_WORDS]))
    for (text, name), redacted in zip(NAMES_AFTER_ROLE_WORDS, result.kept["prompt"].to_pylist(), strict=True):
        assert redacted == text.replace(name, "<PERSON>").replace("212-555-0187", "<PHONE_NUMBER>"), redacted
    # A name found by the rule, not by the model, sits in the review band: redacted, and shown to annotators.
    flagged = {
        json.loads(flag["payload"])["original"][span["start"] : span["end"]]
        for flag in result.flags.to_pylist()
        for span in json.loads(flag["payload"])["spans"]
        if span["entity"] == "PERSON"
    }
    assert {"Sophie Smith", "Daniel Okafor", "Sophie"} <= flagged
    assert all(0.3 <= s["score"] < 0.6 for f in result.flags.to_pylist() for s in json.loads(f["payload"])["spans"])


def test_organisations_and_headings_after_role_words_are_not_taken_for_names() -> None:
    kept = stage()(records(NOT_NAMES_AFTER_ROLE_WORDS)).kept["prompt"].to_pylist()
    assert [text for text in kept if "<PERSON>" in text] == []


def test_a_role_word_and_an_address_the_model_takes_for_a_name_are_not_one() -> None:
    # The model's PERSON span "Email kennethbarton@example.org" was merged with the address found:
    # the word "Email" went into the redaction, and the bench counted a false name.
    text = "Name on the account: Joseph Johns. Email kennethbarton@example.org, phone 212-555-0187."
    pii = stage()
    assert [e for e, _, _, _ in pii.analyzer.analyze([text], 0.3)[0]].count("PERSON") == 1
    assert pii(records([text])).kept["prompt"].to_pylist() == [
        "Name on the account: <PERSON>. Email <EMAIL_ADDRESS>, phone <PHONE_NUMBER>."
    ]


def test_no_lone_name_is_read_with_a_model_that_has_no_word_tables() -> None:
    # Whether "New" of "Customer: New" is a word comes from the model's lemmatizer tables: without
    # them every word would pass for a surname.
    import spacy

    from curation.pii_roles import Lexicon, role_names

    nlp = spacy.blank("en")
    assert role_names(nlp("Customer: New"), Lexicon(nlp)) == []
    assert role_names(nlp("Dear Mr Okafor,"), Lexicon(nlp)) == [(8, 14)]


def test_a_brand_is_no_place_and_a_name_with_a_possessive_before_a_word_is_a_persons() -> None:
    from curation.pii_engine import LANGUAGE, build_analyzer
    from curation.pii_roles import Lexicon

    pii = stage()
    # The model takes Netflix for a place.
    assert pii(records(["Payee: Netflix"])).kept["prompt"].to_pylist() == ["Payee: Netflix"]
    nlp = build_analyzer(pii.analyzer.spec).nlp_engine.nlp[LANGUAGE]
    lexicon = Lexicon(nlp)

    def brands(text: str) -> list[str]:
        doc = nlp(text)
        return [text[a:b] for a, b in lexicon.brands(doc)]

    assert brands("Paid Wendy’s $12.40, then Trader Joe's groceries.") == ["Wendy’s", "Trader Joe's"]
    assert brands("Wendy's card was declined at TIM HORTONS.") == ["TIM HORTONS"]  # Wendy's card is Wendy's


def test_names_after_role_words_are_read_in_time_linear_in_a_long_title_case_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each capitalised word read the run of them to its end: a text of 8,000 words in title case (a
    # catalogue, a list of headings) took 200 s in the stage, 2,000 words 12 s.
    import spacy

    import curation.pii_roles as roles

    calls = 0
    capitalised = roles._capitalised

    def counted(token: Any) -> bool:
        nonlocal calls
        calls += 1
        return capitalised(token)

    monkeypatch.setattr(roles, "_capitalised", counted)
    words = ["Alpha", "Beta", "Dear", "Gamma", "Payee", "Delta", "Omega-Sigma", "Kappa"]
    doc = spacy.blank("en")(" ".join(words[i * 7 % len(words)] for i in range(4000)) + ". Dear Sophie Smith.")
    assert [doc.text[a:b] for a, b in roles.role_names(doc)][-1] == "Sophie Smith"
    assert calls < 10 * len(doc)


def test_a_role_word_is_no_part_of_a_name_or_its_pseudonym(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CURATION_PII_SECRET", SECRET)
    prompts = [
        "Sophie Smith asked for a refund.",
        "Customer Sophie Smith called about a refund.",  # the model's PERSON span: "Customer Sophie Smith"
        "Cardholder Sophie Smith disputed the charge.",
        "Mrs Helen Park will visit on Monday.",  # the model's PERSON span: "Mrs Helen Park"
        "Driver John Stephens was late.",  # the model's PERSON spans: "Driver" and "John Stephens"
    ]
    pii = stage(operators={"PERSON": "pseudonym"})
    kept = pii(records(prompts)).kept["prompt"].to_pylist()
    sophie = pii.placeholder("pseudonym", "PERSON", "Sophie Smith")
    assert kept[:3] == [
        f"{sophie} asked for a refund.",
        f"Customer {sophie} called about a refund.",
        f"Cardholder {sophie} disputed the charge.",
    ]
    assert kept[3] == f"Mrs {pii.placeholder('pseudonym', 'PERSON', 'Helen Park')} will visit on Monday."
    assert kept[4] == f"Driver {pii.placeholder('pseudonym', 'PERSON', 'John Stephens')} was late."


def test_no_name_is_read_after_a_role_word_where_ner_does_not_run() -> None:
    batch = records(["Dear Sophie Smith, write to dana@example.org"], completion="Payer Lucas Meyer sent it.")
    kept = stage(ner_fields=["completion"])(batch).kept
    assert kept["prompt"][0].as_py() == "Dear Sophie Smith, write to <EMAIL_ADDRESS>"  # patterns only
    assert kept["completion"][0].as_py() == "Payer <PERSON> sent it."


def test_new_detection_rules_are_a_changed_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    # Records carried from a version the old rules redacted keep what those rules missed: a scheduled run
    # after a release that finds more must say so (and name --full-refresh), not carry them silently.
    import schemas.config

    spec = "dataset: d\nsources: [{path: in.jsonl}]\nrecord: {kind: document}\nstages:\n"
    with_pii, without = parse_recipe(spec + "  - type: pii\n"), parse_recipe(spec + "  - type: exact_dedup\n")
    before = with_pii.fingerprint(), without.fingerprint()
    monkeypatch.setattr(schemas.config, "DETECTION_RULES", schemas.config.DETECTION_RULES + 1)
    assert with_pii.fingerprint() != before[0] and without.fingerprint() == before[1]


def test_a_pii_setting_found_wrong_as_the_stage_is_built_names_the_stage(tmp_path: Path) -> None:
    from curation.pipeline import build_stages
    from curation.stages.pii import PiiSettingError

    spec = "dataset: d\nsources: [{path: in.jsonl}]\nrecord: {kind: document}\n"
    spec += f"state: sqlite:///{tmp_path}/state.db\nstages:\n  - type: exact_dedup\n  - type: pii\n    entities: [PERSONN]\n"
    (tmp_path / "r.yaml").write_text(spec)
    with pytest.raises(PiiSettingError, match=r"^pii: no recognizer finds \['PERSONN'\]") as error:
        build_stages(parse_recipe(spec))
    # The CLI puts the stage's place in the recipe before it, as for every stage error.
    assert stage_place(tmp_path / "r.yaml", parse_recipe(spec), str(error.value)) == "stages.1 (line 7)"


def test_a_pii_item_of_a_vqa_record_shows_its_image_as_published() -> None:
    from PIL import Image

    from curation.review.auth import User
    from curation.review.views import item_view

    picture = io.BytesIO()
    Image.new("RGB", (640, 320), "teal").save(picture, format="PNG")
    batch = pa.table(
        {
            "id": ["v0"],
            "source": source_array("images", "mem://images.jsonl", [1]),
            "image": ["chart.png"],
            "question": ["Reach me at 212-555-0187: which bar is tallest?"],  # an uncertain phone number
            "answer": ["the blue one"],
            "image_bytes": pa.array([picture.getvalue()], pa.binary()),
        }
    )
    config = PiiConfig.model_validate({"type": "pii", "recognizers": [CUSTOMER_ID]})
    (flag,) = PiiRedaction(config, "vqa")(batch).flags.to_pylist()
    shown = json.loads(flag["payload"])["thumbnail"]
    assert shown.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(shown.split(",", 1)[1]))) as image:
        assert image.size == (480, 240)  # the page's size, rebuilt from the pixels
    item = {**flag, "item_id": 1, "record_id": "v0", "source": json.dumps(flag["source"])}
    for user in (User("rita", "reviewer"), User("pia", "pii-reviewer")):
        assert item_view(item, user)["thumbnail"] == shown


def test_a_pii_item_shows_no_image_where_a_later_pii_stage_redacts_text_in_images() -> None:
    # The item's picture is its stage's: a later stage with ``ocr`` redacts the e-mail in the published
    # image, yet every role was shown it in clear.
    from curation.pipeline import _flags_as_published
    from curation.review.auth import User
    from curation.review.views import item_view

    batch = pa.table(
        {
            "id": ["v0"],
            "source": source_array("images", "mem://images.jsonl", [1]),
            "image": ["statement.png"],
            "question": ["Reach me at 212-555-0187: what is the total due?"],  # an uncertain phone number
            "answer": ["120"],
            "image_bytes": pa.array([document_image()], pa.binary()),
        }
    )
    first = PiiRedaction(PiiConfig.model_validate({"type": "pii", "recognizers": [CUSTOMER_ID]}), "vqa")
    result = first(batch)
    assert "thumbnail" in json.loads(result.flags["payload"][0].as_py())

    def later(ocr: bool) -> PiiRedaction:
        config = PiiConfig.model_validate({"type": "pii", "entities": ["EMAIL_ADDRESS"], "ocr": ocr})
        return PiiRedaction(config, "vqa", name="pii_2")

    # Without ``ocr`` the later stage leaves the image as it is: the picture is the published one.
    for stages, shown in (([first, later(True)], False), ([first, later(False)], True)):
        (flags,) = _flags_as_published(stages, [result.flags])
        (flag,) = flags.to_pylist()
        assert ("thumbnail" in json.loads(flag["payload"])) is shown
        item = {**flag, "item_id": 1, "record_id": "v0", "source": json.dumps(flag["source"])}
        for user in (User("rita", "reviewer"), User("pia", "pii-reviewer")):
            assert bool(item_view(item, user)["thumbnail"]) is shown


def test_a_pii_item_is_shown_as_a_clean_stage_and_the_pii_stage_after_it_publish_it() -> None:
    # The later PII stage scans the text the clean stage between them left: it finds the phone number
    # once the markup is gone, yet the item was scrubbed without that clean, so it was shown in clear.
    from curation.pipeline import _flags_as_published
    from curation.stages.clean import Clean

    batch = records(["Account CUST-204518, call +1 415 <b>555</b> 0132"])
    first = stage(entities=["CUSTOMER_ID"])
    result = first(batch)
    phones = PiiConfig.model_validate({"type": "pii", "entities": ["PHONE_NUMBER"]})
    stages = [first, Clean(["prompt", "completion"]), PiiRedaction(phones, "instruction", name="pii_2")]
    published = stages[2](stages[1](result.kept).kept).kept["prompt"][0].as_py()
    assert "<PHONE_NUMBER>" in published  # what the run publishes
    (flags,) = _flags_as_published(stages, [result.flags])
    (payload,) = [json.loads(text) for text in flags["payload"].to_pylist()]
    assert payload["redacted"] == published


def test_two_pii_stages_of_one_recipe_count_what_each_found_under_its_own_name(workdir: Path) -> None:
    rows = [{"q": "Mail me at ana.lopez@example.com", "a": "Done: write to help@example.org or desk@example.net"}]
    write_jsonl(workdir / "in.jsonl", rows)
    email = {"entities": ["EMAIL_ADDRESS"]}
    recipe = {
        "dataset": "support",
        "sources": [{"path": "in.jsonl"}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "stages": [{"type": "pii", "fields": ["prompt"], **email}, {"type": "pii", "fields": ["completion"], **email}],
    }
    stages = run(workdir, recipe).manifest.stats["stages"]
    assert stages["pii"]["EMAIL_ADDRESS"] == 1 and stages["pii_2"]["EMAIL_ADDRESS"] == 2


def test_regular_endings_give_the_base_forms_and_a_past_tense_its_doubled_consonant_undone() -> None:
    from curation.pii_roles import _PAST_ENDINGS, _REGULAR_ENDINGS, _base_forms

    assert "deny" in set(_base_forms("denied", _REGULAR_ENDINGS)) and "pay" in set(
        _base_forms("pays", _REGULAR_ENDINGS)
    )
    assert "stop" in set(_base_forms("stopped", _PAST_ENDINGS, doubled=True))
    assert "stop" not in set(_base_forms("stopped", _REGULAR_ENDINGS))  # a word, not a past tense: "Manning"
    assert list(_base_forms("calling", _PAST_ENDINGS, doubled=True)) == []


def test_near_duplicate_flags_of_a_recipe_without_a_pii_stage_are_left_as_flagged() -> None:
    # No stage redacts their texts after them: given a published form all the same (the flag's stage is never
    # the run's last), every role was shown them as redacted, a VQA item's images withheld.
    from curation.pipeline import _flags_as_published
    from curation.stages.clean import Clean

    payload = {"kept": {"text": "<b>Hello</b> there!"}, "member": {"text": "<b>Hello</b> there", "fields": {}}}
    flags = pa.table(
        {"kind": ["near_duplicate"], "stage": ["near_dedup"], "payload": [json.dumps(payload)]},
    )

    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

    stages = [Named("near_dedup"), Clean(["prompt"]), Named("profile")]
    (shown,) = _flags_as_published(stages, [flags])  # type: ignore[arg-type]
    assert json.loads(shown["payload"][0].as_py()) == payload


def test_an_undo_of_places_found_again_that_overlap_holds_on_the_one_span_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CURATION_PII_SECRET", SECRET)
    # "Maria Garcia" and "Garcia Lopez" found in the prompt stand in the completion as one name: its places
    # are redacted as one span, the one the flag shows. An undo of that span was checked against each place
    # before they were merged, matched neither, and the name was redacted again; it was counted as two.
    pii = stage(ner_fields=["prompt"], operators={"PERSON": "pseudonym"}, review_below=0.99)
    prompt, completion = "Maria Garcia wrote to us. Later Garcia Lopez replied.", "Sent to Maria Garcia Lopez today."
    result = pii(records([prompt], completion=completion))
    assert result.stats["found_elsewhere_in_record"] == 1
    payloads = [json.loads(payload) for payload in result.flags["payload"].to_pylist()]
    [span] = [span for payload in payloads if payload["field"] == "completion" for span in payload["spans"]]
    assert completion[span["start"] : span["end"]] == "Maria Garcia Lopez"
    undone = {"r0": [("completion", span["start"], span["end"])]}
    again = PiiRedaction(pii.config, "instruction", undone=undone, analyzer=pii.analyzer)(
        records([prompt], completion=completion)
    )
    assert again.kept["completion"][0].as_py() == completion
    assert "found_elsewhere_in_record" not in again.stats


def test_a_name_the_template_gives_its_context_is_redacted_in_set_aside_rows(workdir: Path) -> None:
    # A set-aside row was scanned string by string and whole: a name whose context is only in the template
    # ("Customer {{ name }}", "{{ first }} {{ last }}") was published in clear in set_aside/ (and shown to a
    # plain reviewer), beside the same person's record published as "Customer <PERSON>".
    lines = [
        json.dumps({"name": "Wei Zhang", "phone": "4155550132", "ssn": "536221234", "amount": 10}),
        json.dumps({"name": "Olu Adeyemi", "phone": "4155550133", "ssn": "536221235", "amount": "abc"}),  # no number
        '{"first": "Helen", "last": "Park", "q": "my card 4111 1111 1111 1111 email helen.park@example.com"',
    ]
    (workdir / "faq.jsonl").write_text("".join(line + "\n" for line in lines))
    spec = {
        "dataset": "faq",
        "sources": [{"path": "faq.jsonl"}],
        "input_schema": {"columns": {"name": "str", "phone": "str", "ssn": "str", "amount": "float"}},
        "record": {"kind": "instruction", "prompt": "Customer {{ name }}, SSN {{ ssn }}", "completion": "phone"},
        "stages": [{"type": "pii", "workers": 1}],
        "output": {"validation_fraction": 0},
    }
    version = Path(run(workdir, spec).version_uri)
    assert [row["prompt"] for row in outputs(version)] == ["Customer <PERSON>, SSN <US_SSN>"]
    rows = {row["reason"]: row["record"] for row in set_aside(version)}
    record = {"name": "<PERSON>", "phone": "<PHONE_NUMBER>", "ssn": "<US_SSN>", "amount": "abc"}
    assert json.loads(rows["schema"]) == record
    assert rows["malformed_json"].startswith('{"first": "<PERSON>", "last": "<PERSON>", "q": "my card <CREDIT_CARD>')
    for name in ("Olu", "Adeyemi", "Helen", "Park"):
        assert name not in json.dumps(set_aside(version)), name


def test_product_and_status_values_of_a_set_aside_row_stay_in_clear(workdir: Path) -> None:
    # Scanned joined by spaces, by lines and as "key: value", a row's short values made names: "Coffee Maker",
    # "Returned", "Pending" were published as <PERSON> in set_aside/ (77% of such rows lost a value, from 40%).
    rows = [
        {"product": "Coffee Maker", "status": "Delivered", "category": "account", "a": "Done"},
        {"product": "Office Chair", "status": "Returned", "category": "returns", "a": "Refund issued"},
        {"product": "Phone Case", "status": "Pending", "category": "returns", "ref": "SKU-5585", "a": "Done"},
    ]
    write_jsonl(workdir / "orders.jsonl", [*rows, {"product": "Kettle", "status": "Lost", "q": "where", "a": "Sorry"}])
    spec = {
        "dataset": "orders",
        "sources": [{"path": "orders.jsonl"}],
        "record": {
            "kind": "instruction",
            "prompt": "Order of {{ product }} is {{ status }}: {{ q }}",
            "completion": "a",
        },
        "stages": [{"type": "pii", "workers": 1}],
        "output": {"validation_fraction": 0},
    }
    version = Path(run(workdir, spec).version_uri)
    published = sorted((json.loads(row["record"]) for row in set_aside(version)), key=lambda row: row["product"])
    assert published == sorted(rows, key=lambda row: row["product"])


def test_a_name_under_a_person_key_of_a_set_aside_row_is_redacted(workdir: Path) -> None:
    # Scanned each alone after "Customer:", under keys whose last word names a person, names were published
    # in clear in set_aside/: "Olu Adeyemi" under `patient`, "Helen" and "Park" under `name_first` and
    # `name_last`, "Olu" under `fname` (and `first` in a CSV file), beside "Adeyemi" taken for a place.
    rows = [
        {"patient": "Olu Adeyemi", "ward": "B", "amount": "abc", "q": "hi"},
        {"name_first": "Helen", "name_last": "Park", "amount": "abc", "q": "hi"},
        {"fname": "Olu", "lname": "Adeyemi", "amount": "abc", "q": "hi"},
    ]
    write_jsonl(workdir / "visits.jsonl", [*rows, {"patient": "x", "amount": 1, "q": "hi"}])
    (workdir / "visits.csv").write_text("first,last,amount,q\nOlu,Adeyemi,abc,hi\nHelen,Park,abc,hi\nx,y,1,hi\n")
    spec = {
        "dataset": "visits",
        "sources": [{"path": "visits.jsonl"}, {"path": "visits.csv"}],
        "input_schema": {"columns": {"amount": "float"}},
        "record": {"kind": "instruction", "prompt": "Amount {{ amount }}", "completion": "q"},
        "stages": [{"type": "pii", "workers": 1}],
        "output": {"validation_fraction": 0},
    }
    version = Path(run(workdir, spec).version_uri)
    published = [row["record"] for row in set_aside(version)]
    assert len(published) == 5
    assert json.loads(published[0]) == {"patient": "<PERSON>", "ward": "B", "amount": "abc", "q": "hi"}
    for name in ("Olu", "Adeyemi", "Helen", "Park"):
        assert name not in json.dumps(published), name


def test_a_key_names_a_person_by_its_words() -> None:
    # "name" qualified on either side, a first or last name's own key, a person's role; not a thing's name, a
    # person's id or address, nor a handle.
    person = ["name", "first_name", "name_first", "nameLast", "Customer Name", "fname", "lname", "surname", "first"]
    person += ["forename", "patient", "assignee", "requester", "cardholder", "account_holder", "beneficiary"]
    assert [key for key in person if not _names_a_person(key)] == []
    # A member's value is as often a tier ("Gold") as a name: read beside a customer's name, it was taken for one.
    other = ["product_name", "account_name", "file_name", "customer_id", "username", "user", "contact_email", "member"]
    assert [key for key in other if _names_a_person(key)] == []


def test_a_lone_first_or_last_word_of_a_name_is_redacted_as_the_name_but_not_a_common_word(workdir: Path) -> None:
    # "<PERSON_7eb342386a> asks: Reply to Priya about it" tied "Priya" to the pseudonym in every record.
    rows = [
        {"first": "Priya", "last": "Raman", "q": "Reply to Priya about it", "a": "Priya said fine, not priya."},
        {"first": "Will", "last": "Smith", "q": "Will you send it", "a": "Smith said yes"},
    ]
    write_jsonl(workdir / "faq.jsonl", rows)
    spec = {
        "dataset": "faq",
        "sources": [{"path": "faq.jsonl"}],
        "record": {"kind": "instruction", "prompt": "{{ first }} {{ last }} asks: {{ q }}", "completion": "a"},
        "stages": [{"type": "pii", "workers": 1, "operators": {"PERSON": "pseudonym"}, "secret": SECRET}],
        "output": {"validation_fraction": 0},
    }
    published = outputs(Path(run(workdir, spec).version_uri))
    pseudonym = Placeholders(SECRET.encode(), "*")
    priya, will = pseudonym("pseudonym", "PERSON", "Priya Raman"), pseudonym("pseudonym", "PERSON", "Will Smith")
    # One person, one placeholder: a word alone takes the name's; lowercase "priya" is no name as written.
    assert published[0] == {
        "prompt": f"{priya} asks: Reply to {priya} about it",
        "completion": f"{priya} said fine, not priya.",
    }
    # "Will" opens sentences: left alone; "Smith" is the name's.
    assert published[1] == {"prompt": f"{will} asks: Will you send it", "completion": f"{will} said yes"}
