"""CSV input that used to stop a run or misplace its rows: bytes that are not UTF-8, files with no
record, quoted values that span lines. Each record is written or quarantined at the line it starts on."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from schemas.config import RecipeError
from tests.helpers import lineage_rows, outputs, run, set_aside, write_jsonl
from tests.test_quarantine import assert_adds_up, recipe

QA_RECORD = {"kind": "instruction", "prompt": "{{ question }}", "completion": "{{ answer }}"}


def lineage_lines(version_dir: Path) -> dict[str, int]:
    """Each written completion and the source line its lineage row gives."""
    found = {}
    for entry in lineage_rows(version_dir):
        line = (version_dir / entry["shard"]).read_text().splitlines()[entry["line"] - 1]
        found[json.loads(line)["completion"]] = entry["source"]["line"]
    return found


def test_a_row_that_is_not_utf8_is_quarantined_and_the_rest_is_read(workdir: Path) -> None:
    path = workdir / "tx.csv"
    path.write_bytes(
        b"description,amount,category\n"
        b"coffee,4.5,Dining\n"
        b'"caf\xe9, au lait",3,Dining\n'  # Latin-1, as a spreadsheet export may write it
        b"rent,1200,Housing\n"
        b"bus,2.5,Tr\xffansport\n"
        b"taxi,caf\xe9,12,Transport\n"  # a field too many, too: Arrow could not hand this row over
    )
    result = run(workdir, recipe("tx.csv"))
    version = Path(result.version_uri)
    aside = set_aside(version)
    assert [(row["reason"], row["source"]["line"], row["detail"]) for row in aside] == [
        ("malformed_csv", 3, f"{path}:3: not UTF-8: byte 0xe9 at column 5"),
        ("malformed_csv", 5, f"{path}:5: not UTF-8: byte 0xff at column 11"),
        ("malformed_csv", 6, f"{path}:6: expected 3 fields, found 4"),
    ]
    assert [row["record"] for row in aside[::2]] == ['"caf\ufffd, au lait",3,Dining', "taxi,caf\ufffd,12,Transport"]
    assert lineage_lines(version) == {"Dining": 2, "Housing": 4}
    assert result.manifest.counts.reasons == {"quarantined": {"malformed_csv": 3}}
    assert (result.manifest.counts.input, result.manifest.counts.written) == (5, 2)
    assert_adds_up(result.manifest.counts)


def test_csv_files_without_records_give_none_and_the_run_goes_on(workdir: Path) -> None:
    (workdir / "empty.csv").write_bytes(b"")
    (workdir / "header.csv").write_text("description,amount,category\n")
    (workdir / "header_no_newline.csv").write_text("description,amount,category")
    (workdir / "blank.csv").write_text("\n\n")
    write_jsonl(workdir / "tx.jsonl", [{"description": "coffee", "amount": 4.5, "category": "Dining"}])
    names = ["blank.csv", "empty.csv", "header.csv", "header_no_newline.csv", "tx.jsonl"]
    result = run(workdir, recipe(*names))
    assert [row["completion"] for row in outputs(Path(result.version_uri))] == ["Dining"]
    assert [(Path(i.uri).name, i.records) for i in result.manifest.inputs] == [(name, 0) for name in names[:4]] + [
        ("tx.jsonl", 1)
    ]
    assert (result.manifest.counts.input, result.manifest.counts.written, result.manifest.counts.reasons) == (1, 1, {})


def test_lines_count_the_newlines_inside_quoted_values(workdir: Path) -> None:
    path = workdir / "qa.csv"
    path.write_text(
        "n,question,answer,account\n"  # 1
        '1,"multi\nline question here?","ans one",acct\n'  # 2-3
        "2,a,b,c,d,e\n"  # 4: six fields
        '3,"two\nbreaks\nhere",ans,acct,extra\n'  # 5-7: five fields
        '4,"after them?","ans four",acct\n'  # 8
        '5,"unterminated...\n'  # 9
    )
    result = run(workdir, {"dataset": "qa", "sources": [{"path": "qa.csv"}], "record": QA_RECORD})
    version = Path(result.version_uri)
    aside = set_aside(version)
    assert [(row["source"]["line"], row["detail"]) for row in aside] == [
        (4, f"{path}:4: expected 4 fields, found 6"),
        (5, f"{path}:5: expected 4 fields, found 5"),
        (9, f"{path}:9: a quote opened here is never closed: the rest of the file (lines 9-9) would be one value"),
    ]
    assert aside[1]["record"] == '3,"two\nbreaks\nhere",ans,acct,extra'
    assert lineage_lines(version) == {"ans one": 2, "ans four": 8}
    assert result.manifest.counts.reasons == {"quarantined": {"malformed_csv": 3}}
    assert_adds_up(result.manifest.counts)


def test_blank_lines_are_counted_and_give_no_record(workdir: Path) -> None:
    path = workdir / "tx.csv"
    path.write_bytes(
        b"\r\n"  # 1: before the header
        b"description,amount,category\r\n"  # 2
        b"coffee,4.5,Dining\r\n"  # 3
        b"\r\n"  # 4
        b"\n"  # 5
        b'"rent\n\nfor May",1200,Housing\n'  # 6-8: a blank line inside a quoted value is not one
        b"bus,2.5\n"  # 9: a field short
        b",,\n"  # 10: a record with every value missing, not a blank line
        b"taxi,12,Transport\n"  # 11
        b"\n\n"  # 12-13
    )
    result = run(workdir, recipe("tx.csv"))
    version = Path(result.version_uri)
    assert lineage_lines(version) == {"Dining": 3, "Housing": 6, "Transport": 11}
    assert [(row["source"]["line"], row["reason"]) for row in set_aside(version)] == [
        (9, "malformed_csv"),
        (10, "schema"),
    ]
    assert result.manifest.counts.input == 5
    assert_adds_up(result.manifest.counts)


def test_a_nested_parquet_column_reads_and_a_column_named_twice_is_refused_by_name(workdir: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pytest

    from connectors.storage import StorageError

    table = pa.table({"question": ["Q1?", "Q2?"], "answer": ["A1.", "A2."], "meta": [{"k": 1}, None]})
    pq.write_table(table, workdir / "nested.parquet")
    result = run(workdir, {"dataset": "qa", "sources": [{"path": "nested.parquet"}], "record": QA_RECORD})
    assert sorted(line["completion"] for line in outputs(Path(result.version_uri))) == ["A1.", "A2."]

    (workdir / "twice.csv").write_text("question,answer,question\nQ?,A.,Q again?\n")
    with pytest.raises(StorageError, match=r"twice.csv: column\(s\) 'question' appear more than once"):
        run(workdir, {"dataset": "qa2", "sources": [{"path": "twice.csv"}], "record": QA_RECORD})


def test_a_binary_value_in_a_parquet_struct_is_written_as_its_text_on_every_path(workdir: Path) -> None:
    # It was written as Python writes bytes, "b'Z\\xc3\\xbcrich'", by a field naming its column and by a template.
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = pa.array(
        [{"city": "Zürich".encode(), "n": 1}, {"city": b"\xff", "n": 2}],
        pa.struct({"city": pa.binary(), "n": pa.int64()}),
    )
    pq.write_table(pa.table({"question": ["Q1?", "Q2?"], "meta": meta}), workdir / "nested.parquet")
    record = {"kind": "instruction", "prompt": "{{ question }} {{ meta }}", "completion": "meta"}
    result = run(workdir, {"dataset": "qa", "sources": [{"path": "nested.parquet"}], "record": record})
    version = Path(result.version_uri)
    assert [(line["prompt"], line["completion"]) for line in outputs(version)] == [
        ('Q1? {"city": "Zürich", "n": 1}', '{"city": "Zürich", "n": 1}')
    ]
    # Bytes that are not UTF-8 quarantine their row, as in a binary column.
    assert [(row["source"]["line"], row["reason"], row["detail"].split(": ", 1)[1]) for row in set_aside(version)] == [
        (2, "template", "prompt: template failed: a value holds bytes that are not UTF-8 text (byte 0xff at 1)")
    ]
    assert_adds_up(result.manifest.counts)


def test_a_csv_whose_lines_end_in_cr_alone_reads_like_any_other(workdir: Path) -> None:
    (workdir / "mac.csv").write_bytes(b"description,amount,category\rcoffee,4.5,Dining\r\rrent,1200,Housing\rbus,2.5\r")
    result = run(workdir, recipe("mac.csv"))
    version = Path(result.version_uri)
    assert lineage_lines(version) == {"Dining": 2, "Housing": 4}  # the blank line 3 gives no record
    assert [(row["source"]["line"], row["reason"]) for row in set_aside(version)] == [(5, "malformed_csv")]
    assert_adds_up(result.manifest.counts)


def test_a_first_row_longer_than_the_header_probe_is_read(workdir: Path) -> None:
    long = "y" * (3 << 20)  # 3 MiB: the header probe reads 1 MiB
    (workdir / "big.csv").write_text(f"description,amount,category\n{long},4.5,Dining\nrent,1200,Housing\n")
    result = run(workdir, recipe("big.csv"))
    assert lineage_lines(Path(result.version_uri)) == {"Dining": 2, "Housing": 3}


def test_a_header_that_is_not_utf8_is_named_with_its_line_and_byte(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A Latin-1 header: its names read "pr\ufffdnom", and the run only said "column 'prénom' is missing".
    (workdir / "people.csv").write_bytes("\n\npr\xe9nom,r\xe9ponse\nJos\xe9,oui\nAnn,non\n".encode("latin-1"))
    spec = {
        "dataset": "people",
        "sources": [{"path": "people.csv"}],
        "record": {"kind": "instruction", "prompt": "{{ prénom }}", "completion": "réponse"},
    }
    with caplog.at_level(logging.WARNING, logger="connectors.files"), pytest.raises(RecipeError, match="prénom"):
        run(workdir, spec)
    assert [record.getMessage() for record in caplog.records if record.name == "connectors.files"] == [
        f"{workdir / 'people.csv'}:3: the header is not UTF-8: byte 0xe9 at column 3; its column names hold U+FFFD "
        "for such bytes (save the file as UTF-8)"
    ]


def test_a_csv_whose_lines_end_in_cr_alone_then_in_lf_reads_each_line_as_one(workdir: Path) -> None:
    # The first read (a block) decided "CR alone" for the whole file: later lines ending in CRLF became
    # two line ends each, and the rows' lines were numbered past the lines they are on.
    data = b"description,amount,category\rcoffee,4.5,Dining\r\rrent,1200,Housing\r\nbus,2.5\ntea,3,Drinks\n"
    (workdir / "mixed.csv").write_bytes(data)
    result = run(workdir, recipe("mixed.csv"))
    version = Path(result.version_uri)
    assert lineage_lines(version) == {"Dining": 2, "Housing": 4, "Drinks": 6}  # the blank line 3 gives no record
    assert [(row["source"]["line"], row["reason"]) for row in set_aside(version)] == [(5, "malformed_csv")]
    assert_adds_up(result.manifest.counts)


def test_a_csv_record_longer_than_two_blocks_is_read_and_the_rest_of_the_file_too(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Arrow reads a record that spans at most two blocks: a longer one (an 8 MiB value spans more than
    two 8 MiB blocks from 16 MiB on; here blocks of 256 bytes) failed the whole file with "straddling
    object straddles two block boundaries". The file is read again with larger blocks: each record once,
    with the ids and lines a read in large blocks gives."""
    import connectors.files as files
    from connectors.files import FilesSourceReader
    from schemas.config import FilesSource

    long = "x" * 5000
    path = workdir / "qa.csv"
    path.write_bytes(
        b"question,answer\nfirst,yes\nbroken,row,extra\n"
        + f'long,{long}\nquoted,"{long[:2000]}\n{long[:3000]}"\n'.encode()
        + b"bad,caf\xe9\nfirst,yes\n"
        + f"longer,{long * 3}\nlast,no\n".encode()
    )

    def read() -> list[list[dict]]:
        batches = list(FilesSourceReader(FilesSource(path=str(path)), 50_000).batches())
        return [
            [row for batch in batches for row in getattr(batch, part).to_pylist()] for part in ("rows", "set_aside")
        ]

    whole = read()  # blocks of 8 MiB
    monkeypatch.setattr(files, "BLOCK_BYTES", 256)
    assert read() == whole
    rows, aside = whole
    assert [(row["question"], len(row["answer"]), row["source"]["line"]) for row in rows] == [
        ("first", 3, 2),
        ("long", 5000, 4),
        ("quoted", 5001, 5),
        ("first", 3, 8),
        ("longer", 15000, 9),
        ("last", 2, 10),
    ]
    assert [(row["source"]["line"], row["detail"]) for row in aside] == [
        (3, f"{path}:3: expected 2 fields, found 3"),
        (7, f"{path}:7: not UTF-8: byte 0xe9 at column 8"),
    ]
    result = run(workdir, {"dataset": "qa", "sources": [{"path": "qa.csv"}], "record": QA_RECORD})
    counts = result.manifest.counts
    assert (counts.input, counts.written, counts.duplicate, counts.quarantined) == (8, 5, 1, 2)  # "first" twice
    assert_adds_up(result.manifest.counts)


