"""The data-quality report: ``report.html`` (self-contained, plots as inline SVG) and ``report.json``
(the same figures), written beside ``manifest.json`` in every published version.

Figures come from what the run already recorded, so the report reads nothing back:

- outcomes and reasons: the manifest's counts;
- what each stage removed and why, and duplicate cluster sizes: the set-aside rows' stage, outcome,
  reason and duplicate_of, kept by the writer as it wrote them (``reported_columns``);
- length distributions and label balance: the ``profile`` stage's stats (``Profile`` below, the last
  stage before the writer, so it sees exactly what is published);
- stage summaries (cleaning changes, expectations, PII counts when the PII stage ran): stage stats.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
from collections import Counter
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from curation.stages.base import StageResult
from schemas.arrow_bytes import string_buffers
from schemas.manifest import Manifest
from schemas.pii import PII_FOUND

REPORT_HTML, REPORT_JSON = "report.html", "report.json"
MAX_LABELS = 30  # the rest are summed as "(N other labels)"


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
        for field in (f for f in self.fields if f in batch.column_names):
            for upper, count in length_bins(batch[field]).items():
                stats[f"chars:{field}:{upper}"] += count
        # A column of nulls alone (no label in the input) has nothing to count.
        if self.label and self.label in batch.column_names and batch[self.label].null_count < batch.num_rows:
            for value, count in _value_counts(batch[self.label]):
                if value is not None:
                    stats[f"label:{value}"] += count
        return StageResult(kept=batch, stats=dict(stats))


def length_bins(values: pa.Array | pa.ChunkedArray) -> Counter[int]:
    """How many values have their length in characters in each ``length_bin`` (a null has length 0)."""
    bins: Counter[int] = Counter()
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    for chunk in chunks:
        if not (pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type)):
            chunk = pc.cast(chunk, pa.string())
        lengths = char_lengths(chunk)
        if not lengths.size:
            continue
        # A vectorised count of the values up to each bin's upper bound, from the shortest value's bin to the
        # longest's (a few bins for text), in place of a step per value or per distinct length.
        upper, counted = length_bin(int(lengths.min())), 0
        while counted < lengths.size:
            at_most = int(np.count_nonzero(lengths <= upper))
            if at_most > counted:
                bins[upper] += at_most - counted
            upper, counted = upper * 2 or 1, at_most
    return bins


def char_lengths(values: pa.Array) -> np.ndarray:
    """``pc.utf8_length`` of a string array, 0 for a null. ASCII text (the usual) has as many characters as
    bytes, which its offsets give: one vectorised pass finds it, where Arrow's kernel counted a value at a time."""
    offsets, data = string_buffers(values)
    data = data[offsets[0] : offsets[-1]]
    if data.size and data.max() >= 0x80:
        return pc.fill_null(pc.utf8_length(values), 0).to_numpy()
    lengths = np.diff(offsets)
    if values.null_count:
        lengths[~np.asarray(values.is_valid())] = 0  # a null's slot may span bytes: Arrow does not forbid it
    return lengths


def _value_counts(values: pa.Array | pa.ChunkedArray) -> list[tuple[Any, int]]:
    counted = pc.value_counts(values)
    return list(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(), strict=True))


# --- figures ---------------------------------------------------------------------------------------


SET_ASIDE_COLUMNS = ("stage", "outcome", "reason", "duplicate_of")  # what the report counts of set-aside rows


def reported_columns(set_aside: pa.Table) -> pa.Table:
    """The set-aside columns the report counts, as strings (all null where a table lacks one).

    The writer keeps these of every set-aside table it writes, so the report need not parse the
    published rows back (a third of a large run's report time, to get the same strings)."""
    return pa.table(
        {
            name: set_aside[name].cast(pa.string())
            if name in set_aside.column_names
            else pa.nulls(set_aside.num_rows, pa.string())
            for name in SET_ASIDE_COLUMNS
        }
    )


