"""Recipes: short ones work, wrong ones fail with the setting and the line named."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from schemas.config import RecipeError, load_recipe, parse_recipe


def test_short_recipe_takes_defaults(tmp_path: Path) -> None:
    recipe = parse_recipe("dataset: tx\nsources:\n  - path: data/*.csv\n", base_dir=tmp_path)
    assert recipe.sources[0].path == str(tmp_path / "data/*.csv")
    assert recipe.record.kind == "instruction"
    assert recipe.output.format == "jumpstart-instruction"
    assert [stage.type for stage in recipe.stages] == ["exact_dedup"]
    assert recipe.state == f"sqlite:///{tmp_path}/.curation/state.db"


def test_s3_paths_stay_as_given(tmp_path: Path) -> None:
    recipe = parse_recipe(
        "dataset: tx\nsources:\n  - path: s3://b/raw/\noutput:\n  dest: s3://b/out\n", base_dir=tmp_path
    )
    assert recipe.sources[0].path == "s3://b/raw/"
    assert recipe.output.dest == "s3://b/out"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "dataset: tx\nsources:\n  - path: a.csv\n    formatt: csv\n",
            "sources.0.formatt (line 4): Extra inputs are not permitted",
        ),
        ("dataset: tx\nsources: []\n", "sources (line 2): List should have at least 1 item"),
        ("dataset: 'bad name!'\nsources:\n  - path: a\n", "dataset (line 1): String should match pattern"),
        (
            "dataset: tx\nsources:\n  - path: a\nrecord:\n  kind: document\n  prompt: x\n",
            "record (line 4): ['prompt'] are not fields of a document record",
        ),
        ("dataset: tx\nsources:\n  - path: a\nstages:\n  - type: fuzzy\n", "stages.0 (line 5)"),
        (
            "dataset: tx\nsources:\n  - path: a\noutput:\n  validation_fraction: 1.5\n",
            "output.validation_fraction (line 5)",
        ),
        # Past 64 bits it overflowed Arrow's slicing once the run had started (a traceback).
        (
            "dataset: tx\nsources:\n  - path: a\nbatch_rows: 99999999999999999999999999\n",
            "batch_rows (line 4): Input should be less than or equal to 10000000",
        ),
        # A folder name the file system refuses, and longer than the state store's runs.dataset.
        (
            f"dataset: {'a' * 201}\nsources:\n  - path: a\n",
            "dataset (line 1): String should have at most 200 characters",
        ),
        # A driver not installed: the run failed opening the store, with a ModuleNotFoundError traceback.
        (
            "dataset: tx\nsources:\n  - path: a\nstate: postgresql+psycopg2://u@db/state\n",
            "state (line 4): the state store's postgresql driver is psycopg (postgresql+psycopg:// or postgresql://), "
            "not psycopg2",
        ),
        ("dataset: tx\nsources:\n  - path: a\nstate: sqlite+aiosqlite:///s.db\n", "state (line 4): "),
        # A bare name in a list of mappings: pydantic's "Input should be a valid dictionary or object".
        (
            "dataset: tx\nsources:\n  - path: a\nstages:\n  - type: pii\n  - exact_dedup\n",
            "stages.1 (line 6): a stage is a mapping of settings: write `- type: exact_dedup`",
        ),
        (
            "dataset: tx\nsources:\n  - a.jsonl\n",
            "sources.0 (line 3): a source is a mapping of settings: write `- path: a.jsonl`",
        ),
        # Text where a list is asked for: pydantic's "Input should be a valid list" alone.
        (
            "dataset: tx\nsources: in/\n",
            "sources (line 2): Input should be a valid list: a list of sources, each a mapping: write `- path: in/`",
        ),
        (
            "dataset: tx\nsources:\n  - path: a\nstages: exact_dedup\n",
            "stages (line 4): Input should be a valid list: a list of stages, each a mapping: write "
            "`- type: exact_dedup`",
        ),
        # A mapping where the list belongs: it was told to write `- path: ...`, which it had, but for the `- `.
        (
            "dataset: tx\nsources:\n  path: in/\n  format: csv\n",
            "sources (line 2): Input should be a valid list: a list of sources, each a mapping: put `- ` before "
            "`path: in/`",
        ),
        (
            "dataset: tx\nsources:\n  - path: a\nstages:\n  type: exact_dedup\n",
            "stages (line 4): Input should be a valid list: a list of stages, each a mapping: put `- ` before "
            "`type: exact_dedup`",
        ),
    ],
)
def test_errors_name_setting_and_line(text: str, expected: str) -> None:
    with pytest.raises(RecipeError) as error:
        parse_recipe(text, origin="r.yaml")
    assert str(error.value).startswith("r.yaml: ")
    assert expected in str(error.value)


def test_every_mistake_is_reported_in_one_try(tmp_path: Path) -> None:
    # A stage's fields and columns were checked against the records only once every setting validated:
    # a wrong state or a stage's option hid them until the user had fixed those and run again.
    text = """dataset: tx
