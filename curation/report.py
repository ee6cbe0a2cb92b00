"""The data-quality report: ``report.html`` (self-contained, plots as inline SVG) and ``report.json``
(the same figures), written beside ``manifest.json`` in every published version.

Figures come from what the run already recorded, so the report costs one read of the set-aside rows:

- outcomes and reasons: the manifest's counts;
- what each stage removed and why, and duplicate cluster sizes: the set-aside rows;
- length distributions and label balance: the ``profile`` stage's stats (``Profile`` below, the last
  stage before the writer, so it sees exactly what is published);
- stage summaries (cleaning changes, expectations, PII counts when the PII stage ran): stage stats.
"""

from __future__ import annotations

import html
import io
import json
from collections import Counter
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from curation.stages.base import StageResult
from schemas.manifest import Manifest

REPORT_HTML, REPORT_JSON = "report.html", "report.json"
MAX_LABELS = 30  # the rest are summed as "(other)"


def length_bin(length: int) -> int:
    """Upper bound of a length's power-of-two bin: 0, 1, 2, 4, 8, ..."""
    return 0 if length <= 0 else 1 << (length - 1).bit_length()


class Profile:
    """Pass-through stage that counts text lengths (power-of-two bins) and labels of what is written."""

    name = "profile"

    def __init__(self, fields: list[str], label: str | None = "label") -> None:
        self.fields, self.label = fields, label

    def __call__(self, batch: pa.Table) -> StageResult:
        stats: Counter[str] = Counter({"records": batch.num_rows})
        # Counted per distinct value in Arrow, then binned in Python: a few hundred values, not a row each.
        for field in (f for f in self.fields if f in batch.column_names):
            lengths = pc.fill_null(pc.utf8_length(pc.cast(batch[field], pa.string())), 0)
            for length, count in _value_counts(lengths):
                stats[f"chars:{field}:{length_bin(length)}"] += count
        if self.label and self.label in batch.column_names:
            for value, count in _value_counts(batch[self.label]):
                if value is not None:
                    stats[f"label:{value}"] += count
        return StageResult(kept=batch, stats=dict(stats))


def _value_counts(values: pa.Array | pa.ChunkedArray) -> list[tuple[Any, int]]:
    counted = pc.value_counts(values)
    return list(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(), strict=True))


# --- figures ---------------------------------------------------------------------------------------


def _set_aside_frame(fs: Any, folder: str, paths: list[str]) -> pl.DataFrame:
    frames = []
    for path in paths:
        with fs.open_input_stream(f"{folder}/{path}") as stream:
            data = stream.read()
        if data:
            frames.append(pl.read_ndjson(io.BytesIO(data)).select("stage", "outcome", "reason", "duplicate_of"))
    if not frames:
        return pl.DataFrame(
            schema={"stage": pl.String, "outcome": pl.String, "reason": pl.String, "duplicate_of": pl.String}
        )
    return pl.concat(frames, how="vertical_relaxed")


def figures(manifest: Manifest, set_aside: pl.DataFrame) -> dict[str, Any]:
    """Everything the report shows, as plain JSON-able data."""
    counts = manifest.counts
    stages: dict[str, dict[str, int]] = dict(manifest.stats.get("stages", {}))
    profile = stages.pop("profile", {})
    removed = (
        set_aside.group_by("stage", "outcome", "reason")
        .len()
        .sort(["len", "stage", "reason"], descending=[True, False, False])
    )
    dupes = set_aside.filter(pl.col("duplicate_of").is_not_null()).group_by("duplicate_of").len()
    cluster_sizes = Counter(int(n) + 1 for n in dupes["len"].to_list())
    lengths: dict[str, dict[int, int]] = {}
    labels: Counter[str] = Counter()
    for key, value in profile.items():
        kind, _, rest = key.partition(":")
        if kind == "chars":
            field, _, upper = rest.rpartition(":")
            lengths.setdefault(field, {})[int(upper)] = value
        elif kind == "label":
            labels[rest] = value
    top = labels.most_common(MAX_LABELS)
    if len(labels) > MAX_LABELS:
        top.append(("(other)", sum(labels.values()) - sum(v for _, v in top)))
    pii = {name: stats for name, stats in stages.items() if "pii" in name.lower()}
    return {
        "dataset": manifest.dataset,
        "version": manifest.version,
        "created_at": manifest.created_at.isoformat(),
        "counts": {
            "input": counts.input,
            "written": counts.written,
            "filtered": counts.filtered,
            "duplicate": counts.duplicate,
            "quarantined": counts.quarantined,
        },
        "reasons": counts.reasons,
        "removed_by_stage": [
            {"stage": r["stage"], "outcome": r["outcome"], "reason": r["reason"], "records": r["len"]}
            for r in removed.to_dicts()
        ],
        "duplicate_cluster_sizes": {str(size): n for size, n in sorted(cluster_sizes.items())},
        "lengths": {f: {str(k): v for k, v in sorted(bins.items())} for f, bins in sorted(lengths.items())},
        "labels": dict(top),
        "pii": pii,
        "stage_stats": {name: stats for name, stats in stages.items() if name not in pii},
        "splits": {name: split.records for name, split in manifest.splits.items()},
        # The figures above are this run's; the splits also hold records copied from an earlier version.
        "carried": {"records": counts.carried, "from_version": manifest.carried_from},
    }


# --- plots (matplotlib, inline SVG) ------------------------------------------------------------------


