"""PII detection speed and recall: presidio's plain ``AnalyzerEngine.analyze`` loop against our stage.

Both run in this process on the same generated corpus (bench/pii_corpus.py: support messages and
transaction memos with Faker names, e-mails, phones, cards and SSNs), with the same spaCy model,
entities and score threshold. Printed: docs/s of each, the ratio, and recall and precision per entity.

    .venv/bin/python bench/pii.py [--docs 2000] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa
import yaml

from bench.pii_corpus import ENTITIES, LabelledDoc, generate, precision, recall
from curation.pii_engine import LANGUAGE, MODEL_NAME, Detection, default_workers
from curation.stages.pii import PiiRedaction
from schemas.pii import PiiConfig
from schemas.records import source_array

THRESHOLD = 0.3


def plain_engine(entities: list[str]) -> object:
    """presidio as its documentation sets it up: default NLP config (our model) and default recognizers."""
    import presidio_analyzer
    import tldextract
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    # The only change to stock presidio: its e-mail check must not try the network from here.
    tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    conf = yaml.safe_load((Path(presidio_analyzer.__file__).parent / "conf" / "default.yaml").read_text())
    conf["models"] = [{"lang_code": LANGUAGE, "model_name": MODEL_NAME}]
    engine = AnalyzerEngine(nlp_engine=NlpEngineProvider(nlp_configuration=conf).create_engine())
    engine.analyze("warm up, Jane Doe", LANGUAGE, entities=entities)
    return engine


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(label: str, docs: list[LabelledDoc], run: object) -> tuple[float, float, object]:
    """docs/s by the wall clock, and CPU ms per doc (the fair figure when others share the cores)."""
    start, cpu = time.perf_counter(), cpu_seconds()
    found = run()
    rate = len(docs) / (time.perf_counter() - start)
    cpu_ms = 1000 * (cpu_seconds() - cpu) / len(docs)
    print(f"{label:<46} {rate:8.1f} docs/s {cpu_ms:8.2f} CPU ms/doc")
    return rate, cpu_ms, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=default_workers())
    args = parser.parse_args()

    docs = generate(args.docs)
    texts = [doc.text for doc in docs]
    print(
        f"{len(docs)} documents, {sum(map(len, texts)) / len(texts):.0f} chars on average; "
        f"{os.cpu_count()} CPUs, {args.workers} workers; model {MODEL_NAME}"
    )
    config = PiiConfig(type="pii", threshold=THRESHOLD, workers=args.workers)
    stage = PiiRedaction(config, "document")
    entities = list(stage.analyzer.spec.entities)
    plain = plain_engine(entities)
    batch = pa.table(
        {
            "id": [f"d{i}" for i in range(len(docs))],
            "source": source_array("bench", "memory", list(range(len(docs)))),
            "text": texts,
            "title": pa.nulls(len(docs), pa.string()),
        }
    )

    def plain_loop() -> list[list[Detection]]:
        return [
            [
                (r.entity_type, r.start, r.end, r.score)
                for r in plain.analyze(t, LANGUAGE, entities=entities, score_threshold=THRESHOLD)
            ]
            for t in texts
        ]

    load = os.getloadavg()[0]
    base_rate, base_cpu, base_found = timed("presidio AnalyzerEngine.analyze loop", docs, plain_loop)
    stage.analyzer.workers = 1
    one_rate, one_cpu, _ = timed("our analyzer, 1 process", docs, lambda: stage.analyzer.analyze(texts, THRESHOLD))
    stage.analyzer.workers = args.workers
    ours_rate, ours_cpu, ours_found = timed(
        f"our analyzer, {args.workers} processes", docs, lambda: stage.analyzer.analyze(texts, THRESHOLD)
    )
    stage_rate, stage_cpu, result = timed("our stage (analyze + redact, Arrow in/out)", docs, lambda: stage(batch))
    assert result.kept.num_rows == len(docs)

    print(
        f"\nratio (wall clock): analyzer {ours_rate / base_rate:.2f}x, 1 process {one_rate / base_rate:.2f}x, "
        f"whole stage {stage_rate / base_rate:.2f}x the plain loop"
    )
    print(
        f"ratio (CPU per doc): analyzer {base_cpu / ours_cpu:.2f}x, 1 process {base_cpu / one_cpu:.2f}x, "
        f"whole stage {base_cpu / stage_cpu:.2f}x less CPU than the plain loop"
    )
    print(f"load average over the last minute when it started: {load:.1f} on {os.cpu_count()} CPUs")
    base = [[d[:3] for d in found] for found in base_found]
    ours = [[d[:3] for d in found] for found in ours_found]
    base_recall, ours_recall = recall(docs, base), recall(docs, ours)
    base_precision, ours_precision = precision(docs, base), precision(docs, ours)
    print(f"\n{'':<16}{'recall':>16}{'precision':>18}")
    print(f"{'':<16}{'plain':>8}{'ours':>8}{'plain':>10}{'ours':>8}")
    for entity in ENTITIES:
        print(
            f"{entity:<16}{base_recall[entity]:8.3f}{ours_recall[entity]:8.3f}"
            f"{base_precision.get(entity, 0):10.3f}{ours_precision.get(entity, 0):8.3f}"
        )


if __name__ == "__main__":
    main()