sources:
  - path: in
record: {kind: instruction}
stages:
  - type: language_filter
    languages: [english]
  - type: length_filter
    fields: [promt]
  - type: expectations
    expect:
      - {column: labl, check: not_null}
state: mysql://db/state
output: {dest: in/curated}
"""
    with pytest.raises(RecipeError) as error:
        parse_recipe(text, origin="r.yaml", base_dir=tmp_path)
    lines = str(error.value).splitlines()
    assert lines[0] == "r.yaml: 5 problem(s) in the recipe:"
    assert [line.split(":")[0] for line in lines[1:]] == [
        "  stages.0.languages (line 7)",
        "  state (line 13)",
        "  stages.1.fields (line 9)",  # its place in the recipe, though stage 0 failed
        "  stages.2.expect.0.column (line 12)",
        "  sources.0.path (line 3)",
    ]
    assert "['promt'] are not columns of the records" in lines[3]
    assert "'labl' is not a column" in lines[4]
    assert "takes in what this recipe publishes" in lines[5]


def test_no_stage_is_judged_against_a_record_that_failed() -> None:
    # What the records hold is not known: a stage's fields would be judged against the wrong ones.
    text = "dataset: tx\nsources:\n  - path: a\nrecord: {kind: essay}\nstages:\n  - {type: length_filter, fields: [promt]}\n"
    with pytest.raises(RecipeError) as error:
        parse_recipe(text, origin="r.yaml")
    assert str(error.value).startswith("r.yaml: 1 problem(s) in the recipe:\n  record.kind (line 4): ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "dataset: tx\nsources:\n  - path: a\nstages:\n  - type: length_filter\n    min_word: 2\n",
            "stages.0.min_word (line 6): Extra inputs are not permitted: did you mean 'min_words'? the settings "
            "here are fields, max_chars, max_words, min_chars, min_words, type",
        ),
        (
            "dataset: tx\nsources:\n  - path: a\nstages:\n  - type: expectations\n    expect:\n"
            "      - {column: prompt, check: matches_regex, regexp: x}\n",
            "stages.0.expect.0.regexp (line 7): Extra inputs are not permitted: did you mean 'regex'? the settings "
            "here are check, column, max, min, regex, values",
        ),
        (
            "dataset: tx\nsources:\n  - type: sql\n    url: sqlite:///x.db\n    tabel: t\n",
            "sources.0.tabel (line 5): Extra inputs are not permitted: did you mean 'table'? the settings here are "
            "cursor, key, params, query, table, type, url",
        ),
        ("dataset: tx\nsources:\n  - path: a\nouptut: {}\n", "ouptut (line 4): Extra inputs are not permitted: "),
    ],
)
def test_a_misspelt_setting_is_named_with_the_settings_allowed_there(text: str, expected: str) -> None:
    with pytest.raises(RecipeError) as error:
        parse_recipe(text, origin="r.yaml")
    assert expected in str(error.value)
    assert "did you mean" in str(error.value) and "the settings here are" in str(error.value)


def test_a_misspelt_stage_or_source_type_is_named_with_the_likely_one() -> None:
    text = "dataset: tx\nsources:\n  - {type: fils, path: a}\nstages:\n  - type: lenght_filter\n"
    with pytest.raises(RecipeError) as error:
        parse_recipe(text, origin="r.yaml")
    assert (
        "sources.0 (line 3): type 'fils' is not one of files, sql, documents, images, hf: did you mean 'files'?"
        in str(error.value)
    )
    assert "stages.0 (line 5): type 'lenght_filter' is not one of expectations, clean, length_filter" in str(
        error.value
    )
    assert str(error.value).endswith("did you mean 'length_filter'?")


@pytest.mark.parametrize(
    ("kind", "fmt"),
    [("document", "jumpstart-chat"), ("instruction", "text"), ("vqa", "messages"), ("instruction", "jumpstart-vqa")],
)
def test_an_output_format_for_another_record_kind_is_a_recipe_error(kind: str, fmt: str) -> None:
    # It passed `curation check` and failed the run (exit 1, no setting named) once it had started.
    text = f"dataset: tx\nsources:\n  - path: a\nrecord:\n  kind: {kind}\noutput:\n  format: {fmt}\n"
    with pytest.raises(RecipeError) as error:
        parse_recipe(text, origin="r.yaml")
    assert f"output.format (line 7): {fmt!r} publishes " in str(error.value)
    assert f"record.kind is {kind}" in str(error.value)


def test_each_output_format_publishes_the_record_kind_the_recipe_checks_it_against() -> None:
    from curation.formats import FORMATS
    from schemas.config import FORMAT_KINDS

    assert {name: sorted(fmt.kinds) for name, fmt in FORMATS.items()} == {
        name: [kind] for name, kind in FORMAT_KINDS.items()
    }


def test_not_yaml_and_not_a_mapping() -> None:
    with pytest.raises(RecipeError, match=r"r\.yaml: not valid YAML"):
        parse_recipe("dataset: [unclosed\n", origin="r.yaml")
    with pytest.raises(RecipeError, match="a recipe is a YAML mapping"):
        parse_recipe("- just a list\n", origin="r.yaml")


def test_a_yaml_error_is_one_line_naming_the_recipes_line_and_column() -> None:
    with pytest.raises(RecipeError) as error:
        parse_recipe("dataset: x\nsources:\n  - path: a\n   bad: 1\n", origin="r.yaml")
    assert str(error.value) == (
        "r.yaml: not valid YAML (line 4, column 4): expected <block end>, but found '<block mapping start>' "
        "(while parsing a block collection on line 3)"
    )


def test_a_setting_named_twice_is_a_recipe_error_not_the_last_one_silently() -> None:
    # YAML keeps the last of two keys: the first `stages:` (its pii stage) would be dropped unseen.
    text = (
        "dataset: d\nsources:\n  - path: in.jsonl\n    path: other.jsonl\n"
        "record: {kind: document, text: body}\nstages:\n  - type: pii\noutput: {dest: out}\n"
        "stages:\n  - type: exact_dedup\n"
    )
    with pytest.raises(RecipeError) as error:
        parse_recipe(text, origin="r.yaml")
    assert "sources.0.path (line 4): set twice (also on line 3)" in str(error.value)
    assert "stages (line 9): set twice (also on line 6)" in str(error.value)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("dataset: tx\nsources: [{path: in.csv}]\nx: &a [*a]\n", "x.0 (line 3)"),
        ("dataset: tx\nsources: [{path: in.csv}]\nx: &a {b: [1, *a]}\n", "x.b.1 (line 3)"),
    ],
)
def test_an_alias_inside_the_value_it_names_is_a_recipe_error(text: str, where: str) -> None:
    # It recursed until Python's RecursionError, a traceback.
    with pytest.raises(RecipeError) as error:
        parse_recipe(text, origin="r.yaml")
    assert f"{where}: an alias inside the value it names" in str(error.value)


def test_an_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    # Each line two aliases of the one before: 30 lines expand to billions of values, which the checks of
    # the recipe walked for minutes, taking all memory. Run apart, so a regression fails, not hangs, the test.
    lines = ["x0: &x0 {k: v}"] + [f"x{i}: &x{i} {{a: *x{i - 1}, b: *x{i - 1}}}" for i in range(1, 30)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\ndataset: tx\nsources: [{path: in.csv}]\n")
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
        "from schemas.config import load_recipe, RecipeError\n"
        f"try: load_recipe({str(path)!r})\nexcept RecipeError as e: print(e)\n"
    )
    root = Path(__file__).resolve().parents[1]
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("a recipe of 31 lines of aliases was still loading after 20 s")
    assert "(top level) (line 1): aliases make the recipe 6,442,450,886 values" in done.stdout, done.stderr[-500:]


def test_a_few_aliases_are_read_as_written() -> None:
    text = (
        "dataset: tx\nsources:\n  - &src {path: a.csv}\n  - *src\n"
        "stages:\n  - &len {type: length_filter, min_words: 2}\n  - *len\n"
    )
    recipe = parse_recipe(text)
    assert [source.path for source in recipe.sources] == ["a.csv", "a.csv"]
    assert [stage.min_words for stage in recipe.stages] == [2, 2]


def test_values_nested_too_deeply_are_a_recipe_error() -> None:
    # PyYAML builds nested values by recursion: a RecursionError, a traceback.
    with pytest.raises(RecipeError, match=r"^r\.yaml: not valid YAML: values nested too deeply"):
        parse_recipe("x: " + "[" * 3000 + "]" * 3000 + "\n", origin="r.yaml")


def test_a_recipe_not_in_utf8_is_named_by_its_byte_and_line(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_bytes(b"dataset: tx\nsources: [{path: caf\xe9.csv}]\n")  # Latin-1
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    assert str(error.value) == f"{path}: not UTF-8: byte 0xe9 at line 2, column 21 (save the recipe as UTF-8)"


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="cannot read the recipe"):
        load_recipe(tmp_path / "nope.yaml")


def test_fingerprint_changes_with_settings() -> None:
    a = parse_recipe("dataset: tx\nsources:\n  - path: /a\n")
    b = parse_recipe("dataset: tx\nsources:\n  - path: /a\noutput:\n  validation_fraction: 0.2\n")
    assert a.fingerprint() == parse_recipe("dataset: tx\nsources:\n  - path: /a\n").fingerprint()
    assert a.fingerprint() != b.fingerprint()


@pytest.mark.parametrize("schema", ["", "input_schema: {}\n"])
def test_the_record_fingerprint_of_a_recipe_without_input_schema_is_the_one_earlier_releases_wrote(schema: str) -> None:
    # Its versions' record_sha256: another hash would put their templates on trial again (``templates_on_trial``).
    recipe = parse_recipe(
        f"dataset: tx\nsources:\n  - path: /a\n{schema}record:\n  prompt: 'Q: {{{{ q }}}}'\n  completion: a\n"
    )
    assert recipe.record.fingerprint(recipe.input_schema) == (
        "a1cbf279012509d4d9c23b5ace10f8d60f02ef632422575618a8682a2754162d"  # as the release before wrote it
    )


def test_the_record_fingerprint_changes_with_the_input_schema_the_templates_read_by() -> None:
    def fingerprint(schema: str) -> str:
        recipe = parse_recipe(f"dataset: tx\nsources:\n  - path: /a\ninput_schema:\n  columns: {schema}\n")
        return recipe.record.fingerprint(recipe.input_schema)

    assert len({fingerprint("{}"), fingerprint("{q: str}"), fingerprint("{q: float}")}) == 3
    assert fingerprint("{q: str, a: int}") == fingerprint("{a: int, q: str}")


@pytest.mark.parametrize("stage", ["clean", "length_filter", "repetition_filter", "ratio_filter"])
def test_a_release_changing_a_stages_rules_changes_the_fingerprint_of_recipes_with_that_stage(
    stage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage that changes or sets aside other records with the same settings (clean keeping joiners,
    length_filter not counting the joining line) did other work: a scheduled run must say the recipe
    changed. A recipe without such a stage keeps its fingerprint."""
    import schemas.config

    with_stage = f"dataset: tx\nsources:\n  - path: /a\nstages:\n  - type: {stage}\n"
    without = "dataset: tx\nsources:\n  - path: /a\nstages:\n  - type: exact_dedup\n"
    config = type(parse_recipe(with_stage).stages[0])
    now = parse_recipe(with_stage).fingerprint(), parse_recipe(without).fingerprint()
    monkeypatch.setattr(config, "RULES", config.RULES - 1)  # the release before
    before = parse_recipe(with_stage).fingerprint(), parse_recipe(without).fingerprint()
    assert now[0] != before[0]
    assert now[1] == before[1]
    monkeypatch.setattr(config, "RULES", 1)  # a stage's first rules leave the fingerprints before them as they were
    recipe = parse_recipe(with_stage)
    settings = recipe.model_dump(mode="json", exclude={"engine", "ray_address"})
    settings["text_rules"] = schemas.config.TEXT_RULES
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    assert recipe.fingerprint() == hashlib.sha256(canonical.encode()).hexdigest()


