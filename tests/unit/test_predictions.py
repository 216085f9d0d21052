"""Reading predictions files: every error names the line; valid files become judge items."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunix_rt.judges.base import Item
from tunix_rt.errors import PredictionsError, TunixRtError, is_transient
from tunix_rt.quality.predictions import (MAX_ID_LENGTH, check_allowed, local_path,
                                          parse_predictions, read_jsonl, read_predictions)

GOOD = json.dumps({"id": "a", "response": "r", "reference": "1"})


def _lines(*objs: object) -> list[str]:
    return [o if isinstance(o, str) else json.dumps(o) for o in objs]


def _error(lines: list[str], **kwargs: object) -> str:
    with pytest.raises(PredictionsError) as excinfo:
        parse_predictions(lines, uri="preds.jsonl", **kwargs)
    return str(excinfo.value)


@pytest.mark.parametrize("bad, expected", [
    ('{"id": "b", "response": ', "not valid JSON"),
    ("{'id': 'b', 'response': 'r'}", "not valid JSON"),
    ("not json at all", "not valid JSON"),
    ('[{"id": "b", "response": "r"}]', "expected a JSON object, got list"),
    ('"just a string"', "expected a JSON object, got str"),
    ("42", "expected a JSON object, got int"),
    ("null", "expected a JSON object, got NoneType"),
    ('{"response": "r"}', "required field 'id' is missing"),
    ('{"id": null, "response": "r"}', "required field 'id' is missing"),
    ('{"id": 7, "response": "r"}', "field 'id' must be a string, got int"),
    ('{"id": "b"}', "required field 'response' is missing"),
    ('{"id": "b", "response": null}', "required field 'response' is missing"),
    ('{"id": "b", "response": 5}', "field 'response' must be a string, got int"),
    ('{"id": "b", "response": ["r"]}', "field 'response' must be a string, got list"),
    ('{"id": "b", "response": "r", "reference": true}',
     "field 'reference' must be a string, got bool"),
    ('{"id": "b", "response": "r", "reference": {"x": 1}}',
     "field 'reference' must be a string, got dict"),
    ('{"id": "b", "response": "r", "prompt": 3.5}', None),  # numeric prompt: kept as text
    ('{"id": "b", "response": "r", "metadata": [1]}', "field 'metadata' must be an object"),
    ('{"id": "b", "response": "r", "metadata": []}', "field 'metadata' must be an object"),
    ('{"id": "b", "response": "r", "metadata": ""}', "field 'metadata' must be an object"),
    ('{"id": "b", "response": "r", "metadata": false}', "field 'metadata' must be an object"),
    ('{"id": "b", "response": "r", "metadata": 0}', "field 'metadata' must be an object"),
    (json.dumps({"id": "x" * (MAX_ID_LENGTH + 1), "response": "r"}),
     f"field 'id' is longer than {MAX_ID_LENGTH} characters"),
])
def test_a_bad_line_is_named(bad: str, expected: str | None) -> None:
    lines = [GOOD, "", json.dumps({"id": "c", "response": "r"}), bad, GOOD.replace('"a"', '"z"')]
    if expected is None:
        assert len(parse_predictions(lines)) == 4
        return
    message = _error(lines)
    assert message.startswith("preds.jsonl, line 4: "), message
    assert expected in message


def test_duplicate_id_names_both_lines() -> None:
    lines = _lines({"id": "a", "response": "1"}, {"id": "b", "response": "2"}, "",
                   {"id": "a", "response": "3"})
    message = _error(lines)
    assert message == ("preds.jsonl, line 4: duplicate id 'a' (first seen on line 1)")


def test_missing_reference_is_an_error_only_when_required() -> None:
    lines = _lines({"id": "a", "response": "1", "reference": "1"}, {"id": "b", "response": "2"})
    assert [i.reference for i in parse_predictions(lines)] == ["1", None]
    message = _error(lines, require_reference=True)
    assert message.startswith("preds.jsonl, line 2: ")
    assert "'reference' is required" in message
    # null is the same as missing
    lines[1] = json.dumps({"id": "b", "response": "2", "reference": None})
    assert "line 2" in _error(lines, require_reference=True)


def test_blank_lines_are_allowed_and_line_numbers_count_them() -> None:
    lines = ["\n", GOOD + "\n", "   \n", "\t\n", json.dumps({"id": "b", "response": "x"}) + "\n",
             "\n", "{oops\n"]
    assert "line 7" in _error(lines)
    items = parse_predictions(lines[:-1])
    assert [i.id for i in items] == ["a", "b"]


def test_valid_lines_become_items_in_order() -> None:
    lines = _lines({"id": "g-1", "prompt": "2+2?", "response": "<answer>4</answer>",
                    "reference": "4", "metadata": {"split": "test", "n": 1}},
                   {"id": "g-2", "response": "", "metadata": None})
    first, second = parse_predictions(lines)
    assert first == Item(id="g-1", response="<answer>4</answer>", prompt="2+2?", reference="4",
                         metadata={"split": "test", "n": 1})
    assert second == Item(id="g-2", response="", prompt=None, reference=None, metadata={})


@pytest.mark.parametrize("reference, text", [(42, "42"), (-3, "-3"), (2.5, "2.5"),
                                             (0, "0"), (1e21, "1e+21")])
def test_numeric_reference_is_accepted_as_text(reference: float, text: str) -> None:
    lines = _lines({"id": "a", "response": "r", "reference": reference})
    [item] = parse_predictions(lines, require_reference=True)
    assert item.reference == text


@pytest.mark.parametrize("lines", [[], [""], ["\n", "   \n"]])
def test_a_file_without_items_is_an_error(lines: list[str]) -> None:
    assert _error(lines) == "preds.jsonl: the predictions file has no items"


def test_read_predictions_from_a_path_and_a_file_uri(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(GOOD + "\n" + json.dumps({"id": "b", "response": "é ✓"}) + "\n",
                    encoding="utf-8")
    by_path = read_predictions(str(path))
    by_uri = read_predictions(path.as_uri())
    assert by_path == by_uri
    assert [i.id for i in by_uri] == ["a", "b"] and by_uri[1].response == "é ✓"


def test_read_predictions_names_the_uri_and_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(GOOD + "\n" + GOOD + "\n")
    with pytest.raises(PredictionsError) as excinfo:
        read_predictions(path.as_uri())
    assert str(excinfo.value).startswith(f"{path.as_uri()}, line 2: duplicate id 'a'")


@pytest.mark.parametrize("as_uri", [False, True])
def test_missing_file_is_not_found(tmp_path: Path, as_uri: bool) -> None:
    path = tmp_path / "nowhere" / "p.jsonl"
    uri = path.as_uri() if as_uri else str(path)
    with pytest.raises(PredictionsError, match="not found") as excinfo:
        read_predictions(uri)
    assert uri in str(excinfo.value)
    assert not is_transient(excinfo.value)  # retrying a missing file only repeats the error


def test_non_utf8_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"id": "a", "response": "caf\xe9"}\n')
    with pytest.raises(PredictionsError, match="not UTF-8"):
        read_predictions(str(path))


def test_unknown_protocol_is_an_error() -> None:
    with pytest.raises(PredictionsError, match="cannot open predictions URI"):
        read_predictions("nosuchproto://bucket/p.jsonl")


def test_predictions_error_is_a_tunix_rt_error() -> None:
    assert issubclass(PredictionsError, TunixRtError)


# --- the allow-list of webhook URIs, and bounded reading ------------------------------------

@pytest.mark.parametrize("uri, expected", [
    ("/data/p.jsonl", "/data/p.jsonl"),
    ("rel/p.jsonl", "rel/p.jsonl"),
    ("file:///data/job%201/p.jsonl", "/data/job 1/p.jsonl"),
    ("file://localhost/data/p.jsonl", "/data/p.jsonl"),
    ("file:/data/p.jsonl", "/data/p.jsonl"),
    ("FILE:///data/p.jsonl", "/data/p.jsonl"),
    ("local:///data/p.jsonl", "/data/p.jsonl"),
    ("s3://bucket/p.jsonl", None),
    ("simplecache::file:///data/p.jsonl", None),
])
def test_local_path(uri: str, expected: str | None) -> None:
    assert local_path(uri) == expected


@pytest.mark.parametrize("uri", ["file://fileserver/etc/passwd", "file:///data/p%00.jsonl"])
def test_a_file_uri_naming_a_host_or_a_nul_is_refused(uri: str) -> None:
    with pytest.raises(PredictionsError):
        local_path(uri)


def test_check_allowed_compares_resolved_paths_on_component_boundaries(tmp_path: Path) -> None:
    runs = tmp_path / "data" / "runs"
    runs.mkdir(parents=True)
    (runs / "out").symlink_to(tmp_path)
    for prefixes in ([str(runs)], [str(runs) + "/"], [runs.as_uri() + "/"], [runs.as_uri()]):
        check_allowed(str(runs / "j" / "p.jsonl"), prefixes)
        check_allowed((runs / "j" / "p.jsonl").as_uri(), prefixes)
        check_allowed(f"{runs}/j/../p.jsonl", prefixes)
        for bad in (f"{runs}2/p.jsonl", f"{runs}/../p.jsonl", runs.as_uri() + "/../../x",
                    f"{runs}/out/p.jsonl", "/etc/passwd", "s3://bucket/p.jsonl",
                    f"{runs}/p.jsonl\n"):
            with pytest.raises(PredictionsError, match="TUNIX_RT_PREDICTIONS_ALLOW|control"):
                check_allowed(bad, prefixes)


@pytest.mark.parametrize("prefix", ["s3://team-bucket/", "s3://team-bucket", "S3://team-bucket/"])
def test_check_allowed_for_remote_prefixes(prefix: str) -> None:
    check_allowed("s3://team-bucket/runs/p.jsonl", [prefix])
    for bad in ("s3://team-bucket-2/p.jsonl", "s3://team-bucket/a/../../other/p.jsonl",
                "s3://team-bucket/a/%2e%2e/b", "s3://team-bucket/a::ftp://host/p.jsonl",
                "gs://team-bucket/p.jsonl", "/team-bucket/p.jsonl", "ftp://host/p.jsonl"):
        with pytest.raises(PredictionsError):
            check_allowed(bad, [prefix])


def test_a_relative_path_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PredictionsError, match="relative path"):
        check_allowed("runs/p.jsonl", [str(tmp_path)])


def test_no_prefixes_allow_nothing(tmp_path: Path) -> None:
    with pytest.raises(PredictionsError):
        check_allowed(str(tmp_path / "p.jsonl"), [])


def test_reading_counts_bytes_and_line_lengths(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"a\r\nbb\n\n" + b"c" * 10)
    assert read_jsonl(str(path), list, max_bytes=17, max_line_bytes=10) == [
        "a\n", "bb\n", "\n", "c" * 10 + "\n"]
    with pytest.raises(PredictionsError, match="larger than 16 bytes"):
        read_jsonl(str(path), list, max_bytes=16, max_line_bytes=10)
    with pytest.raises(PredictionsError, match=r"line 4: longer than 9 bytes"):
        read_jsonl(str(path), list, max_bytes=100, max_line_bytes=9)
    big = tmp_path / "big.jsonl"
    big.write_bytes(b"x" * 200_000 + b"\n")  # longer than a read's chunk
    with pytest.raises(PredictionsError, match=r"line 1: longer than 100000 bytes"):
        read_jsonl(str(big), list, max_bytes=10**6, max_line_bytes=100_000)


def test_non_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(GOOD.encode() + b'\n{"id": "b", "response": "caf\xe9"}\n')
    with pytest.raises(PredictionsError, match=r"line 2: not UTF-8 text \(.* at byte 29"):
        read_predictions(str(path))


@pytest.mark.parametrize("field", ["id", "response", "prompt", "reference"])
def test_a_nul_in_a_stored_field_is_refused_with_the_line(field: str) -> None:
    obj = {"id": "b", "response": "r", "prompt": "p", "reference": "1", field: "x\u0000y"}
    message = _error(_lines(GOOD, obj))
    assert message.startswith(f"preds.jsonl, line 2: field '{field}' contains a NUL")
    assert "\u0000" not in message


@pytest.mark.parametrize("field", ["id", "response", "prompt", "reference", "metadata"])
def test_a_lone_surrogate_is_refused_with_the_line(field: str) -> None:
    """JSON can escape half a surrogate pair; that is no text any database stores (it
    failed as an encoding error when the verdicts were written)."""
    obj = {"id": "b", "response": "r", "prompt": "p", "reference": "1",
           field: {"k": ["\ud800"]} if field == "metadata" else "x\udc00y"}
    message = _error(_lines(GOOD, obj))
    assert message.startswith(f"preds.jsonl, line 2: field '{field}' contains a lone surrogate")
    pair = {"id": "b", "response": "\U0001f600"}  # escaped as a pair: text, read as such
    assert parse_predictions(_lines(GOOD, pair))[1].response == "\U0001f600"


def test_deep_nesting_is_not_valid_json_on_its_line() -> None:
    assert (_error([GOOD, "[" * 100_000])
            == "preds.jsonl, line 2: not valid JSON (nested too deeply)")