def set_aside_frame(tables: list[pa.Table]) -> pl.DataFrame:
    """One frame of ``reported_columns`` tables."""
    if not tables:
        return pl.DataFrame(schema=dict.fromkeys(SET_ASIDE_COLUMNS, pl.String))
    return pl.from_arrow(pa.concat_tables(tables))


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
    # Duplicates only: a record filtered for holding a rejected record's content names it there too.
    clustered = pl.col("duplicate_of").is_not_null() & (pl.col("outcome") == "duplicate")
    dupes = set_aside.filter(clustered).group_by("duplicate_of").len()
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
    top = dict(labels.most_common(MAX_LABELS))
    if len(labels) > MAX_LABELS:
        # Named apart from every real label: one of the same name would be overwritten, and the
        # balance no longer add up to the records written.
        rest = f"({len(labels) - MAX_LABELS} other labels)"
        while rest in labels:
            rest = f"({rest})"
        top[rest] = sum(labels.values()) - sum(top.values())
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
        "labels": top,
        "pii": pii,
        "stage_stats": {name: stats for name, stats in stages.items() if name not in pii},
        "splits": {name: split.records for name, split in manifest.splits.items()},
        # The figures above are this run's; the splits also hold records copied from an earlier version.
        "carried": {"records": counts.carried, "from_version": manifest.carried_from},
    }


# --- plots (inline SVG, drawn here) -------------------------------------------------------------------
# Bars and steps are a few rectangles and paths: drawing them directly costs microseconds, where a
# plotting library cost more to import and draw than a whole run's writing. Each plot has a <title>
# (its accessible name), axis labels, and every value as text; bars and points carry data-label and
# data-value. Text widths are estimated (0.6 em a character): there are no font metrics here.