@pytest.mark.parametrize("stage", ["exact_dedup", "near_dedup", "clean", "length_filter", "language_filter"])
def test_stage_fields_the_records_do_not_have_are_named_at_load(stage: str) -> None:
    text = f"dataset: tx\nsources:\n  - path: a\nstages:\n  - type: clean\n  - type: {stage}\n    fields: [promt]\n"
    with pytest.raises(RecipeError) as error:
        parse_recipe(text, origin="r.yaml")
    assert "stages.1.fields (line 7): ['promt'] are not columns of the records" in str(error.value)
    assert "instruction records have ['prompt', 'completion', 'label']" in str(error.value)


def test_stage_fields_may_name_a_column_the_split_carries() -> None:
    text = "dataset: tx\nsources:\n  - path: a\nstages:\n  - type: exact_dedup\n    fields: [prompt, customer]\n"
    recipe = parse_recipe(text + "output:\n  group_by: customer\n")
    assert recipe.stages[0].fields == ["prompt", "customer"]


@pytest.mark.parametrize(
    ("prompt", "name"),
    [("Ticket {{ id }}: {{ subject }}", "id"), ("{{ subject }} ({{ source }})", "source"), ("id", "id")],
)
def test_a_record_field_from_the_record_id_or_source_is_a_recipe_error(prompt: str, name: str) -> None:
    # {{ id }} rendered the record's hash into training data; {{ source }} was never found.
    def recipe(prompt: str) -> str:
        return f"dataset: tx\nsources:\n  - path: a\nrecord:\n  prompt: '{prompt}'\n  completion: reply\n"

    with pytest.raises(
        RecipeError, match=rf"record.prompt \(line 5\): .*'{name}' is the record's own {name}, .*input_{name}"
    ):
        parse_recipe(recipe(prompt))
    renamed = prompt.replace(name, f"input_{name}")  # an input column of that name, as the connectors rename it
    assert parse_recipe(recipe(renamed)).record.prompt == renamed


