"""Whole-pipeline benchmark: the recipe with the embedded executor and with Ray, against a floor.

The floor is polars reading the same JSONL and writing it back with no stages: the least any
pipeline over these files must pay. Each run happens in its own process, so its peak memory (the
largest resident size of that process or of any process it waited for) is its own.

    python bench/pipeline.py                  # 1M records
    python bench/pipeline.py --records 20000  # a quick look

Prints records/s, CPU seconds, peak memory and the ratio of each to the floor, with and without the
PII stage (the PII stage runs when ``curation.stages.pii`` exists); then a scheduled run that adds
N/800 records and carries the rest, against the first run's time; and the embedded executor's peak
memory at N against N/10 records.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIRST = ["Maria", "James", "Wei", "Aisha", "Lukas", "Sofia", "Omar", "Hana", "Pedro", "Olga"]
LAST = ["Garcia", "Smith", "Chen", "Khan", "Muller", "Rossi", "Haddad", "Sato", "Silva", "Ivanova"]
TOPICS = ["reset my password", "close my account", "change my address", "dispute a charge", "order a new card"]
ANSWERS = [
    "Go to Settings, then Security, and choose Reset password. A link arrives by email.",
    "Open Profile, choose Close account and confirm; the balance is paid to your linked account.",
    "Under Profile, edit Address and confirm with the code we text you.",
    "Open the transaction, choose Dispute, and tell us what happened; we answer within 5 days.",
    "Choose Cards, then Order replacement; the new card arrives in 3 to 5 working days.",
]


PARTS = 8  # input comes as a folder of parts, as exports to a data lake do


def generate(folder: Path, records: int, seed: int = 7) -> None:
    """Small instruction rows: about 10% exact duplicates, about a third mention a person or contact."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    out = None
    part_records = -(-records // PARTS)
    for i in range(records):
        if i % part_records == 0:
            if out is not None:
                out.close()
            out = (folder / f"part-{i // part_records:04d}.jsonl").open("w")
        if written and rng.random() < 0.1:
            out.write(rng.choice(written))
            continue
        topic = rng.randrange(len(TOPICS))
        question = f"How do I {TOPICS[topic]}? (ticket {i})"
        if rng.random() < 0.35:
            first, last = rng.choice(FIRST), rng.choice(LAST)
            question = (
                f"Hi, this is {first} {last}, email {first.lower()}.{last.lower()}@example.com, "
                f"phone 555-{rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}. {question}"
            )
        line = json.dumps({"question": question, "answer": ANSWERS[topic]}) + "\n"
        out.write(line)
        if len(written) < 10_000:
            written.append(line)
    if out is not None:
        out.close()


def recipe(source: Path, dest: Path, pii: dict[str, Any] | None) -> dict[str, Any]:
    stages: list[dict[str, Any]] = [{"type": "exact_dedup"}]
    if pii is not None:
        stages.append(pii)
    return {
        "dataset": "bench",
        "sources": [{"path": str(source)}],
        "record": {"kind": "instruction", "prompt": "{{ question }}", "completion": "answer"},
        "stages": stages,
        "output": {"dest": str(dest)},
        "state": f"sqlite:///{dest}/state.db",
    }


def _import_stages(batch: Any) -> Any:
    import curation.executors.ray_duplicates
    import curation.executors.ray_executor
    import curation.pipeline  # noqa: F401

    return batch


def warm_up(ray: Any) -> None:
    """Start every worker and import the code once, as on a cluster that is already running."""
    cpus = int(ray.cluster_resources().get("CPU", 1))
    ray.data.DataContext.get_current().enable_progress_bars = False
    items = ray.data.from_items([{"n": n} for n in range(cpus)], override_num_blocks=cpus)
    items.map_batches(_import_stages, batch_format="pyarrow").materialize()


# --- one run, in its own process -----------------------------------------------------------------


def child(kind: str, source: str, dest: str, recipe_json: str) -> dict[str, Any]:
    # The clock starts once the code is imported and warm (the same run over 1,000 records first, so
    # what is timed is the work on the records, not the first use of each module, compiled regexes or
    # a new SQLite file's tables) and, for Ray, the local cluster is up, as on a machine or cluster that
    # runs many jobs; the start-up is reported on its own.
    setup = time.perf_counter()
    import polars as pl

    executor: Any = None
    if kind not in ("floor", "sketch"):
        from curation.executors.local import LocalExecutor
        from curation.pipeline import run_recipe
        from schemas.config import Recipe

        executor = LocalExecutor()
        if kind == "ray":
            import ray

            from curation.executors.ray_executor import RayExecutor, code_root

            ray.init(address="local", include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": code_root()}})
            warm_up(ray)
            executor = RayExecutor()

    def work(source: Path, dest: Path, spec: dict[str, Any]) -> dict[str, Any] | None:
        if kind == "sketch":
            return polars_sketch(pl, source, dest)
        if executor is None:
            for part in sorted(source.glob("*.jsonl")):
                pl.read_ndjson(part).write_ndjson(dest / part.name)
            return None
        return run_recipe(Recipe.model_validate(spec), executor=executor).manifest.counts.model_dump()

    spec = json.loads(recipe_json)
    sample = Path(dest) / "_warm_up"
    sample_spec = {
        **spec,
        "sources": [{"path": str(first_lines(Path(source), sample / "input", 1000))}],
        "output": {"dest": str(sample / "out")},
        "state": f"sqlite:///{sample}/state.db",
    }
    (sample / "out").mkdir()
    work(sample / "input", sample / "out", sample_spec)
    shutil.rmtree(sample)
    start, cpu = time.perf_counter(), cpu_seconds()
    records = work(Path(source), Path(dest), spec)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    peak_kib = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    )
    return {"seconds": seconds, "cpu": cpu, "setup": start - setup, "peak_mib": peak_kib / 1024, "counts": records}


def polars_sketch(pl: Any, source: Path, dest: Path) -> dict[str, int]:
    """The core of the recipe's work in polars alone, to put the floor in proportion: an id per record
    (file and line), exact dedup on the record's content (first kept), a 95/5 split by that hash, the
    shards in JSONL and the lineage (id, file, line, hash) in Parquet. It skips what the recipe does
    besides (validation, the profile, the report, the state store, set-aside files, run state) and uses
    polars' 64-bit hash, which is neither stable across polars releases nor collision-resistant, where
    the recipe needs both (its ids and dedup keys are stored across runs)."""
    frames = [
        pl.read_ndjson(part).with_row_index("line", offset=1).with_columns(file=pl.lit(part.name))
        for part in sorted(source.glob("*.jsonl"))
    ]
    records = pl.concat(frames).with_columns(content=pl.struct("question", "answer").hash(seed=1))
    records = records.with_columns(id=pl.concat_str("file", pl.col("line").cast(pl.String)).hash(seed=2))
    first = records["content"].is_first_distinct()
    kept = records.filter(first).rename({"question": "prompt", "answer": "completion"})
    kept = kept.with_columns(
        split=pl.when(pl.col("content") % 100 < 95).then(pl.lit("train")).otherwise(pl.lit("validation"))
    )
    for (split,), rows in kept.partition_by("split", as_dict=True).items():
        for start in range(0, rows.height, 200_000):
            shard = rows.slice(start, 200_000).select("id", "prompt", "completion")
            shard.write_ndjson(dest / f"{split}-{start // 200_000:05d}.jsonl")
    records.select("id", "file", "line", "content").write_parquet(dest / "lineage.parquet")
    records.filter(~first).select("id", "content").write_parquet(dest / "duplicates.parquet")
    return {"written": kept.height, "duplicate": records.height - kept.height, "quarantined": 0}


def cpu_seconds() -> float:
    """CPU time of this process, every thread, user and system: on a small machine the work that must
    fit in the time, however well it overlaps."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def first_lines(source: Path, folder: Path, count: int) -> Path:
    """``folder`` holding the first ``count`` lines of the first part of ``source``."""
    folder.mkdir(parents=True)
    first = sorted(source.glob("*.jsonl"))[0]
    with first.open("rb") as lines, (folder / first.name).open("wb") as out:
        out.writelines(line for _, line in zip(range(count), lines, strict=False))
    return folder


def measure(kind: str, source: Path, dest: Path, spec: dict[str, Any] | None) -> dict[str, Any]:
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, __file__, "--child", kind, str(source), str(dest), json.dumps(spec or {})]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the benchmark ---------------------------------------------------------------------------------


def pii_stage(argument: str | None) -> dict[str, Any] | None:
    if importlib.util.find_spec("curation.stages.pii") is None:
        return None
    return json.loads(argument) if argument else {"type": "pii"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--engines", default="local,ray", help="which executors to run (local, ray)")
    parser.add_argument("--pii-stage", default=None, help='the PII stage as recipe JSON (default {"type": "pii"})')
    parser.add_argument("--no-memory-check", action="store_true", help="skip the N/10 run of the memory check")
    parser.add_argument("--no-pii", action="store_true", help="skip the runs with the PII stage (slow at 1M)")
    parser.add_argument("--no-scheduled", action="store_true", help="skip the scheduled run that adds N/800 records")
    parser.add_argument("--work", default=None, help="a folder for input and output (default: a temporary one)")
    args = parser.parse_args()
    engines = [e for e in args.engines.split(",") if e]
    if unknown := sorted(set(engines) - {"local", "ray"}):
        parser.error(f"--engines: {', '.join(unknown)}: the executors are local (the embedded one) and ray")
    if args.work is not None and not Path(args.work).is_dir():
        parser.error(f"--work {args.work}: no such folder")
    pii = None if args.no_pii else pii_stage(args.pii_stage)

    with tempfile.TemporaryDirectory(prefix="curation-bench-", dir=args.work) as work:
        folder = Path(work)
        source = folder / "input"
        started = time.perf_counter()
        generate(source, args.records)
        size = sum(p.stat().st_size for p in source.glob("*.jsonl"))
        parts = len(list(source.glob("*.jsonl")))
        print(
            f"{args.records:,} records, {size / 2**20:.0f} MiB JSONL in {parts} part(s), "
            f"generated in {time.perf_counter() - started:.1f}s",
            flush=True,
        )
        print(f"machine: {machine()}", flush=True)
        results: list[tuple[str, dict[str, Any]]] = [("polars floor (read + write JSONL)", None)]
        floor = measure("floor", source, folder / "floor", None)
        results[0] = (results[0][0], floor)
        results.append(("polars sketch (ids, dedup, split, write)", measure("sketch", source, folder / "sketch", None)))
        variants = [("without PII", None)] + ([("with PII", pii)] if pii is not None else [])
        scheduled = None  # the embedded run without PII, which a scheduled run then extends
        for label, stage in variants:
            for engine in engines:
                dest = folder / f"{engine}-{len(results)}"
                spec = recipe(source, dest, stage)
                outcome = measure(engine, source, dest, spec)
                results.append((f"{engine} executor, {label}", outcome))
                print(f"  {engine} {label}: {outcome['seconds']:.1f}s (+{outcome['setup']:.1f}s start-up)", flush=True)
                if (engine, stage) == ("local", None):
                    scheduled = (dest, spec, outcome)
        if pii is None and not args.no_pii:
            print("PII stage: curation.stages.pii is not in this checkout; runs are without it")
        report(args.records, results, floor)
        if scheduled is not None and not args.no_scheduled:
            scheduled_run(folder, source, *scheduled, max(1, args.records // 800))
        if "local" in engines and not args.no_memory_check:
            small = max(1, args.records // 10)
            small_source = folder / "small"
            generate(small_source, small)
            spec = recipe(small_source, folder / "local-small", None)
            tenth = measure("local", small_source, folder / "local-small", spec)
            full = next(r for name, r in results if name == "local executor, without PII")
            ratio = full["peak_mib"] / tenth["peak_mib"]
            verdict = "within 2x" if ratio <= 2 else "OVER 2x"
            print(
                f"\nembedded executor peak memory: {full['peak_mib']:.0f} MiB at {args.records:,} records, "
                f"{tenth['peak_mib']:.0f} MiB at {small:,}: {ratio:.2f}x ({verdict})"
            )


def scheduled_run(folder: Path, source: Path, dest: Path, spec: dict[str, Any], full: dict[str, Any], new: int) -> None:
    """A scheduled run after the embedded one: a new part with ``new`` records (some repeat published
    ones) lands beside the input; the run reads only that part and carries every published record
    into its version (``output.carry_forward``, the default)."""
    generate(folder / "new", new, seed=11)
    part = source / "part-new.jsonl"
    part.write_bytes(b"".join(p.read_bytes() for p in sorted((folder / "new").glob("*.jsonl"))))
    try:
        outcome = measure("local", source, dest, spec)
    finally:
        part.unlink()
    counts = outcome["counts"]
    print(
        f"\nscheduled run (embedded): {counts['input']:,} new records, {counts['carried']:,} carried: "
        f"{outcome['seconds']:.1f}s, {outcome['seconds'] / full['seconds']:.2f}x the first run's time, "
        f"peak {outcome['peak_mib']:.0f} MiB"
    )


def report(records: int, results: list[tuple[str, dict[str, Any]]], floor: dict[str, Any]) -> None:
    print()
    print(
        f"{'run':<40} {'seconds':>8} {'CPU s':>6} {'records/s':>11} {'peak MiB':>9} "
        f"{'time/floor':>11} {'CPU/floor':>10} {'mem/floor':>10}"
    )
    for name, r in results:
        rate = records / r["seconds"]
        print(
            f"{name:<40} {r['seconds']:>8.1f} {r['cpu']:>6.1f} {rate:>11,.0f} {r['peak_mib']:>9.0f} "
            f"{r['seconds'] / floor['seconds']:>10.2f}x {r['cpu'] / floor['cpu']:>9.2f}x "
            f"{r['peak_mib'] / floor['peak_mib']:>9.2f}x"
        )
    print("(CPU s: the process's own threads; for Ray, the driver's, not its workers')")
    for name, r in results:
        if r.get("counts"):
            c = r["counts"]
            print(f"  {name}: written {c['written']:,}, duplicate {c['duplicate']:,}, quarantined {c['quarantined']:,}")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPUs ({cpu}), {memory:.0f} GiB RAM, Python {platform.python_version()}"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, source, dest, spec = sys.argv[2:6]
        print(json.dumps(child(kind, source, dest, spec)))
    else:
        main()
