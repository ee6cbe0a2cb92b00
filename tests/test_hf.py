"""Hugging Face datasets saved to disk (save_to_disk, Hub-style parquet), locally and on S3."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import boto3
import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash

import connectors.state as state
from connectors.hf import HFSourceReader, _listed_at, _read_once, _under_folders
from connectors.storage import FileEntry, StorageError, list_files
from curation.stages.base import StageSettingError
from schemas.config import HFSource, RecipeError
from tests.helpers import lineage_rows, outputs, run, set_aside, watermark_values


def make_dataset() -> datasets.DatasetDict:
    def split(prefix: str, count: int) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {
                "id": [f"{prefix}-{i}" for i in range(count)],
                "question": [f"How do I reset PIN number {i}?" for i in range(count)],
                "answer": [f"Open the app, choose card {i}, then Reset PIN." for i in range(count)],
                "tags": [["cards", f"t{i % 3}"] for i in range(count)],
            }
        )

    return datasets.DatasetDict({"train": split("tr", 25), "test": split("te", 6)})


def read(path: str, batch_rows: int = 10, **settings: object) -> list[dict]:
    reader = HFSourceReader(HFSource(type="hf", path=path, **settings), batch_rows)
    batches = list(reader.batches())
    assert all(b.rows.num_rows <= batch_rows for b in batches)
    return [row for b in batches for row in b.rows.to_pylist()]


def test_save_to_disk_layout_reads_like_load_from_disk(tmp_path: Path) -> None:
    make_dataset().save_to_disk(str(tmp_path / "faq"), num_shards={"train": 3, "test": 1})
    rows = read(str(tmp_path / "faq"))
    expected = datasets.load_from_disk(str(tmp_path / "faq"))
    want = [dict(r) for name in ("train", "test") for r in expected[name]]
    assert [r["input_id"] for r in rows] == [r["id"] for r in want]
    assert [(r["question"], r["answer"], r["tags"]) for r in rows] == [
        (r["question"], r["answer"], r["tags"]) for r in want
    ]
    assert len({r["id"] for r in rows}) == 31
    assert {r["source"]["uri"].rsplit("/", 2)[-2] for r in rows} == {"train", "test"}
    assert [r["input_id"] for r in read(str(tmp_path / "faq"), split="test")] == [f"te-{i}" for i in range(6)]


def test_hub_parquet_layout_and_a_recipe(workdir: Path) -> None:
    faq = make_dataset()
    (workdir / "hub" / "data").mkdir(parents=True)
    faq["train"].to_parquet(str(workdir / "hub" / "data" / "train-00000-of-00001.parquet"))
    faq["test"].to_parquet(str(workdir / "hub" / "data" / "test-00000-of-00001.parquet"))
    assert len(read(str(workdir / "hub"), split="train")) == 25
    recipe = {
        "dataset": "faq",
        "sources": [{"type": "hf", "path": "hub", "split": "train"}],
        "record": {"kind": "instruction", "prompt": "{{ question }}", "completion": "{{ answer }}"},
        "output": {"validation_fraction": 0.0},
    }
    result = run(workdir, recipe)
    assert sorted(line["prompt"] for line in outputs(Path(result.version_uri))) == sorted(faq["train"]["question"])
    again = run(workdir, recipe)
    assert not again.published and "nothing new" in again.message


def test_text_that_is_not_utf8_quarantines_its_row_as_the_files_connectors_parquet_does(workdir: Path) -> None:
    # Parquet readers do not check text is UTF-8: the run failed with a traceback from inside pyarrow.
    text = pa.array([b"Hello?", b"Caf\xe9?", b"Bye?", b"Done?"], pa.binary()).view(pa.string())
    note = pa.array([b"ok", b"fine", b"caf\xe9", b"done"], pa.binary()).view(pa.string())
    table = pa.table({"q": text, "a": ["Hi.", "Oui.", "Bye.", "Yes."]})
    table = table.append_column("meta", pa.StructArray.from_arrays([note], names=["note"]))
    # A column the recipe does not read is not published: its text does not quarantine its row (4).
    tags = pa.array([b"a", b"b", b"c", b"caf\xe9"], pa.binary()).view(pa.string())
    table = table.append_column("tags", pa.ListArray.from_arrays(pa.array([0, 1, 2, 3, 4], pa.int32()), tags))
    file = hub_parquet(workdir, table)
    recipe = {
        "dataset": "faq",
        "sources": [{"type": "hf", "path": "hub"}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "{{ a }} {{ meta.note }}"},
    }
    result = run(workdir, recipe)
    assert sorted(line["prompt"] for line in outputs(Path(result.version_uri))) == ["Done?", "Hello?"]
    problem = "holds bytes that are not UTF-8 text (byte 0xe9 at 4"
    assert [(row["reason"], row["detail"]) for row in set_aside(Path(result.version_uri))] == [
        ("schema", f"{file}:3: column 'meta' {problem} of a value)"),
        ("schema", f"{file}:2: prompt: column 'q' {problem})"),
    ]
    counts = result.manifest.counts
    assert (counts.input, counts.written, counts.quarantined) == (4, 2, 2)
    # A row's id is that of its text as read, whatever the rows read beside it.
    pq.write_table(table.take([0, 3]), file)
    again = run(workdir, {**recipe, "dataset": "faq2"})
    assert written_ids(Path(again.version_uri)) == written_ids(Path(result.version_uri))


def written_ids(version_dir: Path) -> set[str]:
    return {row["id"] for row in lineage_rows(version_dir)}


def test_missing_split_and_empty_folder_are_clear(tmp_path: Path) -> None:
    make_dataset().save_to_disk(str(tmp_path / "faq"))
    with pytest.raises(StorageError, match=r"no split 'validation'; the dataset has \['train', 'test'\]"):
        read(str(tmp_path / "faq"), split="validation")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StorageError, match="no dataset here"):
        read(str(tmp_path / "empty"))


def test_a_split_the_dataset_does_not_have_is_named_with_the_splits_it_has(tmp_path: Path) -> None:
    # One saved split (state.json) read nothing, and a run published an empty version; a Hub-style
    # folder said "no dataset here" beside its parquet files.
    faq = make_dataset()
    faq["train"].save_to_disk(str(tmp_path / "single"))
    with pytest.raises(StorageError, match=r"no split 'test'; the dataset has \['train'\]"):
        read(str(tmp_path / "single"), split="test")
    (tmp_path / "hub" / "data").mkdir(parents=True)
    faq["train"].to_parquet(str(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet"))
    faq["test"].to_parquet(str(tmp_path / "hub" / "data" / "test-00000-of-00001.parquet"))
    with pytest.raises(StorageError, match=r"no split 'validation'; the dataset has \['test', 'train'\]"):
        read(str(tmp_path / "hub"), split="validation")


def test_saved_dataset_on_s3(tmp_path: Path, bucket: str) -> None:
    make_dataset().save_to_disk(str(tmp_path / "faq"))
    s3 = boto3.client("s3")
    for file in (tmp_path / "faq").rglob("*"):
        if file.is_file():
            s3.upload_file(str(file), bucket, f"datasets/faq/{file.relative_to(tmp_path / 'faq')}")
    rows = read(f"s3://{bucket}/datasets/faq")
    assert len(rows) == 31 and rows[0]["source"]["uri"].startswith(f"s3://{bucket}/datasets/faq/train/")


def test_a_dataset_file_overwritten_on_s3_between_listing_and_reading_fails_the_read_by_name(
    tmp_path: Path, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read as it was now, the new file's rows were taken under the listed ETag: read again by the next run.
    import connectors.hf

    make_dataset().save_to_disk(str(tmp_path / "faq"))
    s3 = boto3.client("s3")
    for file in (tmp_path / "faq").rglob("*"):
        if file.is_file():
            s3.upload_file(str(file), bucket, f"datasets/faq/{file.relative_to(tmp_path / 'faq')}")
    [train] = [f.relative_to(tmp_path / "faq") for f in (tmp_path / "faq" / "train").glob("*.arrow")]
    [test] = list((tmp_path / "faq" / "test").glob("*.arrow"))
    listed = connectors.hf.list_files

    def list_then_overwrite(*args: object, **kwargs: object) -> list:
        found = listed(*args, **kwargs)
        s3.upload_file(str(test), bucket, f"datasets/faq/{train}")  # the data file replaced meanwhile
        return found

    monkeypatch.setattr(connectors.hf, "list_files", list_then_overwrite)
    with pytest.raises(StorageError, match=rf"^s3://{bucket}/datasets/faq/{train}: changed since the run listed it"):
        read(f"s3://{bucket}/datasets/faq")


@pytest.mark.parametrize("layout", ["hub", "saved"])
def test_a_new_file_of_a_dataset_is_hashed_as_it_is_read(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    # Each new file (a Hub Parquet file, a save_to_disk Arrow file) was hashed whole at planning for its
    # watermark and then read: twice. Its watermark holds the same value, hashed as it was read.
    faq = make_dataset()
    if layout == "hub":
        (workdir / "faq" / "data").mkdir(parents=True)
        faq["train"].to_parquet(str(workdir / "faq" / "data" / "train-00000-of-00001.parquet"))
    else:
        faq.save_to_disk(str(workdir / "faq"), num_shards={"train": 2, "test": 1})
    hashed: list[str] = []
    hash_of = state.content_hash
    monkeypatch.setattr(state, "content_hash", lambda uri: hashed.append(Path(uri).name) or hash_of(uri))
    recipe = {
        "dataset": "faq",
        "sources": [{"type": "hf", "path": "faq", "split": "train"}],
        "record": {"kind": "instruction", "prompt": "{{ question }}", "completion": "{{ answer }}"},
        "output": {"validation_fraction": 0.0},
    }
    assert run(workdir, recipe).manifest.counts.written == 25
    assert hashed == []
    values = watermark_values(workdir / "state.db")
    taken = [entry for entry in list_files(str(workdir / "faq")) if entry.uri in values]
    assert len(taken) == len(values) == (1 if layout == "hub" else 2)
    for entry in taken:
        bytes_now = Path(entry.uri).read_bytes()
        expected = {"fingerprint": state.fingerprint(entry), "xxh3": xxhash.xxh3_128_hexdigest(bytes_now)}
        assert json.loads(values[entry.uri]) == expected
    os.utime(taken[0].uri, (1, 1))
    assert "nothing new" in run(workdir, recipe).message
    assert hashed == [Path(taken[0].uri).name]


def resave(folder: Path, texts: list[str], num_shards: int) -> None:
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(folder), num_shards=num_shards)


@pytest.mark.parametrize("stages", [None, []], ids=["exact_dedup", "no_dedup"])
def test_a_dataset_saved_again_in_place_with_other_shards_publishes_what_its_state_json_names(
    workdir: Path, stages: list | None
) -> None:
    # save_to_disk into the same folder leaves the old data-0000x-of-0000N.arrow files, which state.json no
    # longer names: kept as a deleted file's records, the old rows stayed beside the new (7 records for 6).
    texts = [f"document number {i} holds a few words of text" for i in range(6)]
    resave(workdir / "ds", texts, 3)
    recipe: dict = {"dataset": "docs", "sources": [{"type": "hf", "path": "ds"}], "record": {"kind": "document"}}
    if stages is not None:
        recipe["stages"] = stages
    assert run(workdir, dict(recipe)).manifest.counts.written == 6
    texts[0] = "document number zero was edited since"
    resave(workdir / "ds", texts, 1)
    assert len(list((workdir / "ds").glob("data-*.arrow"))) == 4  # the old shards are still there
    second = run(workdir, dict(recipe))
    rows = lineage_rows(second.version_uri)
    assert sorted(r["source"]["uri"].rsplit("/", 1)[1] for r in rows) == ["data-00000-of-00001.arrow"] * 6
    assert sorted(r["text"] for r in outputs(Path(second.version_uri))) == sorted(texts)
    assert second.manifest.stats["carry"]["replaced"] == 6
    # Saved again as three shards: files of the names the first run took are new, their watermarks gone with their
    # records (two hold the bytes the first run took under those names: compared with those, 4 rows were lost).
    texts[1] = "document number one was edited too"
    resave(workdir / "ds", texts, 3)
    third = run(workdir, dict(recipe))
    rows = lineage_rows(third.version_uri)
    assert sorted({r["source"]["uri"].rsplit("/", 1)[1] for r in rows}) == [
        f"data-0000{i}-of-00003.arrow" for i in range(3)
    ]
    assert sorted(r["text"] for r in outputs(Path(third.version_uri))) == sorted(texts)


def test_a_split_dataset_dict_json_no_longer_names_leaves_the_dataset(workdir: Path) -> None:
    make_dataset().save_to_disk(str(workdir / "faq"))
    recipe = {
        "dataset": "faq",
        "sources": [{"type": "hf", "path": "faq"}],
        "record": {"kind": "instruction", "prompt": "{{ question }}", "completion": "{{ answer }}"},
        "stages": [],
    }
    assert run(workdir, dict(recipe)).manifest.counts.written == 31
    (workdir / "faq" / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    second = run(workdir, dict(recipe))
    assert {r["source"]["uri"].rsplit("/", 2)[-2] for r in lineage_rows(second.version_uri)} == {"train"}
    assert len(lineage_rows(second.version_uri)) == 25
    # A split it names without a state.json is an error, as to load_from_disk: not a split that holds nothing.
    (workdir / "faq" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    (workdir / "faq" / "test" / "state.json").unlink()
    with pytest.raises(StorageError, match=r"test/state.json: missing, though dataset_dict.json names split 'test'"):
        read(str(workdir / "faq"))


def test_a_hub_style_folder_keeps_the_records_of_a_file_deleted_as_the_files_source_does(workdir: Path) -> None:
    faq = make_dataset()
    (workdir / "hub" / "data").mkdir(parents=True)
    faq["train"].to_parquet(str(workdir / "hub" / "data" / "train-00000-of-00001.parquet"))
    faq["test"].to_parquet(str(workdir / "hub" / "data" / "test-00000-of-00001.parquet"))
    recipe = {
        "dataset": "faq",
        "sources": [{"type": "hf", "path": "hub"}],
        "record": {"kind": "instruction", "prompt": "{{ question }}", "completion": "{{ answer }}"},
        "stages": [],
    }
    run(workdir, dict(recipe))
    (workdir / "hub" / "data" / "test-00000-of-00001.parquet").unlink()
    faq["train"].select(range(3)).to_parquet(str(workdir / "hub" / "data" / "extra-00000-of-00001.parquet"))
    second = run(workdir, dict(recipe))
    assert len(lineage_rows(second.version_uri)) == 31 + 3  # no state.json says what the folder holds


def hub_cache(root: Path, names: dict[str, bytes]) -> Path:
    """A dataset as the Hub's cache lays it out: each file of the snapshot a link to ``blobs/<hash>``, two
    names with the same bytes to one blob. The snapshot's folder."""
    snapshot = root / "datasets--acme--faq" / "snapshots" / "0123abcd"
    (root / "datasets--acme--faq" / "blobs").mkdir(parents=True)
    for name, data in names.items():
        blob = root / "datasets--acme--faq" / "blobs" / xxhash.xxh3_64_hexdigest(data)
        blob.write_bytes(data)
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).symlink_to(os.path.relpath(blob, (snapshot / name).parent))
    return snapshot