@pytest.mark.parametrize(
    ("setting", "where"),
    [
        ("input_schema:\n  columns: {NAME: int}\n", "input_schema.columns"),
        ("output:\n  group_by: NAME\n", "output.group_by"),
        ("output:\n  stratify_by: NAME\n", "output.stratify_by"),
    ],
    ids=["input_schema", "group_by", "stratify_by"],
)
@pytest.mark.parametrize("name", ["id", "source"])
def test_a_setting_naming_the_record_id_or_source_as_an_input_column_is_a_recipe_error(
    setting: str, where: str, name: str
) -> None:
    # An input's `id` is read as `input_id`: `input_schema` checked the record's hash against the type (or nothing),
    # and grouping or stratifying by the record's id or source put each record in a group of its own.
    def recipe(column: str) -> str:
        return "dataset: tx\nsources:\n  - path: a\n" + setting.replace("NAME", column)

    with pytest.raises(RecipeError, match=rf"{where} \(line 5\): '{name}' is the record's own {name}, .*input_{name}"):
        parse_recipe(recipe(name))
    parse_recipe(recipe(f"input_{name}"))


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("{{ q | nosuch }}", "No filter named 'nosuch'"),
        ("{% if a %}{{ q | nosuch }}{% endif %}", "No filter named 'nosuch'"),
        ("{{ q if a is nosuchtest else q }}", "No test named 'nosuchtest'"),
        ("{% filter nosuch %}{{ q }}{% endfilter %}", "No filter named 'nosuch'"),
    ],
)
def test_an_unknown_filter_or_test_anywhere_in_a_template_is_a_recipe_error(prompt: str, expected: str) -> None:
    # Inside a block jinja2 leaves an unknown one to the rows reaching it: the recipe loaded and each was quarantined.
    text = f"dataset: tx\nsources:\n  - path: a\nrecord:\n  prompt: '{prompt}'\n  completion: reply\n"
    with pytest.raises(RecipeError, match=rf"record.prompt \(line 5\): template syntax error: {expected}\."):
        parse_recipe(text)
    known = prompt.replace("nosuchtest", "defined").replace("nosuch", "upper")
    assert parse_recipe(text.replace(prompt, known)).record.prompt == known