_WIDTH, _FONT, _CHAR = 720, 12, 7.2  # px: plot width, font size, estimated width of a character
_COLOURS = ("#4472c4", "#ed7d31", "#70ad47", "#7030a0", "#c00000", "#2e8b8b")
_MAX_VERTICAL = 8  # more bars than this are drawn horizontally, so labels and values do not collide


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _ticks(top: int) -> list[int]:
    """0 and about five round steps (1, 2 or 5 times a power of ten) up to at least ``top``."""
    if top <= 0:
        return [0, 1]
    rough = top / 5
    power = 10 ** math.floor(math.log10(rough))
    step = max(1, int(next(m * power for m in (1, 2, 5, 10) if m * power >= rough)))
    return list(range(0, -(-top // step) * step + 1, step))


def _svg(name: str, title: str, height: float, body: list[str]) -> str:
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{_WIDTH}' height='{height:.0f}' "
        f"viewBox='0 0 {_WIDTH} {height:.0f}' role='img' aria-labelledby='plot-{name}-title' "
        f"font-family='system-ui,sans-serif' font-size='{_FONT}' fill='#222'>"
        f"<title id='plot-{name}-title'>{_e(title)}</title><rect width='100%' height='100%' fill='#fff'/>"
        f"<text x='{_WIDTH / 2}' y='20' text-anchor='middle' font-size='14' font-weight='600'>{_e(title)}</text>"
        + "".join(body)
        + "</svg>"
    )


def _value_grid(ticks: list[int], x0: float, y0: float, width: float, height: float, across: bool) -> list[str]:
    """Gridlines with their values: horizontal lines for upright bars, vertical ones when ``across``."""
    out = []
    for tick in ticks:
        share = tick / ticks[-1]
        if across:
            x = x0 + share * width
            out.append(f"<path d='M{x:.1f} {y0:.1f}V{y0 + height:.1f}' stroke='#ddd'/>")
            out.append(f"<text x='{x:.1f}' y='{y0 + height + 16:.1f}' text-anchor='middle'>{tick:,}</text>")
        else:
            y = y0 + height - share * height
            out.append(f"<path d='M{x0:.1f} {y:.1f}H{x0 + width:.1f}' stroke='#ddd'/>")
            out.append(f"<text x='{x0 - 6:.1f}' y='{y + 4:.1f}' text-anchor='end'>{tick:,}</text>")
    out.append(
        f"<path class='axis' d='M{x0:.1f} {y0:.1f}V{y0 + height:.1f}H{x0 + width:.1f}' stroke='#333' fill='none'/>"
    )
    return out


def _left_margin(ticks: list[int]) -> float:
    """Room left of an upright plot for its largest tick value and the vertical axis's name."""
    return len(f"{ticks[-1]:,}") * _CHAR + 34


def _label_below(middle: float, y: float, text: str, rotate: bool) -> str:
    """A label under a bar or bin, centred, or turned 30 degrees when labels are long."""
    if not rotate:
        return f"<text x='{middle:.1f}' y='{y:.1f}' text-anchor='middle'>{_e(text)}</text>"
    turn = f"rotate(-30 {middle:.1f} {y:.1f})"
    return f"<text x='{middle:.1f}' y='{y:.1f}' text-anchor='end' transform='{turn}'>{_e(text)}</text>"


def _bar(
    name: str,
    labels: list[str],
    values: list[int],
    title: str,
    value_label: str,
    label_axis: str = "",
    horizontal: bool = False,
) -> str:
    """A bar per label, its value written at the bar's end; horizontal if asked or when labels would not fit below."""
    ticks = _ticks(max(values, default=0))
    longest = max((len(label) for label in labels), default=0)
    widest_value = max((len(f"{v:,}") for v in values), default=1)
    bar = (
        "<rect class='bar' data-label='{label}' data-value='{value}' x='{x:.1f}' y='{y:.1f}' width='{w:.1f}' "
        f"height='{{h:.1f}}' fill='{_COLOURS[0]}'><title>{{label}}: {{shown}}</title></rect>"
    )
    body = []
    if horizontal or len(labels) > _MAX_VERTICAL or longest > 24:
        fits = min(longest, int(_WIDTH * 0.45 / _CHAR))  # longer labels are cut; the bar's <title> has them whole
        x0, y0, row = fits * _CHAR + 16, 40.0, 22.0
        width, height = _WIDTH - x0 - widest_value * _CHAR - 16, row * len(labels)
        body += _value_grid(ticks, x0, y0, width, height, across=True)
        for index, (label, value) in enumerate(zip(labels, values, strict=True)):
            y, w = y0 + index * row + 3, value / ticks[-1] * width
            shown = label if len(label) <= fits else label[: fits - 1] + "…"
            body.append(bar.format(label=_e(label), value=value, shown=f"{value:,}", x=x0, y=y, w=w, h=row - 6))
            body.append(f"<text x='{x0 - 6:.1f}' y='{y + 12:.1f}' text-anchor='end'>{_e(shown)}</text>")
            body.append(f"<text class='value' x='{x0 + w + 4:.1f}' y='{y + 12:.1f}'>{value:,}</text>")
        axes = (value_label, label_axis)
        total = y0 + height + 48
    else:
        rotate = longest > 8
        x0 = _left_margin(ticks)
        y0, height = 48.0, 200.0
        width, band = _WIDTH - x0 - 16, (_WIDTH - x0 - 16) / max(len(labels), 1)
        body += _value_grid(ticks, x0, y0, width, height, across=False)
        for index, (label, value) in enumerate(zip(labels, values, strict=True)):
            h = value / ticks[-1] * height
            x, y, middle = x0 + index * band + band * 0.15, y0 + height - h, x0 + (index + 0.5) * band
            body.append(bar.format(label=_e(label), value=value, shown=f"{value:,}", x=x, y=y, w=band * 0.7, h=h))
            body.append(f"<text class='value' x='{middle:.1f}' y='{y - 4:.1f}' text-anchor='middle'>{value:,}</text>")
            body.append(_label_below(middle, y0 + height + 16, label, rotate))
        axes = (label_axis, value_label)
        total = y0 + height + (longest * _CHAR * 0.5 + 24 if rotate else 24) + 24
    body += _axis_labels(axes, x0, y0, width, height, total)
    return _svg(name, title, total, body)


def _axis_labels(names: tuple[str, str], x0: float, y0: float, width: float, height: float, total: float) -> list[str]:
    """The name of the horizontal axis below the plot and of the vertical one along its left side."""
    across, up = names
    out = []
    if across:
        out.append(f"<text class='axis-label' x='{x0 + width / 2:.1f}' y='{total - 8:.1f}' text-anchor='middle'>")
        out.append(f"{_e(across)}</text>")
    if up:
        out.append(f"<text class='axis-label' transform='translate(14 {y0 + height / 2:.1f}) rotate(-90)' ")
        out.append(f"text-anchor='middle'>{_e(up)}</text>")
    return out


def _lengths_plot(lengths: dict[str, dict[str, int]]) -> str:
    """A step line per field over the power-of-two length bins (a bin a field lacks holds 0 of its records)."""
    uppers = sorted({int(upper) for bins in lengths.values() for upper in bins})
    ticks = _ticks(max((v for bins in lengths.values() for v in bins.values()), default=0))
    x0 = _left_margin(ticks)
    y0, height, width = 64.0, 200.0, _WIDTH - x0 - 16
    band = width / len(uppers)
    body = _value_grid(ticks, x0, y0, width, height, across=False)
    legend_x = x0
    for index, upper in enumerate(uppers):
        body.append(_label_below(x0 + (index + 0.5) * band, y0 + height + 16, f"≤{upper:,}", rotate=True))
    for number, (field, bins) in enumerate(lengths.items()):
        colour = _COLOURS[number % len(_COLOURS)]
        values = [bins.get(str(upper), 0) for upper in uppers]
        ys = [y0 + height - v / ticks[-1] * height for v in values]
        steps = "".join(
            f"{'M' if i == 0 else 'L'}{x0 + i * band:.1f} {y:.1f}H{x0 + (i + 1) * band:.1f}" for i, y in enumerate(ys)
        )
        body.append(f"<path class='step' data-field='{_e(field)}' d='{steps}' fill='none' stroke='{colour}' ")
        body.append(f"stroke-width='2'><title>{_e(field)}</title></path>")
        for index, (upper, value, y) in enumerate(zip(uppers, values, ys, strict=True)):
            middle = x0 + (index + 0.5) * band
            body.append(
                f"<circle class='point' data-label='{_e(field)} ≤{upper}' data-value='{value}' cx='{middle:.1f}' "
                f"cy='{y:.1f}' r='3' fill='{colour}'><title>{_e(field)}, ≤{upper:,} characters: {value:,}</title></circle>"
                f"<text class='value' x='{middle:.1f}' y='{y - 6 - 11 * number:.1f}' text-anchor='middle' fill='{colour}' "
                f"font-size='10'>{value:,}</text>"
            )
        body.append(f"<rect x='{legend_x:.1f}' y='30' width='12' height='12' fill='{colour}'/>")  # the legend, in a row
        body.append(f"<text x='{legend_x + 16:.1f}' y='40'>{_e(field)}</text>")
        legend_x += len(field) * _CHAR + 36
    total = y0 + height + len(f"≤{uppers[-1]:,}") * _CHAR * 0.5 + 48
    body += _axis_labels(("characters", "records"), x0, y0, width, height, total)
    return _svg("lengths", "Text length (characters, power-of-two bins)", total, body)


def plots(data: dict[str, Any]) -> dict[str, str]:
    """Plot name -> inline SVG; plots with nothing to show are left out."""
    out = {}
    counts = data["counts"]
    names = ["written", "filtered", "duplicate", "quarantined"]
    title = f"What happened to {counts['input']:,} input records"
    out["outcomes"] = _bar("outcomes", names, [counts[n] for n in names], title, "records")
    if data["removed_by_stage"]:
        rows = data["removed_by_stage"]
        out["removed"] = _bar(
            "removed",
            [f"{r['stage']}: {r['reason']}" for r in rows],
            [r["records"] for r in rows],
            "Records removed, by stage and reason",
            "records",
            horizontal=True,
        )
    if data["lengths"]:
        out["lengths"] = _lengths_plot(data["lengths"])
    if data["labels"]:
        labels = data["labels"]
        out["labels"] = _bar(
            "labels", list(labels), list(labels.values()), "Label balance (written records)", "records"
        )
    if data["duplicate_cluster_sizes"]:
        sizes = data["duplicate_cluster_sizes"]
        title = "Duplicate clusters by size (records)"
        out["clusters"] = _bar("clusters", list(sizes), list(sizes.values()), title, "clusters", "size")
    merged: Counter[str] = Counter()
    for stats in data["pii"].values():  # the entities found; the records counted are in the stage's table
        merged.update({k: v for k, v in stats.items() if PII_FOUND.fullmatch(k) and isinstance(v, int)})
    if merged:
        out["pii"] = _bar(
            "pii", list(merged), list(merged.values()), "PII found and redacted", "found", horizontal=True
        )
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


def write_report(manifest: Manifest, fs: Any, folder: str, set_aside: pl.DataFrame) -> dict[str, str]:
    """Write report.html and report.json into ``folder``; returns each one's name and sha256."""
    data = figures(manifest, set_aside)
    page = render_html(data, plots(data))
    written = {}
    for name, text in ((REPORT_HTML, page), (REPORT_JSON, json.dumps(data, indent=2))):
        body = text.encode()
        with fs.open_output_stream(f"{folder}/{name}") as out:
            out.write(body)
        written[name] = hashlib.sha256(body).hexdigest()
    return written


def attach_report(manifest: Manifest, writer: Any) -> Manifest:
    """Called as the manifest is built: the report goes into the staged version, so it publishes with it,
    and its checksums into the manifest, so training's check covers it (scripts read report.json)."""
    written = write_report(manifest, writer.fs, writer.staging, set_aside_frame(writer.set_aside_reported))
    manifest.side_files = [*manifest.side_files, *written]
    manifest.side_file_sha256 = {**manifest.side_file_sha256, **written}
    return manifest