def test_a_csv_record_longer_than_the_largest_block_names_its_file_and_line(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import connectors.files as files
    from connectors.storage import StorageError

    path = workdir / "qa.csv"
    path.write_text('question,answer\nfirst,yes\nopen,"a quote never closed\n' + "more text\n" * 500)
    monkeypatch.setattr(files, "BLOCK_BYTES", 256)
    monkeypatch.setattr(files, "MAX_CSV_BLOCK_BYTES", 1024)
    with pytest.raises(StorageError) as raised:
        run(workdir, {"dataset": "qa", "sources": [{"path": "qa.csv"}], "record": QA_RECORD})
    assert str(raised.value) == (
        f"{path}:3: a CSV record from about this line on is longer than 1,024 bytes (a quote that is never closed?)"
    )


def read_csv(uri: str) -> tuple[list[dict], list[dict]]:
    """The rows and set-aside lines the files reader gives for one CSV file."""
    from connectors.files import FilesSourceReader
    from schemas.config import FilesSource

    batches = list(FilesSourceReader(FilesSource(path=uri), 50_000).batches())
    return [row for b in batches for row in b.rows.to_pylist()], [
        row for b in batches for row in b.set_aside.to_pylist()
    ]


UNCLOSED = b'question,answer\nfirst,yes\nopen,"a quote never closed\n' + b"more,text\n" * 500  # lines 3-503


@pytest.mark.parametrize("ending", [b"", b"last,row"], ids=["final-newline", "no-final-newline"])
def test_a_quote_never_closed_quarantines_its_record_naming_the_lines_it_took(workdir: Path, ending: bytes) -> None:
    # Arrow reads the rest of the file as the one value: 500 rows became one, written as if fine.
    path = workdir / "qa.csv"
    path.write_bytes(UNCLOSED + ending)
    last = 503 + bool(ending)
    result = run(workdir, {"dataset": "qa", "sources": [{"path": "qa.csv"}], "record": QA_RECORD})
    version = Path(result.version_uri)
    assert lineage_lines(version) == {"yes": 2}
    (aside,) = set_aside(version)
    assert (aside["reason"], aside["source"]["line"], aside["detail"]) == (
        "malformed_csv",
        3,
        f"{path}:3: a quote opened here is never closed: the rest of the file (lines 3-{last}) would be one value",
    )
    assert aside["record"] == (UNCLOSED + ending).decode()[26:][:10_000]  # as the file has it, no quote added
    assert (result.manifest.counts.input, result.manifest.counts.written, result.manifest.counts.quarantined) == (
        2,
        1,
        1,
    )
    assert_adds_up(result.manifest.counts)


def test_a_quote_never_closed_in_a_record_with_fields_missing_or_a_closed_one_before_names_its_line(
    workdir: Path,
) -> None:
    # A record the quote leaves a field short was set aside as "expected 3 fields, found 1".
    (workdir / "short.csv").write_text('a,b,c\n1,2,3\n"open,2,3\n4,5,6\n')
    _, aside = read_csv(str(workdir / "short.csv"))
    assert [(row["source"]["line"], row["detail"].split(": ", 1)[1]) for row in aside] == [
        (3, "a quote opened here is never closed: the rest of the file (lines 3-4) would be one value")
    ]
    # The quote that is never closed opens on the record's third line, after a value that spans lines.
    (workdir / "later.csv").write_text('a,b,c\n1,"two\nlines","open\nrest\n')
    rows, aside = read_csv(str(workdir / "later.csv"))
    assert rows == []
    assert [(row["source"]["line"], row["detail"].split(": ", 1)[1]) for row in aside] == [
        (2, "a quote opened on line 3 is never closed: the rest of the file (lines 2-4) would be one value")
    ]


@pytest.mark.parametrize(
    "tail",
    [
        '"multi\nline ""quoted"" answer"\n',
        '"multi\nline ""quoted"" answer"',
        '"multi\nline answer ending in a quote"""',
        '"multi\nline"" answer, closed" then more\n\n',
        'plain answer with a "quote in it\n',
        '"ok"\n"',  # the last record is a quote alone: never closed
    ],
)
def test_a_quoted_value_closed_at_the_end_of_the_file_is_read(workdir: Path, tail: str) -> None:
    path = workdir / "qa.csv"
    path.write_text("question,answer\nfirst,yes\nlast," + tail)
    rows, aside = read_csv(str(path))
    if tail.endswith('\n"'):
        assert [(row["source"]["line"], row["detail"].split(": ", 1)[1]) for row in aside] == [
            (4, "a quote opened here is never closed: the rest of the file (lines 4-4) would be one value")
        ]
        return
    assert aside == []
    assert [(row["question"], row["source"]["line"]) for row in rows] == [("first", 2), ("last", 3)]


def test_a_quote_never_closed_is_found_when_the_file_is_read_again_in_larger_blocks(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import connectors.files as files

    path = workdir / "qa.csv"
    path.write_bytes(b"question,answer\n" + b"q,a\n" * 100 + b'open,"never closed\n' + b"x" * 2000 + b"\nmore\n")
    whole = read_csv(str(path))  # blocks of 8 MiB
    monkeypatch.setattr(files, "BLOCK_BYTES", 256)  # the record spans more than two blocks: read again
    assert read_csv(str(path)) == whole
    rows, aside = whole
    assert len(rows) == 100
    assert [(row["source"]["line"], row["detail"].split(": ", 1)[1]) for row in aside] == [
        (102, "a quote opened here is never closed: the rest of the file (lines 102-104) would be one value")
    ]


def test_a_quote_never_closed_in_a_csv_on_s3_quarantines_its_record(bucket: str) -> None:
    import boto3

    boto3.client("s3").put_object(Bucket=bucket, Key="qa.csv", Body=UNCLOSED)
    rows, aside = read_csv(f"s3://{bucket}/qa.csv")
    assert [row["question"] for row in rows] == ["first"]
    assert [(row["source"]["line"], row["detail"]) for row in aside] == [
        (
            3,
            f"s3://{bucket}/qa.csv:3: a quote opened here is never closed: the rest of the file (lines 3-503) "
            "would be one value",
        )
    ]


@pytest.mark.parametrize("rows", [3, 400])  # the whole file read for its header, and more than that
def test_a_header_with_a_quote_never_closed_is_refused_naming_the_cause(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, rows: int
) -> None:
    # Refused with Arrow's "Empty CSV file or block: cannot infer number of columns": no cause, no line.
    import connectors.files as files
    from connectors.storage import StorageError

    monkeypatch.setattr(files, "PROBE_BYTES", 1024)
    path = workdir / "qa.csv"
    path.write_text('\nquestion,"answer\n' + "".join(f"q{i},a{i}\n" for i in range(rows)))
    with pytest.raises(StorageError) as raised:
        run(workdir, {"dataset": "qa", "sources": [{"path": "qa.csv"}], "record": QA_RECORD})
    never = "is never closed: the whole file would be one column name"
    within = "is not closed within the file's first 1,024 bytes (never closed?)"
    assert str(raised.value) == f"{path}:2: a quote in the header {never if rows == 3 else within}"


def test_a_header_that_does_not_end_within_the_probe_is_refused_naming_the_cause(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Refused with Arrow's "Empty CSV file or block: cannot infer number of columns": no cause, no line.
    import connectors.files as files
    from connectors.storage import StorageError

    monkeypatch.setattr(files, "PROBE_BYTES", 1024)
    path = workdir / "qa.csv"
    path.write_text("\n" + ",".join(f"column{i}" for i in range(300)) + "\n" + "a,b\n" * 10)
    with pytest.raises(StorageError) as raised:
        run(workdir, {"dataset": "qa", "sources": [{"path": "qa.csv"}], "record": QA_RECORD})
    assert (
        str(raised.value) == f"{path}:2: the header does not end within the file's first 1,024 bytes (not a CSV file?)"
    )


def test_a_first_csv_record_longer_than_two_blocks_is_read_as_a_later_one_is(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The header is read with the first rows: a first record longer than the probe and two blocks (an
    8 MiB value from 16 MiB on; here a probe of 128 bytes, blocks of 256) failed the whole file as
    "longer than 1,073,741,824 bytes", though the same record on a later line is read."""
    import connectors.files as files

    long = "x" * 5000
    (workdir / "qa.csv").write_text(f"question,answer\nlong,{long}\nlast,no\n")
    monkeypatch.setattr(files, "BLOCK_BYTES", 256)
    monkeypatch.setattr(files, "PROBE_BYTES", 128)
    result = run(workdir, {"dataset": "qa", "sources": [{"path": "qa.csv"}], "record": QA_RECORD})
    assert lineage_lines(Path(result.version_uri)) == {long: 2, "no": 3}
    assert_adds_up(result.manifest.counts)


def test_a_header_not_utf8_is_warned_of_once_however_often_the_file_is_read_again(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A record longer than two blocks reads the file again with larger blocks: the header's warning
    was said again on each try (three times here)."""
    import connectors.files as files

    long = "x" * 5000
    (workdir / "qa.csv").write_bytes(b"question,answer,pr\xe9nom\nfirst,yes,a\n" + f"long,{long},b\n".encode())
    monkeypatch.setattr(files, "BLOCK_BYTES", 256)
    with caplog.at_level(logging.WARNING, logger="connectors.files"):
        result = run(workdir, {"dataset": "qa", "sources": [{"path": "qa.csv"}], "record": QA_RECORD})
    assert lineage_lines(Path(result.version_uri)) == {"yes": 2, long: 3}
    said = [record.getMessage() for record in caplog.records if record.name == "connectors.files"]
    assert [message for message in said if "the header is not UTF-8" in message] == [
        f"{workdir / 'qa.csv'}:1: the header is not UTF-8: byte 0xe9 at column 19; its column names hold U+FFFD "
        "for such bytes (save the file as UTF-8)"
    ]


def test_a_csv_file_read_in_small_blocks_gives_every_record_on_its_line_every_time(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrow notes a row with the wrong number of fields on its own threads, parsing ahead of the batch
    # the reader places: one noted in between was dropped with the batch's (cleared after placing), and
    # every later record's line was off by one, now and then. Records longer than two blocks (read
    # again in larger ones), rows of one field and blank lines among them, read many times.
    import connectors.files as files
    from connectors.files import FilesSourceReader
    from schemas.config import FilesSource

    lines = ["a,b"]
    for n in range(300):
        if n % 50 == 5:
            lines.append(f'{n},"' + "long\n" * 150 + '"')
        elif n % 40 == 14:
            lines.append(str(n))  # one field: set aside
        else:
            lines += [""] * (n % 60 == 30) + [f"{n},v{n % 5}"]
    path = workdir / "long.csv"
    path.write_text("\n".join(lines) + "\n")

    def read() -> tuple[list[tuple[str, int]], list[int]]:
        batches = list(FilesSourceReader(FilesSource(path=str(path)), 7).batches())
        rows = [(row["a"], row["source"]["line"]) for batch in batches for row in batch.rows.to_pylist()]
        return rows, [row["source"]["line"] for batch in batches for row in batch.set_aside.to_pylist()]

    whole = read()  # blocks of 8 MiB
    assert len(whole[0]) == 300 - 8 and len(whole[1]) == 8
    monkeypatch.setattr(files, "BLOCK_BYTES", 64)
    for _ in range(30):
        assert read() == whole


@pytest.mark.parametrize(("delimiter", "prompt"), [(";", "a"), ("\t", "{{ a }}"), ("|", "a")])
def test_a_csv_of_another_delimiter_is_said_to_need_csv_delimiter(workdir: Path, delimiter: str, prompt: str) -> None:
    # Read with commas, "a;b;c" is one column: "column 'a' is missing" did not say why.
    path = workdir / "semi.csv"
    path.write_text(f"a{delimiter}b{delimiter}c\n1{delimiter}2{delimiter}3\n")
    record = {"kind": "instruction", "prompt": prompt, "completion": "b"}
    spec = {"dataset": "semi", "sources": [{"path": "semi.csv"}], "record": record}
    header = f"a{delimiter}b{delimiter}c"
    hint = f"the header is one column, {header!r}: is the file {delimiter!r}-separated? set the source's csv_delimiter"
    with pytest.raises(RecipeError) as error:
        run(workdir, spec)
    assert f"{path}:2: prompt: column 'a' is missing" in str(error.value) and hint in str(error.value)
    spec["sources"][0]["csv_delimiter"] = delimiter
    assert [line["prompt"] for line in outputs(Path(run(workdir, spec).version_uri))] == ["1"]


@pytest.mark.parametrize(
    ("lines", "prompt"),
    [
        (['{"q": "hi", "a": "yo"}', '{"q": "up", "a": "on"}'], "q"),
        (["[1, 2]", "[3, 4]"], "{{ q }}"),
        (['["hi", "yo"]', '["up", "on"]'], "{{ q }}"),
    ],
)
def test_json_lines_read_as_csv_are_said_to_look_like_json_lines(workdir: Path, lines: list[str], prompt: str) -> None:
    # Its first line taken for the header, "column 'q' is missing" sent the user to fix the column name.
    path = workdir / "qa.jsonl"
    path.write_text("\n".join(lines) + "\n")
    record = {"kind": "instruction", "prompt": prompt, "completion": "a"}
    spec = {"dataset": "qa", "sources": [{"path": "qa.jsonl", "format": "csv"}], "record": record}
    with pytest.raises(RecipeError) as error:
        run(workdir, spec)
    said = str(error.value)
    assert f"{path}:2: prompt: column 'q' is missing" in said and "this looks like JSON Lines: format: jsonl?" in said
    # Its first key at most: the header is the file's first record, which may hold a name or an e-mail.
    opens = '''{"q"''' if lines[0].startswith("{") else "["
    assert f"the header's first column opens {opens!r}:" in said and '"hi"' not in said, said
    if lines[0].startswith("{"):
        spec["sources"][0]["format"] = "jsonl"
        assert sorted(line["prompt"] for line in outputs(Path(run(workdir, spec).version_uri))) == ["hi", "up"]


@pytest.mark.parametrize("first", ["[id]", "{x}"])
def test_a_csv_whose_header_is_bracketed_is_not_said_to_look_like_json_lines(workdir: Path, first: str) -> None:
    # A JSON line cut at a comma opens ``{"`` or ``[`` and a value: a bracketed column name does not.
    path = workdir / "q.csv"
    path.write_text(f"{first},question\n1,hi\n")
    record = {"kind": "instruction", "prompt": "{{ prompt }}", "completion": "a"}
    spec = {"dataset": "qa", "sources": [{"path": "q.csv", "format": "csv"}], "record": record}
    with pytest.raises(RecipeError) as error:
        run(workdir, spec)
    said = str(error.value)
    assert f"{path}:2: prompt: column 'prompt' is missing" in said and "JSON Lines" not in said, said


def test_input_schema_checks_a_csv_id_column_under_input_id(workdir: Path) -> None:
    # The column `id` is read as `input_id`: declared so, its values are checked and cast, not the record's hash.
    (workdir / "t.csv").write_text("id,question,answer\n7,Where?,Here.\nA-8,Why?,Because.\n9,How?,So.\n")
    spec = {**recipe("t.csv"), "input_schema": {"columns": {"input_id": "int"}}, "output": {"validation_fraction": 0}}
    spec["record"] = {"kind": "instruction", "prompt": "#{{ input_id + 1 }} {{ question }}", "completion": "answer"}
    version = Path(run(workdir, spec).version_uri)
    assert sorted(row["prompt"] for row in outputs(version)) == ["#10 How?", "#8 Where?"]
    (aside,) = set_aside(version)
    assert (aside["reason"], aside["source"]["line"]) == ("schema", 3) and "input_id" in aside["detail"], aside