def test_an_integer_split_seed_is_the_same_seed_as_its_digits() -> None:
    base = "dataset: tx\nsources:\n  - path: /a\noutput:\n  split_seed: "
    number, text = parse_recipe(base + "7\n"), parse_recipe(base + "'7'\n")
    assert number.output.split_seed == text.output.split_seed == "7"
    assert number.fingerprint() == text.fingerprint()  # the same split, and the same recipe
    with pytest.raises(RecipeError, match=r"output\.split_seed \(line 5\): Input should be a valid string"):
        parse_recipe(base + "[7]\n")


def test_table_is_no_record_kind_a_recipe_publishes() -> None:
    # An input_schema validates table rows; no format publishes them: the run could only fail, without naming it.
    with pytest.raises(
        RecipeError, match=r"record\.kind \(line 4\): Input should be 'document', 'instruction' or 'vqa'"
    ):
        parse_recipe("dataset: t\nsources:\n  - path: in.jsonl\nrecord: {kind: table}\n", origin="r.yaml")


@pytest.mark.parametrize(
    ("source", "dest"),
    [
        ("s3://acme/", "s3://acme/curated"),  # the bucket's root
        ("s3://acme/raw/**/*.jsonl", "s3://acme/raw/curated"),
        ("s3://acme/r*/", "s3://acme/raw2/out"),  # a glob of folders
        ("in", "in/curated"),
        ("./in/../in/", "in/curated/"),
        # Read by its name once it exists, as publishing makes it (a pattern till then: '[1]' is '1').
        ("'data [1]/'", "'data [1]/out'"),
        ("'s3://acme/data [1]/'", "'s3://acme/data [1]/out'"),
    ],
)
def test_a_source_that_takes_in_what_the_recipe_publishes_is_a_recipe_error(
    tmp_path: Path, source: str, dest: str
) -> None:
    # From its second run on, the source listed the versions before it: shards, manifest and report
    # were read as input (the manifest quarantined a line at a time as malformed JSON).
    text = f"dataset: docs\nsources:\n  - path: {source}\nrecord: {{kind: document}}\noutput: {{dest: {dest}}}\n"
    with pytest.raises(RecipeError, match=r"sources\.0\.path \(line 3\): .* takes in what this recipe publishes"):
        parse_recipe(text, base_dir=tmp_path)


