"""The data-quality report: report.html beside the manifest, self-contained, with its plots rendered
in a real browser (Playwright driving Debian's Chromium), and report.json with the same figures."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import boto3
import polars as pl
import pytest

from bench.corpus import generate
from curation.published import read_manifest, verify_checksums
from curation.report import figures, plots, render_html
from schemas.manifest import Counts, Manifest
from tests.conftest import chromium
from tests.helpers import run, write_jsonl


def _recipe(dest: str) -> dict:
    return {
        "dataset": "support",
        "sources": [{"path": "in.jsonl"}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a", "label": "topic"},
        "stages": [
            {
                "type": "expectations",
                "expect": [{"column": "label", "check": "in_set", "values": ["billing", "cards"]}],
            },
            {"type": "clean"},
            {"type": "instruction_filter"},
            {"type": "near_dedup"},
        ],
        "output": {"dest": dest},
    }


def _rows() -> list[dict]:
    texts = generate(40, duplicate_share=0.5, seed=9).texts
    rows = [
        {"q": f"Question {i}: <b>{t[:80]}</b>", "a": t, "topic": ["billing", "cards"][i % 2]}
        for i, t in enumerate(texts)
    ]
    rows += [{"q": "Echo me", "a": "echo me", "topic": "cards"}, {"q": "Odd one", "a": "Fine answer", "topic": "other"}]
    return rows


def _render(path: Path) -> dict:
    """Open the page headless; every request that is not the file itself is refused and recorded."""
    with chromium() as browser:
        page = browser.new_page()
        outside: list[str] = []
        page.route(
            "**/*",
            lambda route: (
                route.continue_()
                if route.request.url.startswith("file:")
                else (outside.append(route.request.url), route.abort())
            ),
        )
        page.goto(path.as_uri())
        found = page.eval_on_selector_all(
            "figure.plot",
            """figs => figs.map(f => {
                const svg = f.querySelector('svg');
                const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
                return {name: f.dataset.plot, width: box.width, height: box.height,
                        shapes: svg ? svg.querySelectorAll('path, rect, use').length : 0};
            })""",
        )
        title = page.title()
    return {"plots": {f["name"]: f for f in found}, "outside": outside, "title": title}


def test_report_opens_in_chromium_with_its_plots(workdir: Path) -> None:
    rows = _rows()
    write_jsonl(workdir / "in.jsonl", rows)
    version = Path(run(workdir, _recipe("output")).version_uri)
    manifest = read_manifest(str(version))
    assert (version / "report.html").is_file() and "report.html" in manifest.side_files

    seen = _render(version / "report.html")
    assert seen["title"] == "support v1: data-quality report"
    assert seen["outside"] == []  # self-contained: nothing fetched from anywhere
    assert set(seen["plots"]) == {"outcomes", "removed", "lengths", "labels", "clusters"}
    for plot in seen["plots"].values():
        assert plot["width"] > 200 and plot["height"] > 100 and plot["shapes"] > 5, plot

    # report.json holds the same figures, and they agree with the manifest and the set-aside rows.
    data = json.loads((version / "report.json").read_text())
    assert data["counts"]["written"] == manifest.counts.written
    assert sum(r["records"] for r in data["removed_by_stage"]) == manifest.counts.input - manifest.counts.written
    by_reason = {(r["stage"], r["reason"]): r["records"] for r in data["removed_by_stage"]}
    assert by_reason[("expectations", "expect_column_values_to_be_in_set:label")] == 1
    assert by_reason[("instruction_filter", "instruction")] == 1
    duplicates = manifest.counts.reasons["duplicate"]["near_duplicate"]
    assert sum((int(size) - 1) * n for size, n in data["duplicate_cluster_sizes"].items()) == duplicates
    assert sum(data["labels"].values()) == manifest.counts.written
    assert set(data["labels"]) == {"billing", "cards"}
    assert sum(data["lengths"]["completion"].values()) == manifest.counts.written
    assert data["stage_stats"]["clean"]["html_removed:prompt"] == sum("<b>" in r["q"] for r in rows)


def test_pii_counts_are_plotted_when_the_pii_stage_ran() -> None:
    data = _figures({"records": 3, "chars:text:64": 3}, {"pii": {"PERSON": 4, "EMAIL_ADDRESS": 2}}, written=3)
    assert data["pii"] == {"pii": {"PERSON": 4, "EMAIL_ADDRESS": 2}}
    svgs = plots(data)
    assert set(svgs) == {"outcomes", "lengths", "pii"}
    page = render_html(data, svgs)
    assert "PERSON" in svgs["pii"] and "data-plot='pii'" in page


def _figures(profile: dict, stages: dict, written: int) -> dict:
    manifest = Manifest(
        dataset="d",
        version=1,
        created_at=datetime.now(UTC),
        recipe_sha256="0" * 64,
        record_kind="instruction",
        format="jsonl",
        counts=Counts(input=written, written=written),
        splits={},
        stats={"stages": {"profile": profile, **stages}},
    )
    empty = pl.DataFrame(
        schema={"stage": pl.String, "outcome": pl.String, "reason": pl.String, "duplicate_of": pl.String}
    )
    return figures(manifest, empty)


def test_the_pii_plot_shows_the_pii_found_and_the_table_the_records_counted() -> None:
    stages = {
        "pii": {"PERSON": 4, "image_PERSON": 1, "records_scanned": 4865, "records_redacted": 3, "review_flagged": 2}
    }
    data = _figures({"records": 4865}, stages, written=4865)
    svg = plots(data)["pii"]
    assert "data-label='PERSON'" in svg and "data-label='image_PERSON'" in svg
    for counter in ("records_scanned", "records_redacted", "review_flagged"):  # no bar beside the entities
        assert counter not in svg
    assert "records_scanned" in render_html(data, plots(data))  # still said, in the stage's table
    nothing_found = _figures({"records": 9}, {"pii": {"records_scanned": 9, "records_redacted": 0}}, written=9)
    assert "pii" not in plots(nothing_found)


def test_the_label_balance_adds_up_and_keeps_a_label_named_like_the_rest() -> None:
    profile = {f"label:l{n:02}": 10 for n in range(40)} | {"label:(other)": 50, "label:(12 other labels)": 1}
    data = _figures(profile, {}, written=451)
    assert sum(data["labels"].values()) == 451
    assert data["labels"]["(other)"] == 50  # a real label, among the 30 most common
    assert data["labels"]["((12 other labels))"] == 11 * 10 + 1  # the rest, apart from the label so named


@pytest.mark.s3
def test_the_reports_are_checksummed_in_the_manifest(workdir: Path) -> None:
    # Listed in side_files without a sha256, a changed report.json passed training's checksum check.
    write_jsonl(workdir / "in.jsonl", [{"q": "Hello?", "a": "Hi.", "topic": "cards"}])
    version = Path(run(workdir, {**_recipe("output"), "stages": []}).version_uri)
    manifest = read_manifest(str(version))
    assert {"report.json", "report.html"} <= manifest.side_file_sha256.keys()
    assert verify_checksums(str(version), manifest) == []
    report = version / "report.json"
    report.write_text(report.read_text().replace('"written": 1', '"written": 2'))
    assert verify_checksums(str(version), manifest) == ["report.json"]


def test_report_is_published_with_the_version_on_s3(workdir: Path, bucket: str, aws_env: str) -> None:
    write_jsonl(workdir / "in.jsonl", _rows())
    run(workdir, _recipe(f"s3://{bucket}/datasets"))
    s3 = boto3.client("s3", endpoint_url=aws_env)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="datasets/support/v1/")["Contents"]}
    assert {"datasets/support/v1/report.html", "datasets/support/v1/report.json"} <= keys
    page = s3.get_object(Bucket=bucket, Key="datasets/support/v1/report.html")["Body"].read().decode()
    assert page.count("<figure class='plot'") == 5
    version = f"s3://{bucket}/datasets/support/v1"
    assert verify_checksums(version, read_manifest(version)) == []  # the reports' checksums hold on S3 too