def parquet_bytes(table: datasets.Dataset, path: Path) -> bytes:
    table.to_parquet(str(path))
    return path.read_bytes()


def test_a_hub_cache_folder_reads_a_blob_two_names_link_to_once(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Two names of a snapshot linked to one blob: its rows were read, and published, twice under two sets of ids.
    faq = make_dataset()
    train, test = parquet_bytes(faq["train"], workdir / "train.bin"), parquet_bytes(faq["test"], workdir / "test.bin")
    names = {"data/train-00000-of-00001.parquet": train, "default/train/0000.parquet": train}
    snapshot = hub_cache(workdir / "cache", {**names, "data/test-00000-of-00001.parquet": test})
    recipe = {
        "dataset": "faq",
        "sources": [{"type": "hf", "path": str(snapshot)}],
        "record": {"kind": "instruction", "prompt": "{{ question }}", "completion": "{{ answer }}"},
        "stages": [],
    }
    with caplog.at_level("WARNING", logger="connectors.storage"):
        result = run(workdir, recipe)
    assert [entry.uri for entry in result.manifest.inputs] == [
        f"{snapshot}/data/test-00000-of-00001.parquet",
        f"{snapshot}/data/train-00000-of-00001.parquet",
    ]
    assert len(lineage_rows(result.version_uri)) == 31
    repeated = {f"{snapshot}/default/train/0000.parquet": f"{snapshot}/data/train-00000-of-00001.parquet"}
    assert result.manifest.stats["links_repeated"] == repeated
    assert f"(it would be read twice): {snapshot}/default/train/0000.parquet -> {snapshot}/data/train" in caplog.text
    # A split is read whole where its file's other name is another split's, which is not chosen: the file
    # is read under the chosen split's name (it was left out, so that split read nothing).
    assert len(read(str(snapshot), split="train")) == 25
    shared = hub_cache(workdir / "shared", {"data/test-00000-of-00001.parquet": train, **names})
    assert [row["source"]["uri"] for row in read(str(shared), split="train")] == [
        f"{shared}/data/train-00000-of-00001.parquet"
    ] * 25
    assert len(read(str(shared), split="test")) == 25


def test_a_split_no_longer_named_whose_record_another_split_held_a_duplicate_of_reads_that_split_again(
    workdir: Path,
) -> None:
    def split(texts: list[str]) -> datasets.Dataset:
        return datasets.Dataset.from_dict({"text": texts})

    both = datasets.DatasetDict(
        {
            "test": split(["a text both splits hold", "only in test"]),
            "train": split(["a text both splits hold", "only in train"]),
        }
    )
    both.save_to_disk(str(workdir / "ds"))
    recipe = {"dataset": "docs", "sources": [{"type": "hf", "path": "ds"}], "record": {"kind": "document"}}
    first = run(workdir, dict(recipe))
    assert first.manifest.counts.duplicate == 1  # train's copy, set aside
    (workdir / "ds" / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    second = run(workdir, dict(recipe))
    rows = lineage_rows(second.version_uri)
    assert {r["source"]["uri"].rsplit("/", 2)[-2] for r in rows} == {"train"}
    assert sorted(r["text"] for r in outputs(Path(second.version_uri))) == ["a text both splits hold", "only in train"]


def test_a_split_skipped_for_another_splits_bytes_is_read_when_that_split_leaves_the_dataset(workdir: Path) -> None:
    # test/ was saved as a copy of train/: its data file holds the bytes of train's, which the first run took,
    # so it was not read. Once dataset_dict.json names test alone, train's records go, and test's rows with them.
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["one", "two"]})}).save_to_disk(
        str(workdir / "ds")
    )
    recipe = {"dataset": "docs", "sources": [{"type": "hf", "path": "ds"}], "record": {"kind": "document"}}
    run(workdir, dict(recipe))
    shutil.copytree(workdir / "ds" / "train", workdir / "ds" / "test")
    (workdir / "ds" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    assert run(workdir, dict(recipe)).message.startswith("nothing new")
    (workdir / "ds" / "dataset_dict.json").write_text(json.dumps({"splits": ["test"]}))
    third = run(workdir, dict(recipe))
    assert {r["source"]["uri"].rsplit("/", 2)[-2] for r in lineage_rows(third.version_uri)} == {"test"}
    assert sorted(r["text"] for r in outputs(Path(third.version_uri))) == ["one", "two"]
    assert run(workdir, dict(recipe)).message.startswith("nothing new")


def test_a_split_folder_linked_to_another_splits_folder_reads_its_files_under_its_name(tmp_path: Path) -> None:
    # validation -> test: the listing leaves the folder out as a second path, so the split had no files.
    hub = tmp_path / "hub"
    for split, count in (("train", 3), ("test", 2)):
        (hub / split).mkdir(parents=True)
        datasets.Dataset.from_dict({"q": [f"{split}{i}" for i in range(count)]}).to_parquet(
            str(hub / split / "0000.parquet")
        )
    (hub / "validation").symlink_to("test")
    rows = read(str(hub), split="validation")
    assert [(r["q"], r["source"]["uri"]) for r in rows] == [
        (f"test{i}", f"{hub}/validation/0000.parquet") for i in range(2)
    ]
    assert sorted(r["q"] for r in read(str(hub))) == ["test0", "test1", "train0", "train1", "train2"]


def test_a_hub_cache_of_many_shards_each_with_a_second_name_is_sorted_out_in_linear_time() -> None:
    # Each shard looked for among all second names: 8,000 shards took seconds (quadratic); now milliseconds.
    snapshot, n = "/c/snapshots/r", 8000
    firsts = [f"{snapshot}/data/train-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
    seconds = [f"{snapshot}/default/train/{i:04d}.parquet" for i in range(n)]
    entries = {uri: FileEntry(uri, 1, None) for uri in firsts}
    looked: list[int] = []

    class Repeated(dict[str, str]):
        """Counts the walks over every second name (each a pass of 8,000 entries)."""

        def items(self) -> Any:
            looked.append(1)
            return super().items()

    kept = _read_once(
        [("train", uri) for uri in firsts + seconds], entries, Repeated(zip(seconds, firsts, strict=True))
    )
    assert kept == [("train", uri) for uri in firsts]
    assert len(looked) <= 1  # was one walk per shard (8,000 walks of 8,000)
    # Under a folder left out as a second path, a file is found through the folder.
    assert _listed_at(f"{snapshot}/alias/sub/0.parquet", {f"{snapshot}/alias": f"{snapshot}/data"}) == (
        f"{snapshot}/data/sub/0.parquet"
    )


def test_each_file_under_a_folder_left_out_as_a_second_name_is_named_through_it_once() -> None:
    listed = {"/h/test/0000.parquet", "/h/test/sub/1.parquet", "/h/train/0.parquet", "/h/x.parquet"}
    repeated = {"/h/validation": "/h/test", "/h/dev": "/h/test/sub", "/h/default/0.parquet": "/h/train/0.parquet"}
    assert sorted(_under_folders(repeated, listed)) == [
        "/h/dev/1.parquet",
        "/h/validation/0000.parquet",
        "/h/validation/sub/1.parquet",
    ]
    assert _under_folders({"/h/default/0.parquet": "/h/train/0.parquet"}, listed) == []


def _hub_layout(folder: Path, form: str, faq: datasets.DatasetDict) -> None:
    for name, split in faq.items():
        if form == "push_to_hub":  # a fingerprint after the shard numbers
            split.to_parquet(str(folder / "data" / f"{name}-00000-of-00001-5a1b2c3d4e5f6789.parquet"))
        elif form == "root":
            split.to_parquet(str(folder / f"{name}.parquet"))
        else:  # the datasets cache: Arrow streams named <builder>-<split>-<shard>, <builder>-<split> for one
            builder, shards = {"cache": ("faq", 2), "cache_hyphen": ("fineweb-edu", 2), "cache_one": ("parquet", 1)}[
                form
            ]
            split.save_to_disk(str(folder / ".saved" / name), num_shards=shards)
            for i, shard in enumerate(sorted((folder / ".saved" / name).glob("*.arrow"))):
                shard.rename(folder / f"{builder}-{name}{f'-{i:05d}-of-00002' if shards > 1 else ''}.arrow")
    shutil.rmtree(folder / ".saved", ignore_errors=True)


@pytest.mark.parametrize("form", ["push_to_hub", "root", "cache", "cache_hyphen", "cache_one"])
def test_hub_style_file_names_give_the_splits_load_dataset_finds(tmp_path: Path, form: str) -> None:
    # Each of these names fell back to its folder's name as the split ("no split 'train'; the dataset has
    # ['data']"), where load_dataset on the same folder finds train and test.
    faq, hub = make_dataset(), tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    _hub_layout(hub, form, faq)
    loaded = datasets.load_dataset(str(hub), cache_dir=str(tmp_path / "cache"))
    assert sorted(loaded) == ["test", "train"]
    for split in ("train", "test"):
        ids = sorted(row["input_id"] for row in read(str(hub), split=split))
        assert ids == sorted(loaded[split]["id"]) == sorted(faq[split]["id"])


def test_files_whose_names_hold_no_split_keep_their_folders_name_as_earlier_releases_named_them(
    tmp_path: Path,
) -> None:
    # load_dataset calls such files "train"; a recipe written against an earlier release names the folder.
    (tmp_path / "hub" / "mydata").mkdir(parents=True)
    make_dataset()["train"].to_parquet(str(tmp_path / "hub" / "mydata" / "part-0.parquet"))
    # A one-shard cache file is <builder>-<split>.arrow for the three usual splits only: not any hyphenated name.
    make_dataset()["train"].save_to_disk(str(tmp_path / ".saved"))
    shutil.copy(next((tmp_path / ".saved").glob("*.arrow")), tmp_path / "hub" / "mydata" / "my-notes.arrow")
    assert len(read(str(tmp_path / "hub"), split="mydata")) == 2 * len(make_dataset()["train"])
    with pytest.raises(StorageError, match=r"no split 'train'"):
        read(str(tmp_path / "hub"), split="train")


def _pushed_beside_a_file_named_by_its_folder(folder: Path, shards: int) -> datasets.Dataset:
    """push_to_hub's first shard of the train split in ``folder`` (data/), beside a file whose name gives
    no split (its folder's then), of 3 of its rows; the split written."""
    train = make_dataset()["train"]
    folder.mkdir(parents=True)
    train.to_parquet(str(folder / f"train-00000-of-{shards:05d}-0123456789abcdef.parquet"))
    train.select(range(3)).to_parquet(str(folder / "extra.parquet"))
    return train


def test_a_split_earlier_releases_named_by_a_folder_reads_the_files_whose_names_now_give_another_split(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # `split: data` read every file under data/; push_to_hub's fingerprinted name (and a train.parquet at the top
    # of a folder read as split `hub`) now names split train: the recipe read fewer files without a word.
    train = _pushed_beside_a_file_named_by_its_folder(tmp_path / "m" / "data", shards=1)
    (tmp_path / "hub").mkdir()
    train.to_parquet(str(tmp_path / "hub" / "train.parquet"))
    train.select(range(3)).to_parquet(str(tmp_path / "hub" / "more.parquet"))
    with caplog.at_level("WARNING", logger="connectors.hf"):
        assert len(read(str(tmp_path / "m"), split="data")) == len(train) + 3
        assert len(read(str(tmp_path / "hub"), split="hub")) == len(train) + 3
    assert "split 'data' reads, as earlier releases did by their folder's name" in caplog.text
    assert f"'train' ({tmp_path}/m/data/train-00000-of-00001-0123456789abcdef.parquet); use `split: train`" in (
        caplog.text
    )
    assert f"'train' ({tmp_path}/hub/train.parquet); use `split: train`" in caplog.text
    # By their names, as load_dataset reads them: train, and the files the names give no split (data, hub).
    caplog.clear()
    assert len(read(str(tmp_path / "m"), split="train")) == len(train)
    assert len(read(str(tmp_path / "m"), split=None)) == len(train) + 3
    assert "earlier releases" not in caplog.text


def test_the_warning_of_files_read_by_their_earlier_split_is_said_in_a_run_that_reads_one_new(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # It was said on every run, a scheduled one that read nothing new too: noise a recipe could not silence.
    train = _pushed_beside_a_file_named_by_its_folder(workdir / "m" / "data", shards=2)
    source = {"type": "hf", "path": "m", "split": "data"}
    record = {"kind": "instruction", "prompt": "{{ question }}", "completion": "{{ answer }}"}
    recipe = {"dataset": "q", "sources": [source], "record": record, "stages": []}
    recipe["output"] = {"dest": "out", "validation_fraction": 0.2}
    said = "split 'data' reads, as earlier releases did by their folder's name"
    warned = []
    added = [None, None, "extra-2.parquet", "train-00001-of-00002-0123456789abcdef.parquet"]
    for n, name in enumerate(added):
        if name:
            train.select(range(3 * n, 3 * n + 3)).to_parquet(str(workdir / "m" / "data" / name))
        caplog.clear()
        with caplog.at_level("WARNING", logger="connectors.hf"):
            result = run(workdir, recipe)
        assert (result.version_uri is not None) == (n in (0, 2, 3))
        warned.append([message for message in caplog.messages if said in message])
    assert [len(messages) for messages in warned] == [1, 0, 0, 1]
    assert "train-00000" in warned[0][0] and "said only in a run that reads such a file new" in warned[0][0]
    assert "train-00001" in warned[3][0] and "train-00000" not in warned[3][0]  # the new file alone


def test_a_split_names_the_files_it_named_before_whatever_the_path_above_the_dataset(tmp_path: Path) -> None:
    # datasets' looser rules took train_clean/ into train and read the folders above the dataset (a parent named
    # test/) as the split: a recipe's split: picked other files than it did.
    hub = tmp_path / "test" / "hub"
    for folder in ("train", "train_clean", "x"):
        (hub / folder).mkdir(parents=True)
        make_dataset()["train"].to_parquet(str(hub / folder / "0.parquet"))
    for path in (str(hub), f"{tmp_path}/test/../test/hub", f"{tmp_path}//test/hub"):
        for split in ("train", "train_clean", "x"):
            assert {row["source"]["uri"] for row in read(path, split=split)} == {str(hub / split / "0.parquet")}


def hub_parquet(root: Path, table: pa.Table, **write: Any) -> Path:
    """``table`` as a Hub dataset's one train split file under ``root/hub``; its path."""
    (root / "hub" / "data").mkdir(parents=True)
    file = root / "hub" / "data" / "train-00000-of-00001.parquet"
    pq.write_table(table, file, **write)
    return file


def png(shade: int, size: tuple[int, int] = (30, 20), **save: Any) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (shade, 90, 40)).save(buffer, "JPEG" if save else "PNG", **save)
    return buffer.getvalue()


def image_rows(images: list[dict | None]) -> pa.Table:
    """A VQA table as the Hub stores one: an Image() feature (``struct<bytes, path>``) beside text columns."""
    kind = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    count = len(images)
    return pa.table(
        {
            "image": pa.array(images, kind),
            "question": [f"What colour is picture {i}?" for i in range(count)],
            "answer": [f"shade {i}" for i in range(count)],
        }
    )


def run_vqa(workdir: Path, table: pa.Table, **record: str) -> tuple[Any, Path]:
    """A run of VQA records (``record``'s fields beside) from ``table``, a Hub-style dataset's one data file."""
    file = hub_parquet(workdir, table)
    recipe = {
        "dataset": "d",
        "sources": [{"type": "hf", "path": "hub"}],
        "record": {"kind": "vqa", **record},
        "output": {"validation_fraction": 0.0},
    }
    return run(workdir, recipe), file


def test_an_image_feature_is_published_as_vqa_images_and_its_bad_rows_quarantined_by_file_and_row(
    workdir: Path,
) -> None:
    # The usual Hub VQA dataset: the run failed, naming the column as not supported.
    from PIL import Image

    exif = Image.Exif()
    exif[0x010E] = "GPS 51.5N owner Ada"  # ImageDescription: metadata the published picture must not keep
    shot = png(80, exif=exif.tobytes())
    images = [
        {"bytes": png(0), "path": None},
        {"bytes": shot, "path": "shot.jpg"},
        None,
        {"bytes": b"not an image at all", "path": "x.png"},
        {"bytes": None, "path": "/etc/hostname"},  # not embedded: the path of the machine that built it
        {"bytes": png(0), "path": "again.png"},  # the first picture, asked about again
    ]
    result, file = run_vqa(workdir, image_rows(images))
    version = Path(result.version_uri)
    lines = outputs(version)
    assert [line["prompt"] for line in lines] == [f"What colour is picture {i}?" for i in (0, 1, 5)]
    published = [version / "train" / line["file_name"] for line in lines]
    assert lines[0]["file_name"] == lines[2]["file_name"]  # one picture, written once
    assert sorted(p.name for p in (version / "train" / "images").iterdir()) == sorted({p.name for p in published})
    for path, data in zip(published, (png(0), shot), strict=False):
        with Image.open(path) as kept, Image.open(io.BytesIO(data)) as given:
            assert kept.format == given.format and list(kept.getdata()) == list(given.getdata())
    with Image.open(published[1]) as kept:
        assert not kept.getexif() and b"Ada" not in published[1].read_bytes()
    aside = set_aside(version)
    assert [(row["stage"], row["reason"], row["source"]["line"]) for row in aside] == [
        ("read", "missing_image", 3),
        ("read", "unsupported", 4),
        ("read", "missing_image", 5),
    ]
    assert aside[0]["detail"] == f"{file}:3: column 'image': the row holds no image"
    assert aside[1]["detail"] == f"{file}:4: column 'image': not an image Pillow can read"
    assert aside[2]["detail"].startswith(f"{file}:5: column 'image': holds the path '/etc/hostname' only")
    # datasets' to_parquet writes an Image() feature's path alone: it is no way to embed the pictures.
    assert "as save_to_disk and push_to_hub write them and to_parquet does not" in aside[2]["detail"]
    # The row as read, its image's bytes as their size: not spelt out as text in set_aside/.
    assert json.loads(aside[1]["record"])["image"] == {"bytes": "<19 bytes>", "path": "x.png"}
    counts = result.manifest.counts
    assert (counts.input, counts.written, counts.quarantined) == (6, 3, 3)
    assert counts.reasons["quarantined"] == {"missing_image": 2, "unsupported": 1}


def test_an_image_feature_is_checked_as_an_images_sources_pictures_are(workdir: Path) -> None:
    # Over an `images` source's default max_pixels (50 million), and a rescan of a form (shifted a pixel).
    from PIL import Image

    from tests.test_neardup import _image

    huge = io.BytesIO()
    Image.new("1", (8000, 7000)).save(huge, "PNG")
    images = [{"bytes": _image(0, 1)}, {"bytes": huge.getvalue()}, {"bytes": _image(1, 1)}, {"bytes": _image(0, 2)}]
    folder = workdir / "vqa" / "train"
    datasets.Dataset(image_rows([{"path": None, **image} for image in images])).save_to_disk(str(folder))
    recipe = {
        "dataset": "d",
        "sources": [{"type": "hf", "path": "vqa"}],
        "record": {"kind": "vqa", "question": "{{ 'Which form is this?' }}"},
        "stages": [{"type": "image_dedup", "max_distance": 6}],
        "output": {"validation_fraction": 0.0},
    }
    result = run(workdir, recipe)
    assert result.manifest.counts.reasons == {
        "quarantined": {"decompression_bomb": 1},
        "duplicate": {"near_duplicate_image": 1},
    }
    assert len(outputs(Path(result.version_uri))) == 2


def test_an_image_feature_read_as_text_is_refused_by_name_and_an_unread_one_is_not(workdir: Path) -> None:
    from PIL import Image

    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string")})
    pictures = [Image.new("RGB", (30, 20), (40 * i, 0, 0)) for i in range(3)]
    questions = [f"What colour is picture {i}?" for i in range(3)]
    vqa = datasets.Dataset.from_dict({"image": pictures, "question": questions}, features=features)
    datasets.DatasetDict({"train": vqa.add_column("answer", ["red"] * 3)}).save_to_disk("vqa")
    recipe = {"dataset": "d", "sources": [{"type": "hf", "path": "vqa"}], "output": {"validation_fraction": 0.0}}
    as_text = [
        {"kind": "vqa", "image": "{{ image }}"},
        {"kind": "instruction", "prompt": "{{ question }} {{ image }}", "completion": "answer"},
    ]
    for record in as_text:
        with pytest.raises(
            StorageError,
            match=r"train/data-00000-of-00001.arrow: column 'image' is a Hugging Face Image feature, read here as text",
        ):
            run(workdir, {**recipe, "record": record})
    record = {"kind": "instruction", "prompt": "{{ question }}", "completion": "{{ answer }}"}
    texts = run(workdir, {**recipe, "record": record})
    assert sorted(r["prompt"] for r in outputs(Path(texts.version_uri))) == questions
    pictures_of = run(workdir, {**recipe, "dataset": "v", "record": {"kind": "vqa"}})
    assert sorted(r["prompt"] for r in outputs(Path(pictures_of.version_uri))) == questions


def test_an_image_feature_a_template_also_reads_is_refused_by_name_not_rendered_empty(workdir: Path) -> None:
    # The record's picture is named `image`, and a template (or another field) reads the struct's fields as
    # text: made the picture's name before the templates ran, ``image.path`` rendered empty on every row.
    file = hub_parquet(workdir, image_rows([{"bytes": png(0), "path": "a.png"}, {"bytes": png(9), "path": "b.png"}]))
    recipe = {"dataset": "d", "sources": [{"type": "hf", "path": "hub"}], "output": {"validation_fraction": 0.0}}
    for record in (
        {"kind": "vqa", "question": "{{ question }} ({{ image.path }})"},
        {"kind": "vqa", "answer": "{{ image['bytes'] | length }}"},
        {"kind": "vqa", "question": "image"},
    ):
        with pytest.raises(
            StorageError, match=rf"{file}: column 'image' is a Hugging Face Image feature, read here as text"
        ):
            run(workdir, {**recipe, "record": record})


def path_rows(workdir: Path, images: list[bytes]) -> Path:
    """A Hub-style VQA parquet file whose `image` is a text column naming picture files beside it."""
    (workdir / "hub" / "data").mkdir(parents=True)
    for number, data in enumerate(images):
        (workdir / "hub" / f"{number}.png").write_bytes(data)
    file = workdir / "hub" / "data" / "train-00000-of-00001.parquet"
    table = image_rows([None] * len(images)).drop_columns(["image"])
    pq.write_table(
        table.append_column("image", pa.array([str(workdir / "hub" / f"{n}.png") for n in range(len(images))])), file
    )
    return file


def test_stages_needing_pictures_on_images_named_by_a_path_column_are_refused_by_file_and_column(
    workdir: Path,
) -> None:
    # The recipe check cannot see that an hf column holds paths: image_dedup compared nothing (every
    # picture kept), and ocr would publish the pictures unread.
    file = path_rows(workdir, [png(0), png(0)])
    recipe = {
        "dataset": "d",
        "sources": [{"type": "hf", "path": "hub"}],
        "record": {"kind": "vqa", "question": "{{ 'Which colour?' }}"},
        "output": {"validation_fraction": 0.0},
    }
    assert len(outputs(Path(run(workdir, recipe).version_uri))) == 2  # read by the writer, as a files source's
    for stage, needs in (({"type": "image_dedup"}, "image_dedup"), ({"type": "pii", "ocr": True}, "pii ocr")):
        with pytest.raises(
            StorageError, match=rf"{file}: {needs} needs the images' bytes; column 'image' holds text \(paths\)"
        ):
            run(workdir, {**recipe, "dataset": "again", "stages": [stage]})
    templated = {**recipe, "dataset": "t", "record": {"kind": "vqa", "image": "{{ image }}"}}
    with pytest.raises(StorageError, match=rf"{file}: image_dedup needs the images' bytes; the records' image is a"):
        run(workdir, {**templated, "stages": [{"type": "image_dedup"}]})


def test_ocr_redacts_the_text_in_an_image_features_pictures(workdir: Path) -> None:
    # Refused by the recipe check (as an image named by a path is), though the feature's pictures are bytes.
    import pytesseract
    from PIL import Image

    from tests.test_pii import document_image

    (workdir / "hub" / "data").mkdir(parents=True)
    pq.write_table(image_rows([{"bytes": document_image(), "path": None}]), workdir / "hub" / "data" / "train.parquet")
    recipe = {
        "dataset": "d",
        "sources": [{"type": "hf", "path": "hub"}],
        "record": {"kind": "vqa"},
        "stages": [{"type": "pii", "entities": ["EMAIL_ADDRESS"], "ocr": True}],
        "output": {"validation_fraction": 0.0},
    }
    result = run(workdir, recipe)
    (line,) = outputs(Path(result.version_uri))
    with Image.open(Path(result.version_uri) / "train" / line["file_name"]) as published:
        text = pytesseract.image_to_string(published)
    assert "Statement for account holder" in text and "whitfield" not in text.lower()
    assert result.manifest.stats["stages"]["pii"]["image_EMAIL_ADDRESS"] == 1


def test_an_image_features_path_that_is_not_utf8_keeps_its_picture_and_a_row_set_aside_shows_its_size(
    workdir: Path,
) -> None:
    # The path is not published: a byte there quarantined a good picture as `schema`. A row set aside for
    # another column's text spelt its image's bytes out as text in set_aside/.
    paths = pa.array([b"caf\xe9.png", b"b.png", None], pa.binary()).view(pa.string())
    pictures = pa.array([png(0), png(9), png(20)], pa.binary())
    notes = pa.array([b"ok", b"caf\xe9", b"fine"], pa.binary()).view(pa.string())
    table = image_rows([None] * 3).drop_columns(["image"])
    table = table.append_column("image", pa.StructArray.from_arrays([pictures, paths], names=["bytes", "path"]))
    table = table.append_column("meta", pa.StructArray.from_arrays([notes], names=["note"]))
    result, file = run_vqa(workdir, table, answer="{{ meta.note }}")
    version = Path(result.version_uri)
    assert sorted(line["completion"] for line in outputs(version)) == ["fine", "ok"]
    (aside,) = set_aside(version)
    assert (aside["reason"], aside["detail"]) == (
        "schema",
        f"{file}:2: column 'meta' holds bytes that are not UTF-8 text (byte 0xe9 at 4 of a value)",
    )
    record = json.loads(aside["record"])
    assert record["image"] == {"bytes": f"<{len(png(9))} bytes>", "path": "b.png"}
    assert record["meta"] == {"note": "caf\ufffd"} and "PNG" not in aside["record"]


def test_an_image_feature_with_more_fields_is_read_as_its_picture(workdir: Path) -> None:
    # struct<bytes, path, caption> was no Image() feature: every row quarantined as `schema` ("not UTF-8").
    images = image_rows([{"bytes": png(shade), "path": f"{shade}.png"} for shade in (0, 9)])["image"].combine_chunks()
    captions = pa.array(["dark", "darker"])
    table = image_rows([None] * 2).set_column(
        0,
        "image",
        pa.StructArray.from_arrays(
            [images.field("bytes"), images.field("path"), captions], names=["bytes", "path", "caption"]
        ),
    )
    result, _ = run_vqa(workdir, table)
    lines = outputs(Path(result.version_uri))
    assert [line["completion"] for line in lines] == ["shade 0", "shade 1"] and not set_aside(Path(result.version_uri))
    for line, shade in zip(lines, (0, 9), strict=True):
        assert (Path(result.version_uri) / "train" / line["file_name"]).read_bytes() == png(shade)


def test_a_struct_holding_bytes_and_path_beside_other_fields_is_text_where_it_is_not_the_vqa_image(
    workdir: Path,
) -> None:
    # Read as an Image() feature wherever it was, a metadata struct failed the run: "read here as text".
    meta = pa.StructArray.from_arrays(
        [pa.array([b"\x00\x01", b"\x02"]), pa.array(["a.bin", "b.bin"]), pa.array(["first", "second"])],
        names=["bytes", "path", "caption"],
    )
    (workdir / "hub" / "data").mkdir(parents=True)
    table = pa.table({"q": ["Q1?", "Q2?"], "a": ["A1", "A2"], "meta": meta})
    pq.write_table(table, workdir / "hub" / "data" / "train-00000-of-00001.parquet")
    recipe = {
        "dataset": "m",
        "sources": [{"type": "hf", "path": "hub"}],
        "record": {"kind": "instruction", "prompt": "{{ q }} ({{ meta.caption }})", "completion": "a"},
        "output": {"validation_fraction": 0.0},
    }
    lines = outputs(Path(run(workdir, recipe).version_uri))
    assert [line["prompt"] for line in lines] == ["Q1? (first)", "Q2? (second)"]


def test_the_datasets_features_say_which_struct_of_bytes_and_path_is_an_image(workdir: Path) -> None:
    # A dict feature of the Image() feature's shape is the dataset's own text and bytes, read by a template.
    features = datasets.Features(
        {
            "q": datasets.Value("string"),
            "image": datasets.Image(),
            "attachment": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
        }
    )
    rows = {
        "q": ["Q1?", "Q2?"],
        "image": [{"bytes": png(0), "path": "0.png"}, {"bytes": png(9), "path": "9.png"}],
        "attachment": [{"bytes": b"%PDF", "path": "loan.pdf"}, {"bytes": b"%PDF", "path": "memo.pdf"}],
    }
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(workdir / "ds"))
    recipe = {"dataset": "d", "sources": [{"type": "hf", "path": "ds"}], "output": {"validation_fraction": 0.0}}
    record = {"kind": "instruction", "prompt": "{{ q }} ({{ attachment.path }})", "completion": "q"}
    lines = outputs(Path(run(workdir, {**recipe, "record": record}).version_uri))
    assert [line["prompt"] for line in lines] == ["Q1? (loan.pdf)", "Q2? (memo.pdf)"]
    with pytest.raises(StorageError, match="column 'image' is a Hugging Face Image feature, read here as text"):
        run(workdir, {**recipe, "dataset": "e", "record": {**record, "prompt": "{{ q }} {{ image.path }}"}})


def test_the_head_of_a_data_file_is_its_first_batch_and_the_rest_is_not_read(tmp_path: Path) -> None:
    # For `curation check`: a split file of many row groups is not read whole for its head.
    file = hub_parquet(tmp_path, make_dataset()["train"].data.table, row_group_size=5)
    make_dataset().save_to_disk(str(tmp_path / "saved"), num_shards={"train": 2, "test": 1})
    for path, files in ((tmp_path / "hub", 1), (tmp_path / "saved", 3)):
        reader = HFSourceReader(HFSource(type="hf", path=str(path)), batch_rows=4)
        entries = reader.entries()
        assert [entry.uri for entry in entries] == [entry.uri for _, entry in reader.files()] and len(entries) == files
        head = reader.head(entries[0])
        assert [row["source"]["line"] for row in head.rows.to_pylist()] == [1, 2, 3, 4]
        assert head.rows.to_pylist() == next(reader.batches()).rows.to_pylist()  # as the run reads it
    # A file whose later row groups are damaged: its head is read all the same (they are not).
    data = file.read_bytes()
    footer = pq.ParquetFile(file).metadata
    last = footer.row_group(footer.num_row_groups - 1).column(0).data_page_offset
    file.write_bytes(data[:last] + b"\0" * 64 + data[last + 64 :])
    reader = HFSourceReader(HFSource(type="hf", path=str(tmp_path / "hub")), batch_rows=4)
    assert reader.head(reader.entries()[0]).rows.num_rows == 4
    with pytest.raises(StorageError, match=f"{file}: cannot read"):
        list(reader.batches())


def test_a_row_set_aside_as_schema_shows_every_picture_as_its_size_not_only_the_vqa_records(workdir: Path) -> None:
    # Only the VQA record's image column was shown as its size: another Image() column (one an instruction recipe
    # does not read, a VQA `masks` list of them) was spelt out as text in set_aside/, the PNG's bytes as U+FFFD.
    kind = image_rows([]).schema.field("image").type
    notes = pa.array([b"ok", b"caf\xe9"], pa.binary()).view(pa.string())
    table = image_rows([{"bytes": png(0), "path": "a.png"}, {"bytes": png(9), "path": "b.png"}])
    masks = [[{"bytes": png(1), "path": "m.png"}], [{"bytes": png(2), "path": "n.png"}]]
    table = table.append_column("masks", pa.array(masks, pa.list_(kind)))
    table = table.append_column("blob", pa.array([b"x", "José".encode()], pa.binary()))
    table = table.append_column("meta", pa.StructArray.from_arrays([notes], names=["note"]))
    instruction = {"kind": "instruction", "prompt": "{{ question }} {{ meta.note }}", "completion": "answer"}
    vqa, _ = run_vqa(workdir, table, answer="{{ meta.note }}")
    texts = run(workdir, {"dataset": "t", "sources": [{"type": "hf", "path": "hub"}], "record": instruction})
    for result in (vqa, texts):
        (aside,) = set_aside(Path(result.version_uri))
        record = json.loads(aside["record"])
        assert aside["reason"] == "schema" and "PNG" not in aside["record"] and "\ufffd\ufffd" not in aside["record"]
        assert record["image"] == {"bytes": f"<{len(png(9))} bytes>", "path": "b.png"}
        assert record["masks"] == [{"bytes": f"<{len(png(2))} bytes>", "path": "n.png"}]
        assert record["blob"] == "José"  # bytes that are UTF-8 are text a template reads: shown so


def test_the_head_of_a_parquet_file_reads_only_the_columns_the_recipe_uses(tmp_path: Path) -> None:
    # For `curation check`: the head decoded its first row group whole, every column (a 300 MB one took 675 MB).
    (tmp_path / "hub" / "data").mkdir(parents=True)
    file = tmp_path / "hub" / "data" / "train-00000-of-00001.parquet"
    table = pa.table({"q": ["a", "b"], "blob": [os.urandom(4096), os.urandom(4096)]})
    pq.write_table(table, file, compression="none")
    # The unread column damaged: decoding it fails.
    chunk = pq.ParquetFile(file).metadata.row_group(0).column(1)
    data = bytearray(file.read_bytes())
    data[chunk.data_page_offset : chunk.data_page_offset + 64] = b"\xff" * 64
    file.write_bytes(bytes(data))
    source = HFSource(type="hf", path=str(tmp_path / "hub"))
    reader = HFSourceReader(source, batch_rows=4, used_columns={"q", "answer"})
    head = reader.head(reader.entries()[0])
    assert [row["q"] for row in head.rows.to_pylist()] == ["a", "b"] and "blob" not in head.rows.column_names
    whole = HFSourceReader(source, batch_rows=4)
    with pytest.raises(StorageError, match=f"{file}: cannot read"):
        whole.head(whole.entries()[0])


def test_a_sequence_of_image_features_read_as_text_is_refused_by_name_a_dicts_other_fields_are_read(
    workdir: Path,
) -> None:
    # Only a column that is an Image() was refused: a list of them failed later with "a value holds bytes that are
    # not UTF-8 text", nothing naming the dataset's images. A dict holding one was refused whole, though a
    # template reading its caption alone ({{ shot.cap }}) published it before.
    features = datasets.Features(
        {
            "q": datasets.Value("string"),
            "pics": datasets.Sequence(datasets.Image()),
            "shot": {"img": datasets.Image(), "cap": datasets.Value("string")},
        }
    )
    picture = {"bytes": png(0), "path": "0.png"}
    rows = {"q": ["Q1?"], "pics": [[picture]], "shot": [{"img": picture, "cap": "c"}]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(workdir / "ds"))
    recipe = {"dataset": "d", "sources": [{"type": "hf", "path": "ds"}], "output": {"validation_fraction": 0.0}}
    record = {"kind": "instruction", "prompt": "{{ q }} {{ pics }}", "completion": "q"}
    said = r"column 'pics' holds Hugging Face Image features, read here as text: a `vqa` record's image \(`image: "
    said += r"<column>`\) must be a column that is itself one Image\(\) feature"
    with pytest.raises(StorageError, match=said):
        run(workdir, {**recipe, "record": record})
    record = {"kind": "instruction", "prompt": "{{ q }} {{ shot.cap }}", "completion": "q"}
    published = run(workdir, {**recipe, "record": record})
    assert [line["prompt"] for line in outputs(Path(published.version_uri))] == ["Q1? c"]


def test_a_dict_holding_an_image_feature_read_whole_or_at_its_image_is_refused_by_name(workdir: Path) -> None:
    # A template reading the dict whole ({{ shot }}) or at its image ({{ shot.img }}) rendered the picture's bytes
    # as text: every row quarantined "not UTF-8 text", nothing naming the image.
    text = datasets.Value("string")
    features = datasets.Features(
        {"q": text, "shot": {"img": datasets.Image(), "cap": text, "items": text, "meta": {"k": text}}}
    )
    shots = [{"img": {"bytes": png(0), "path": "0.png"}, "cap": c, "items": c * 2, "meta": {"k": c}} for c in "cd"]
    datasets.Dataset.from_dict({"q": ["Q1?", "Q2?"], "shot": shots}, features=features).save_to_disk(
        str(workdir / "ds")
    )
    recipe = {"dataset": "d", "sources": [{"type": "hf", "path": "ds"}], "output": {"validation_fraction": 0.0}}
    said = r"data-00000-of-00001.arrow: column 'shot' holds a Hugging Face Image feature \(shot.img\), read here "
    said += r"as text: a template may read the dict's other fields \(`{{ shot.cap }}`\), not the image in it"
    rendered = ("{{ q }} {{ shot }}", "{{ shot.img }}", "{{ shot['img'].bytes }}", "{{ shot | string }}")
    # `int` with a default gives the default where its value is no number: here the image.
    for prompt in (
        *rendered,
        "{% if q %}{{ shot.img | upper }}{% endif %}",
        "{{ shot.items }}",
        "{{ shot.img | int(shot.img) }}",
    ):
        with pytest.raises(StorageError, match=said):
            run(workdir, {**recipe, "record": {"kind": "instruction", "prompt": prompt, "completion": "q"}})
    with pytest.raises(StorageError, match=said):  # a field naming the column reads it whole
        run(workdir, {**recipe, "record": {"kind": "instruction", "prompt": "q", "completion": "shot"}})
    record = {"kind": "instruction", "prompt": "{{ q }} {{ shot.cap | upper }}", "completion": "{{ shot['cap'] }}"}
    lines = outputs(Path(run(workdir, {**recipe, "record": record}).version_uri))
    assert [(line["prompt"], line["completion"]) for line in lines] == [("Q1? C", "c"), ("Q2? D", "d")]
    # Only what certainly renders the image is refused: a test, a condition, a `set`, a key that is a field's
    # name as well as a dict's method (looked up first) render as they did before the refusal was made.
    for prompt in (
        "{{ shot.cap if shot is defined else '' }}",
        "{% if shot %}{{ shot.cap }}{% endif %}",
        "{{ shot['items'][:1] }}{{ shot['items'] | upper }}{{ shot.meta['values'] is defined }}",
        "{% set s = shot %}{{ s.cap }}",
    ):
        record = {"kind": "instruction", "prompt": prompt, "completion": "{{ shot['items'] }}"}
        lines = outputs(Path(run(workdir, {**recipe, "record": record}, full_refresh=True).version_uri))
        assert [line["completion"] for line in lines] == ["cc", "dd"], prompt
    assert [line["prompt"] for line in lines] == ["c", "d"]
    # A filter giving a number (its length) renders none of the image, nor does the image's `path`, its file name.
    counted = {
        "{{ shot | length }}": str(len(shots[0])),
        "{{ shot.img | length }}": "2",
        "{{ shot.img.bytes | length | string }}": str(len(png(0))),
        "{{ shot['img'].path | default('') }}": "0.png",
    }
    for prompt, shown in counted.items():
        record = {"kind": "instruction", "prompt": prompt, "completion": "q"}
        lines = outputs(Path(run(workdir, {**recipe, "record": record}, full_refresh=True).version_uri))
        assert [line["prompt"] for line in lines] == [shown, shown], prompt


def test_image_dedup_on_a_column_of_text_is_refused_by_the_recipe_check_not_a_type_error(workdir: Path) -> None:
    # image_dedup's `column` naming a VQA record's text (its question, or its image's name) failed the run with
    # "TypeError: a bytes-like object is required, not 'str'"; a carried input column of text alike, at the stage.
    table = image_rows([{"bytes": png(0), "path": "a.png"}, {"bytes": png(0), "path": "b.png"}])
    hub_parquet(workdir, table.append_column("team", pa.array(["x", "y"])))
    recipe = {"dataset": "d", "sources": [{"type": "hf", "path": "hub"}], "record": {"kind": "vqa"}}
    for column in ("question", "image"):
        said = rf"image_dedup compares images in {column!r}, which vqa records hold as text, not an image's bytes"
        with pytest.raises(RecipeError, match=said):
            run(workdir, {**recipe, "stages": [{"type": "image_dedup", "column": column}]})
    grouped = {**recipe, "output": {"group_by": "team"}, "stages": [{"type": "image_dedup", "column": "team"}]}
    with pytest.raises(StageSettingError, match="compares images in 'team', which holds string, not an image's bytes"):
        run(workdir, grouped)
    published = run(workdir, {**recipe, "stages": [{"type": "image_dedup", "match_question": False}]})
    assert published.manifest.counts.reasons == {"duplicate": {"near_duplicate_image": 1}}


def test_a_nested_id_column_read_as_input_id_quarantines_its_text_that_is_not_utf8_as_read(workdir: Path) -> None:
    # The recipe reads a file's `id` as `input_id`: the check of the columns it reads compared the file's names
    # with the recipe's, skipped `id`, and its text failed the template later, nothing naming the column.
    note = pa.array([b"ok", b"caf\xe9"], pa.binary()).view(pa.string())
    table = pa.table({"q": ["Hello?", "Bye?"], "id": pa.StructArray.from_arrays([note], names=["note"])})
    file = hub_parquet(workdir, table)
    recipe = {
        "dataset": "faq",
        "sources": [{"type": "hf", "path": "hub"}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "{{ input_id.note }}"},
    }
    result = run(workdir, recipe)
    assert [line["completion"] for line in outputs(Path(result.version_uri))] == ["ok"]
    assert [(row["stage"], row["reason"], row["detail"]) for row in set_aside(Path(result.version_uri))] == [
        ("read", "schema", f"{file}:2: column 'id' holds bytes that are not UTF-8 text (byte 0xe9 at 4 of a value)")
    ]


def test_an_image_feature_in_a_column_named_id_read_as_input_id_text_is_refused_by_name(workdir: Path) -> None:
    # The recipe reads a file's `id` as `input_id`: the refusal compared the file's names with the recipe's, let
    # the picture through as text, and every row was quarantined "not UTF-8", nothing naming the images.
    kind = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"q": ["Q1?"], "id": pa.array([{"bytes": png(0), "path": "a.png"}], kind)})
    file = hub_parquet(workdir, table)
    recipe = {
        "dataset": "d",
        "sources": [{"type": "hf", "path": "hub"}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "{{ input_id }}"},
    }
    with pytest.raises(StorageError, match=rf"{file}: column 'id' is a Hugging Face Image feature, read here as text"):
        run(workdir, recipe)