@pytest.mark.parametrize(
    ("source", "dest"),
    [
        ("s3://acme/raw/*.jsonl", "s3://acme/raw/curated"),  # * stays within raw/
        ("s3://acme/raw/", "s3://acme/curated"),
        ("s3://acme/raw", "s3://acme/rawout"),
        ("in/a.jsonl", "in"),
    ],
)
def test_a_source_beside_what_the_recipe_publishes_is_fine(tmp_path: Path, source: str, dest: str) -> None:
    text = f"dataset: docs\nsources:\n  - path: {source}\nrecord: {{kind: document}}\noutput: {{dest: {dest}}}\n"
    parse_recipe(text, base_dir=tmp_path)  # no recipe error


def test_an_images_folder_may_hold_the_output_its_sidecar_may_not() -> None:
    # The images source reads only the images its sidecar names, never the published ones.
    recipe = """dataset: vqa
sources:
  - type: images
    path: s3://scans/receipts/
    sidecar: {sidecar}
record: {{kind: vqa}}
output: {{dest: s3://scans/receipts/curated}}
"""
    parse_recipe(recipe.format(sidecar="s3://scans/receipts/qa.jsonl"))
    with pytest.raises(RecipeError, match=r"sources\.0\.sidecar \(line 5\): .* takes in what this recipe publishes"):
        parse_recipe(recipe.format(sidecar="s3://scans/receipts/**/*.jsonl"))


def test_a_time_in_a_recipe_stays_the_text_it_shows() -> None:
    # YAML 1.1 reads 12:30 as the base-60 number 750: a query parameter meant as a time was bound as 750.
    recipe = parse_recipe(
        """dataset: d
sources:
  - type: sql
    url: sqlite:///x.db
    query: "SELECT * FROM t WHERE at > :at AND n > :n AND m < :m"
    params: {at: 12:30, n: 0x1F, m: 1:30:00.5}
record: {kind: instruction, prompt: "{{ q }}", completion: "{{ a }}"}
stages:
  - type: expectations
    expect:
      - {column: prompt, check: in_set, values: ["9:15", 10:45]}
"""
    )
    assert recipe.sources[0].params == {"at": "12:30", "n": 31, "m": "1:30:00.5"}
    assert recipe.stages[0].expect[0].values == ["9:15", "10:45"]