def _svg(figure: Any) -> str:
    import matplotlib.pyplot as plt

    out = io.StringIO()
    figure.savefig(out, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = out.getvalue()
    return text[text.index("<svg") :]  # drop the XML prologue: it is not allowed inside HTML


def _bar(labels: list[str], values: list[int], title: str, horizontal: bool = False, xlabel: str = "") -> str:
    import matplotlib.pyplot as plt

    height = max(2.5, 0.32 * len(labels) + 1) if horizontal else 3.2
    figure, axes = plt.subplots(figsize=(7.5, height))
    if horizontal:
        axes.barh(labels[::-1], values[::-1], color="#4472c4")
    else:
        axes.bar(labels, values, color="#4472c4")
        axes.tick_params(axis="x", labelrotation=30 if max((len(x) for x in labels), default=0) > 8 else 0)
    axes.set_title(title)
    if xlabel:
        axes.set_xlabel(xlabel)
    axes.spines[["top", "right"]].set_visible(False)
    return _svg(figure)


def _lengths_plot(lengths: dict[str, dict[str, int]]) -> str:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 3.2))
    for field, bins in lengths.items():
        uppers = [int(k) for k in bins]
        axes.step(range(len(uppers)), list(bins.values()), where="mid", label=field)
        axes.set_xticks(range(len(uppers)), [f"≤{u}" for u in uppers], rotation=30)
    axes.set_title("Text length (characters, power-of-two bins)")
    axes.set_ylabel("records")
    axes.legend()
    axes.spines[["top", "right"]].set_visible(False)
    return _svg(figure)


def plots(data: dict[str, Any]) -> dict[str, str]:
    """Plot name -> inline SVG; plots with nothing to show are left out."""
    import matplotlib

    matplotlib.use("Agg")
    out = {}
    counts = data["counts"]
    names = ["written", "filtered", "duplicate", "quarantined"]
    out["outcomes"] = _bar(names, [counts[n] for n in names], f"What happened to {counts['input']:,} input records")
    if data["removed_by_stage"]:
        rows = data["removed_by_stage"]
        out["removed"] = _bar(
            [f"{r['stage']}: {r['reason']}" for r in rows],
            [r["records"] for r in rows],
            "Records removed, by stage and reason",
            horizontal=True,
            xlabel="records",
        )
    if data["lengths"]:
        out["lengths"] = _lengths_plot(data["lengths"])
    if data["labels"]:
        out["labels"] = _bar(list(data["labels"]), list(data["labels"].values()), "Label balance (written records)")
    if data["duplicate_cluster_sizes"]:
        sizes = data["duplicate_cluster_sizes"]
        out["clusters"] = _bar(list(sizes), list(sizes.values()), "Duplicate clusters by size (records)", xlabel="size")
    if data["pii"]:
        merged: Counter[str] = Counter()
        for stats in data["pii"].values():
            merged.update({k: v for k, v in stats.items() if isinstance(v, int)})
        out["pii"] = _bar(list(merged), list(merged.values()), "PII found and redacted", horizontal=True)
    return out


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:60rem;color:#222}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}figure{margin:1rem 0}figure svg{max-width:100%;height:auto}
"""


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="n">{v:,}</td>' if isinstance(v, int) else f"<td>{html.escape(str(v))}</td>" for v in row)
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(data: dict[str, Any], svgs: dict[str, str]) -> str:
    title = f"{data['dataset']} v{data['version']}: data-quality report"
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    parts.append(f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>")
    parts.append(f"<p>Created {html.escape(data['created_at'])}. Every input record is accounted for below.</p>")
    carried = data.get("carried") or {}
    if carried.get("from_version") is not None:
        parts.append(
            f"<p id='carried'>Carried {carried['records']:,} records from v{carried['from_version']} unchanged; "
            "the figures below describe this run only.</p>"
        )
    c = data["counts"]
    parts.append(_table([(k, v) for k, v in c.items()], ("outcome", "records")))
    captions = {
        "outcomes": "Outcomes",
        "removed": "What each stage removed, and why",
        "lengths": "Length distributions",
        "labels": "Label balance",
        "clusters": "Duplicate cluster sizes",
        "pii": "PII counts",
    }
    for name, svg in svgs.items():
        parts.append(f"<h2>{captions[name]}</h2><figure class='plot' data-plot='{name}'>{svg}</figure>")
    if data["removed_by_stage"]:
        rows = [(r["stage"], r["outcome"], r["reason"], r["records"]) for r in data["removed_by_stage"]]
        parts.append("<h2>Set aside, in numbers</h2>" + _table(rows, ("stage", "outcome", "reason", "records")))
    for name, stats in {**data["stage_stats"], **data["pii"]}.items():
        rows = [(k, v) for k, v in stats.items()]
        parts.append(f"<h2>Stage <code>{html.escape(name)}</code></h2>" + _table(rows, ("figure", "value")))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(manifest: Manifest, fs: Any, folder: str, set_aside_paths: list[str]) -> list[str]:
    """Write report.html and report.json into ``folder``; returns their names."""
    data = figures(manifest, _set_aside_frame(fs, folder, set_aside_paths))
    page = render_html(data, plots(data))
    for name, body in ((REPORT_JSON, json.dumps(data, indent=2)), (REPORT_HTML, page)):
        with fs.open_output_stream(f"{folder}/{name}") as out:
            out.write(body.encode())
    return [REPORT_HTML, REPORT_JSON]


def attach_report(manifest: Manifest, writer: Any) -> Manifest:
    """Called as the manifest is built: the report goes into the staged version, so it publishes with it."""
    names = write_report(manifest, writer.fs, writer.staging, [s.path for s in writer.set_aside.shards])
    manifest.side_files = [*manifest.side_files, *names]
    return manifest