def test_a_class_label_renders_as_its_number_and_a_template_indexing_its_names_publishes_them(workdir: Path) -> None:
    # `datasets` returns a ClassLabel as its integer; the names live in the features alone, so the README tells a
    # recipe to write them in its template.
    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["neg", "pos"]),
            "tags": datasets.Sequence(datasets.ClassLabel(names=["plot", "cast"])),
        }
    )
    reviews = {"text": ["a dull film", "a fine film"], "label": [0, 1], "tags": [[0, 1], [1]]}
    datasets.Dataset.from_dict(reviews, features=features).save_to_disk(str(workdir / "reviews"))
    names = (
        "{{ ['neg', 'pos'][label] }}: "
        "{% for tag in tags %}{{ ['plot', 'cast'][tag] }}{{ ', ' if not loop.last }}{% endfor %}"
    )
    recipe = {
        "dataset": "reviews",
        "sources": [{"type": "hf", "path": "reviews"}],
        "record": {"kind": "instruction", "prompt": "{{ text }}", "completion": "{{ label }} {{ tags }}"},
        "output": {"dest": "numbers", "validation_fraction": 0.0},
    }
    numbers = outputs(Path(run(workdir, recipe).version_uri))
    assert sorted(line["completion"] for line in numbers) == ["0 [0, 1]", "1 [1]"]
    recipe["record"] = {"kind": "instruction", "prompt": "{{ text }}", "completion": names}
    recipe["output"]["dest"] = "names"
    published = {line["prompt"]: line["completion"] for line in outputs(Path(run(workdir, recipe).version_uri))}
    assert published == {"a dull film": "neg: plot, cast", "a fine film": "pos: cast"}