def test_recipe_values_are_read_as_yaml_1_2_shows_them() -> None:
    # YAML 1.1 (PyYAML's) read NO (Norway) and on as booleans, 0755 and 010 as octal numbers, 1_000 as a
    # thousand, and a key named `on` or `no` as True or False: each silently another value.
    recipe = parse_recipe(
        """dataset: d
sources:
  - type: sql
    url: sqlite:///x.db
    query: "SELECT * FROM t WHERE c = :country AND m = :on AND k = :code AND n < :n AND y = :no AND x IN (:o, :h, :f, :e)"
    params: {country: NO, on: off, code: 0755, n: 1_000, no: yes, o: 0o10, h: 0x10, f: .5, e: 1e3}
record: {kind: instruction, prompt: "{{ q }}", completion: "{{ a }}"}
stages:
  - type: expectations
    expect:
      - {column: label, check: in_set, values: [NO, SE, y, On, 010, 1_0]}
"""
    )
    params = {
        "country": "NO",
        "on": "off",
        "code": "0755",
        "n": "1_000",
        "no": "yes",
        "o": 8,
        "h": 16,
        "f": 0.5,
        "e": 1000.0,
    }
    assert recipe.sources[0].params == params
    assert recipe.stages[0].expect[0].values == ["NO", "SE", "y", "On", "010", "1_0"]


def test_typed_settings_still_take_what_yaml_1_1_read() -> None:
    # A setting of a type (a boolean, a number) takes the text YAML 1.2 leaves as pydantic reads it: yes/no
    # and 20_000 mean what they did; 0755 is the number it shows, no longer octal 493.
    recipe = parse_recipe(
        """dataset: d
sources:
  - path: a.jsonl
stages:
  - type: length_filter
    max_chars: 20_000
    min_words: 010
  - type: exact_dedup
    across_runs: no
output: {carry_forward: off, validation_fraction: .25}
"""
    )
    assert (recipe.stages[0].max_chars, recipe.stages[0].min_words) == (20000, 10)
    assert recipe.stages[1].across_runs is False
    assert (recipe.output.carry_forward, recipe.output.validation_fraction) == (False, 0.25)


def test_a_key_yaml_1_1_read_as_a_boolean_is_named_with_its_line() -> None:
    # `on:` was the key True: pydantic named a setting "True", with no line.
    with pytest.raises(RecipeError, match=r"sources\.0\.on \(line 4\): Extra inputs are not permitted"):
        parse_recipe("dataset: d\nsources:\n  - path: a.jsonl\n    on: x\n")


@pytest.mark.parametrize("url", ["sqlite:///sub/state.db", "sqlite+pysqlite:///sub/state.db"])
def test_a_relative_sqlite_state_url_is_taken_from_the_recipes_folder_whichever_way_it_is_written(
    tmp_path: Path, url: str
) -> None:
    from curation.state import StateStore

    recipe = parse_recipe(f"dataset: tx\nsources: [{{path: in.csv}}]\nstate: '{url}'\n", "r.yaml", base_dir=tmp_path)
    assert recipe.state == f"sqlite:///{tmp_path / 'sub' / 'state.db'}"
    StateStore(url.replace("///sub", f"///{tmp_path}/made"))  # its folder made, as for sqlite:///
    assert (tmp_path / "made" / "state.db").exists()


def test_ocr_on_vqa_images_named_by_path_is_a_recipe_error() -> None:
    # The PII stage reads text in the images an `images` source hands on (image_bytes); an image a JSONL
    # row names by its path is read by the writer alone: with ocr asked for, it was published unredacted.
    vqa = "dataset: d\nrecord: {kind: vqa}\nstages:\n  - {type: pii, ocr: true}\n"
    for sources in ("[{path: qa.jsonl}]", "[{type: images, path: img, sidecar: qa.jsonl}, {path: more.jsonl}]"):
        with pytest.raises(RecipeError, match=r"stages.0.ocr \(line 5\): ocr redacts text in the images an `images`"):
            parse_recipe(f"sources: {sources}\n" + vqa)
    images = parse_recipe("sources: [{type: images, path: img, sidecar: qa.jsonl}]\n" + vqa)
    assert images.stages[0].ocr
    # An hf source's Image() feature holds the pictures' bytes; one whose images are paths is refused when read.
    hf = parse_recipe("sources: [{type: hf, path: hub}, {type: images, path: img, sidecar: qa.jsonl}]\n" + vqa)
    assert hf.stages[0].ocr
    document = parse_recipe("sources: [{path: docs.jsonl}]\ndataset: d\nstages:\n  - {type: pii, ocr: true}\n")
    assert document.stages[0].ocr  # no images to leave unread: the text is redacted as ever


