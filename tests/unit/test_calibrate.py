"""Judge calibration against human labels: accuracy, Cohen's kappa, the labels file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.openai_server import Reply, fake_openai
from tunix_rt.cli.judges import calibrate_command
from tunix_rt.quality.calibrate import Confusion, accuracy, calibrate, cohen_kappa, read_labels
from tunix_rt.errors import InvalidInputError


def write_labels(path: Path, rows: list[dict[str, Any] | str]) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def row(i: int, answer: str, reference: str, label: Any) -> dict[str, Any]:
    return {"id": f"i{i}", "prompt": f"What is {reference}?",
            "response": f"<reasoning>r</reasoning><answer>{answer}</answer>" if answer else "",
            "reference": reference, "metadata": {}, "label": label}


# --- the statistics, against hand-computed values -------------------------------------------

def test_kappa_known_table() -> None:
    # p_o = 35/50 = 0.7; marginals 25/50 (judge) and 30/50 (labels):
    # p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    c = Confusion(tp=20, fp=5, tn=15, fn=10)
    assert accuracy(c) == 0.7
    assert cohen_kappa(c) == pytest.approx(0.4, abs=1e-15)


def test_kappa_perfect_chance_and_worse() -> None:
    assert cohen_kappa(Confusion(tp=3, tn=2)) == 1.0
    assert accuracy(Confusion(tp=3, tn=2)) == 1.0
    assert cohen_kappa(Confusion(tp=1, fp=1, tn=1, fn=1)) == 0.0  # agreement at chance
    assert accuracy(Confusion(tp=1, fp=1, tn=1, fn=1)) == 0.5
    assert cohen_kappa(Confusion(fp=2, fn=2)) == -1.0  # always the opposite verdict
    assert cohen_kappa(Confusion(tp=2, fp=2, tn=0, fn=0)) == 0.0  # judge passes everything


def test_kappa_degenerate_and_empty() -> None:
    # Both raters say "pass" to every item: p_e = 1, kappa defined as 1.0 (p_o = 1).
    assert cohen_kappa(Confusion(tp=4)) == 1.0
    assert cohen_kappa(Confusion(tn=4)) == 1.0
    assert cohen_kappa(Confusion()) is None and accuracy(Confusion()) is None


def test_confusion_of_pairs() -> None:
    c = Confusion.of([(True, True), (True, False), (False, False), (False, True), (True, True)])
    assert c.as_dict() == {"tp": 2, "fp": 1, "tn": 1, "fn": 1} and c.n == 5


# --- exact_match on a small labels file ------------------------------------------------------

def exact_match_file(tmp_path: Path) -> str:
    return write_labels(tmp_path / "labels.jsonl", [
        row(0, "4", "4", True),    # judge pass, label pass: tp
        row(1, "5", "5", 1),       # tp
        row(2, "6", "6", False),   # judge pass, label fail: fp
        row(3, "7", "8", 0),       # judge fail, label fail: tn
        "",                        # blank lines are allowed
        row(4, "9", "10", True),   # judge fail, label pass: fn
        {**row(5, "11", "11", True), "reference": None},  # no reference: unscored, not compared
        row(6, "", "12", True),    # empty response: a wrong answer (judge fail, label pass): fn
    ])


def test_calibrate_exact_match(tmp_path: Path) -> None:
    result = calibrate("exact_match", exact_match_file(tmp_path))
    assert (result.judge, result.judge_version) == ("exact_match", "1.0")
    assert (result.n, result.n_scored, result.n_unscored) == (7, 6, 1)
    assert result.confusion == {"tp": 2, "fp": 1, "tn": 1, "fn": 2}
    # p_o = 3/6; judge passes 3/6, labels pass 4/6: p_e = 12/36 + 6/36 = 1/2; kappa = 0
    assert result.accuracy == 0.5
    assert result.cohen_kappa == pytest.approx(0.0, abs=1e-15)


def test_calibrate_command_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = exact_match_file(tmp_path)
    assert calibrate_command("exact_match", path, "json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_scored"] == 6 and doc["confusion"]["fn"] == 2 and doc["accuracy"] == 0.5
    assert calibrate_command("exact_match", path, "table") == 0
    out = capsys.readouterr().out
    assert "cohen_kappa" in out and "0.0000" in out and '"tp": 2' in out
    with pytest.raises(InvalidInputError, match="unknown format"):
        calibrate_command("exact_match", path, "csv")


# --- bad labels files ------------------------------------------------------------------------

@pytest.mark.parametrize(("bad", "message"), [
    ({k: v for k, v in row(1, "1", "1", True).items() if k != "label"},
     r"line 3: required field 'label' is missing"),
    (row(1, "1", "1", None), r"line 3: required field 'label' is missing"),
    (row(1, "1", "1", "yes"), r'line 3: invalid label "yes"'),
    (row(1, "1", "1", 2), r"line 3: invalid label 2"),
    (row(1, "1", "1", 0.5), r"line 3: invalid label 0.5"),
    ("{not json", r"line 3: not valid JSON"),
    ({"id": "i1", "label": True}, r"line 3: required field 'response' is missing"),
])
def test_bad_label_line(tmp_path: Path, bad: Any, message: str) -> None:
    path = write_labels(tmp_path / "bad.jsonl", [row(0, "1", "1", True), "", bad])
    with pytest.raises(InvalidInputError, match=message):
        read_labels(path)
    with pytest.raises(InvalidInputError, match=message):
        calibrate("exact_match", path)


def test_missing_and_empty_labels_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="labels file not found"):
        calibrate("exact_match", str(tmp_path / "nope.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InvalidInputError, match="no items"):
        calibrate("exact_match", str(empty))


# --- the llm judge, against the fake OpenAI server, with the database cache ------------------

def grade(request: dict[str, Any], attempt: int) -> Reply:
    """Passes a response whose answer is even."""
    text = request["messages"][-1]["content"]
    answer = int(text.split("<answer>")[1].split("<")[0])
    return Reply.json(0.9 if answer % 2 == 0 else 0.1, f"answer {answer}")


def test_calibrate_llm_judge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture) -> None:
    from tunix_rt.store import db

    path = write_labels(tmp_path / "labels.jsonl", [
        row(0, "2", "2", True),    # judge pass: tp
        row(1, "4", "4", True),    # tp
        row(2, "3", "3", False),   # judge fail: tn
        row(3, "5", "5", True),    # fn
        row(4, "6", "6", False),   # fp
        row(5, "7", "7", 0),       # tn
    ])
    monkeypatch.setenv("TUNIX_RT_DATABASE_URL", f"sqlite:///{tmp_path / 'cache.db'}")
    db.dispose_engines()
    try:
        with fake_openai(grade) as server:
            monkeypatch.setenv("TUNIX_RT_LLM_BASE_URL", server.base_url)
            monkeypatch.setenv("TUNIX_RT_LLM_MODEL", "judge-model")
            first = calibrate("llm", path)
            assert server.calls == 6
            assert calibrate_command("llm", path, "json") == 0  # verdicts from the DB cache
            assert server.calls == 6
        second = json.loads(capsys.readouterr().out)
    finally:
        db.dispose_engines()
    assert (first.judge, first.n, first.n_scored, first.n_unscored) == ("llm", 6, 6, 0)
    assert first.confusion == {"tp": 2, "fp": 1, "tn": 2, "fn": 1}
    # p_o = 4/6; marginals 3/6 (judge) and 3/6 (labels): p_e = 1/2; kappa = (1/6) / (1/2) = 1/3
    assert first.accuracy == pytest.approx(2 / 3)
    assert first.cohen_kappa == pytest.approx(1 / 3, abs=1e-15)
    assert second == first.to_dict()


def test_llm_judge_not_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunix_rt.store import db

    monkeypatch.setenv("TUNIX_RT_DATABASE_URL", f"sqlite:///{tmp_path / 'cache.db'}")
    monkeypatch.delenv("TUNIX_RT_LLM_BASE_URL", raising=False)
    monkeypatch.delenv("TUNIX_RT_LLM_MODEL", raising=False)
    db.dispose_engines()
    try:
        with pytest.raises(InvalidInputError, match="TUNIX_RT_LLM_BASE_URL"):
            calibrate("llm", exact_match_file(tmp_path))
    finally:
        db.dispose_engines()