def test_a_relative_file_uri_is_taken_from_the_recipes_folder(workdir: Path) -> None:
    # Storage takes `file://out` from the current directory: run from elsewhere, the recipe published there
    # and read `file://in/` there, not beside the recipe as `dest: out` and `path: in/` do.
    from curation.pipeline import published_place, run_recipe
    from tests.helpers import docs_recipe, outputs, write_jsonl, write_recipe

    sub = workdir / "sub"
    write_jsonl(sub / "in" / "a.jsonl", [{"text": "alpha"}])
    write_jsonl(workdir / "in" / "b.jsonl", [{"text": "beta"}])  # what the current directory would read
    recipe = load_recipe(write_recipe(sub, docs_recipe("file://in/", dest="file://out", validation_fraction=0.0)))
    assert (recipe.sources[0].path, recipe.output.dest) == (f"file://{sub}/in", f"file://{sub}/out")
    result = run_recipe(recipe)
    assert Path(result.version_uri.removeprefix("file://")) == sub / "out" / "docs" / "v1"
    assert [row["text"] for row in outputs(sub / "out" / "docs" / "v1")] == ["alpha"]
    assert not (workdir / "out").exists()
    bare = load_recipe(write_recipe(sub, docs_recipe("in/", dest="out"), name="bare.yaml"))
    assert published_place(bare) == published_place(recipe)  # one spelling per place: the run lock and state
    absolute = parse_recipe(f"dataset: d\nsources: [{{path: 'file://{sub}/in/'}}]\noutput: {{dest: 'file:///o'}}\n")
    assert (absolute.sources[0].path, absolute.output.dest) == (f"file://{sub}/in/", "file:///o")


def test_a_relative_glob_of_folders_keeps_its_slash(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `data/*/` names the folders in data/ (a source reads the files under them); resolved from the recipe's
    # folder it lost its slash and became `data/*`, the files in data/ itself.
    from curation.pipeline import run_recipe
    from tests.helpers import docs_recipe, outputs, write_jsonl, write_recipe

    sub = workdir / "sub"
    write_jsonl(sub / "data" / "2026" / "a.jsonl", [{"text": "alpha"}])
    write_jsonl(sub / "data" / "top.jsonl", [{"text": "top"}])
    (workdir / "elsewhere").mkdir()
    monkeypatch.chdir(workdir / "elsewhere")
    recipe = load_recipe(write_recipe(sub, docs_recipe("data/*/", validation_fraction=0.0)))
    assert recipe.sources[0].path == f"{sub}/data/*/"
    result = run_recipe(recipe)
    assert [row["text"] for row in outputs(Path(result.version_uri))] == ["alpha"]


def test_a_folder_named_like_a_glob_keeps_its_key_without_the_slash(workdir: Path) -> None:
    # Storage reads `exports [2026]/` as the folder of that name, not as a pattern: resolved with its '/', the
    # path (and so the watermark key) differed from the earlier release's, whose next run read everything again.
    from connectors.state import source_keys
    from tests.helpers import docs_recipe, write_jsonl, write_recipe

    sub = workdir / "sub"
    write_jsonl(sub / "exports [2026]" / "a.jsonl", [{"text": "alpha"}])
    recipe = load_recipe(write_recipe(sub, docs_recipe("exports [2026]/", validation_fraction=0.0)))
    assert recipe.sources[0].path == f"{sub.resolve()}/exports [2026]"  # as the earlier release resolved it
    earlier = recipe.sources[0].model_copy(update={"path": str(sub.resolve() / "exports [2026]")})
    assert source_keys(recipe.sources[0]) == source_keys(earlier)
    pattern = load_recipe(write_recipe(sub, docs_recipe("export[s]/", validation_fraction=0.0), name="p.yaml"))
    assert pattern.sources[0].path == f"{sub.resolve()}/export[s]/"  # no folder has that name: a glob of folders


def test_a_relative_glob_the_file_system_cannot_look_at_still_loads(workdir: Path) -> None:
    # Whether `name[1]/` is a folder of that name is asked of the file system at recipe load: a name it refuses
    # (too long) raised OSError there, a traceback from `curation check`, where the listing said it as an input error.
    from tests.helpers import docs_recipe, write_recipe

    long = "x" + "a" * 300 + "[1]/"
    recipe = load_recipe(write_recipe(workdir, docs_recipe(long, validation_fraction=0.0)))
    assert recipe.sources[0].path == f"{workdir.resolve()}/{long}"
