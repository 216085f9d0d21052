"""Unit tests for the built-in judges, their text helpers and the judge registry."""

from __future__ import annotations

import pytest

from tunix_rt.judges import (Item, JudgeRegistryError, ScoringContext, Verdict, get_judge, judge_spec,
                             list_judges)
from tunix_rt.judges._text import extract_answer, normalize_answer
from tunix_rt.judges.base import Ledger, costs, samples
from tunix_rt.judges.registry import register_judge, unregister_judge

CTX = ScoringContext(run_id="run-1", dataset="gsm8k", model="m")
BUILT_INS = {"exact_match": "1.0", "format": "1.0", "mock": "1.0"}


def score_one(judge_name: str, response: str, reference: str | None = None,
              **kwargs: object) -> Verdict:
    [verdict] = get_judge(judge_name, **kwargs).score(
        [Item(id="i1", response=response, reference=reference)], CTX)
    return verdict


# --- extract_answer ---------------------------------------------------------------------

@pytest.mark.parametrize("response, expected", [
    # <answer> tags, last one wins, and they beat every other format
    ("<reasoning>r</reasoning><answer>42</answer>", "42"),
    ("<answer> 7 </answer> then <answer>\n8\n</answer>", "8"),
    ("\\boxed{3} but <answer>5</answer>", "5"),
    ("The answer is 1. <answer>2</answer> #### 3", "2"),
    # \boxed, nested braces, last one wins, beats ####
    ("so \\boxed{17}", "17"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\sqrt{\\frac{a}{b}}} done", "\\sqrt{\\frac{a}{b}}"),
    ("\\boxed{1} and then \\boxed{2}", "2"),
    ("#### 9\nfinally \\boxed{10}", "10"),
    ("\\boxed{4} and a broken \\boxed{5", "4"),
    # GSM8K ####, last one wins, beats phrases
    ("Janet has 3 eggs.\n#### 42", "42"),
    ("#### 1\n#### 2", "2"),
    ("The answer is 5.\n#### 6", "6"),
    ("#### 1,234", "1,234"),
    # phrases, case-insensitive, last one wins
    ("The answer is 42", "42"),
    ("So the final answer is: $42$", "$42$"),
    ("Answer: 42", "42"),
    ("ANSWER: foo bar", "foo bar"),
    ("the answer is 3.5. So we are done.", "3.5"),
    ("The answer is 1.\nWait, no. The answer is 2.", "2"),
    ("Answer: 7\nand the answer is", "7"),
    ("**Final Answer:** 42", "42"),
    # nothing to find
    ("42", None),
    ("I have no idea.", None),
    ("", None),
    ("<answer>unclosed", None),
])
def test_extract_answer(response: str, expected: str | None) -> None:
    assert extract_answer(response) == expected


# --- normalize_answer -------------------------------------------------------------------

@pytest.mark.parametrize("left, right", [
    ("42.0", "42"),
    ("42.00", "42"),
    ("+42", "42"),
    ("042", "42"),
    ("0.50", "0.5"),
    (".5", "0.5"),
    ("-0.0", "0"),
    ("100", "100"),
    ("1,234", "1234"),
    ("1,234,567.10", "1234567.1"),
    ("42.", "42"),
    ("42!", "42"),
    ("42;", "42"),
    ("$42$", "42"),
    ("$5", "5"),
    ("**42**", "42"),
    ("**$42$.**", "42"),
    ("42**", "42"),  # what "**The answer is 42**" leaves behind
    ("  Hello   World. ", "hello world"),
    ("PARIS", "paris"),
    ("50.0%", "50%"),
    ("42.0 apples", "42 apples"),
])
def test_normalize_equal(left: str, right: str) -> None:
    assert normalize_answer(left) == normalize_answer(right)


@pytest.mark.parametrize("text, expected", [
    ("42.0", "42"),
    ("1,234", "1234"),
    ("0.50", "0.5"),
    ("50%", "50%"),
    ("1,23", "1,23"),  # not a thousands grouping, so not a number
    ("\\frac{1}{2}", "\\frac{1}{2}"),
    ("Hello,  World!", "hello, world"),
    ("", ""),
])
def test_normalize_exact(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


@pytest.mark.parametrize("left, right", [("42", "43"), ("0.5", "5"), ("50%", "50"), ("a", "b")])
def test_normalize_keeps_different_answers_apart(left: str, right: str) -> None:
    assert normalize_answer(left) != normalize_answer(right)


# --- exact_match ------------------------------------------------------------------------

def test_exact_match_match() -> None:
    v = score_one("exact_match", "Step by step... #### 42.0", reference="42")
    assert (v.score, v.passed) == (1.0, True)
    assert v.raw == {"extracted": "42", "reference": "42"}
    assert v.rationale == "extracted '42' == reference '42'"
    assert (v.judge, v.judge_version) == ("exact_match", "1.0")


def test_exact_match_mismatch() -> None:
    v = score_one("exact_match", "The answer is 41.", reference="42")
    assert (v.score, v.passed) == (0.0, False)
    assert v.raw == {"extracted": "41", "reference": "42"}
    assert "!=" in v.rationale


def test_exact_match_bare_number_falls_back_to_whole_response() -> None:
    v = score_one("exact_match", "  1,234\n", reference="1234")
    assert (v.score, v.passed) == (1.0, True)
    assert v.raw == {"extracted": "1234", "reference": "1234"}


def test_exact_match_extracts_from_gsm8k_reference() -> None:
    v = score_one("exact_match", "<answer>$18</answer>",
                  reference="She sells 16 - 3 - 4 = 9 eggs, 9 * 2 = 18.\n#### 18")
    assert v.passed is True
    assert v.raw == {"extracted": "18", "reference": "18"}


@pytest.mark.parametrize("reference", [None, "", "   "])
def test_exact_match_missing_reference_is_unscored(reference: str | None) -> None:
    v = score_one("exact_match", "#### 42", reference=reference)
    assert not v.scored
    assert (v.score, v.passed) == (None, None)
    assert v.rationale == "item has no reference; exact_match needs one"
    assert (v.judge, v.judge_version) == ("exact_match", "1.0")


@pytest.mark.parametrize("response", ["", "  \n\t "])
def test_exact_match_empty_response_is_wrong(response: str) -> None:
    v = score_one("exact_match", response, reference="42")
    assert v.scored  # the candidate's failure, not the judge's
    assert (v.score, v.passed, v.rationale) == (0.0, False, "empty response")
    assert (v.judge, v.judge_version) == ("exact_match", "1.0")


@pytest.mark.parametrize("response, extracted", [
    ("I have no idea.", "i have no idea"),       # no answer stated: the whole reply, wrong
    ("forty-two", "forty-two"),
    ("The answer is", "the answer is"),          # a phrase with nothing after it
    ("<answer>  </answer>", ""),                 # an empty answer block
])
def test_exact_match_no_extractable_answer_is_wrong(response: str, extracted: str) -> None:
    v = score_one("exact_match", response, reference="42")
    assert (v.score, v.passed) == (0.0, False)
    assert v.raw == {"extracted": extracted, "reference": "42"}


def test_exact_match_no_extractable_answer_compares_the_whole_reply() -> None:
    assert score_one("exact_match", "Paris.", reference="paris").passed is True
    assert score_one("exact_match", "It is Paris.", reference="paris").passed is False


@pytest.mark.parametrize("response", ["", "   "])
def test_exact_match_missing_reference_beats_an_empty_response(response: str) -> None:
    # Unscored whatever the response: else only the failures of such items would count.
    v = score_one("exact_match", response, reference=None)
    assert not v.scored and "no reference" in v.rationale


@pytest.mark.parametrize("reference", ["$", "**.**"])
def test_exact_match_reference_with_no_answer_is_unscored(reference: str) -> None:
    # An empty answer must not "match" a reference that normalizes to nothing.
    v = score_one("exact_match", "<answer></answer>", reference=reference)
    assert not v.scored and "no answer left after normalization" in v.rationale


# --- Verdict ----------------------------------------------------------------------------

def test_verdict_wrong_and_unscored() -> None:
    wrong = Verdict.wrong("i", "empty response", judge="j", judge_version="2", raw={"a": 1})
    assert (wrong.score, wrong.passed, wrong.rationale, wrong.scored) == (0.0, False,
                                                                         "empty response", True)
    assert (wrong.judge, wrong.judge_version, wrong.raw) == ("j", "2", {"a": 1})
    unscored = Verdict.unscored("i", "no reference", judge="j", judge_version="2")
    assert (unscored.score, unscored.passed, unscored.scored) == (None, None, False)


# --- format -----------------------------------------------------------------------------

@pytest.mark.parametrize("response", [
    "<reasoning>2 + 2 = 4</reasoning><answer>4</answer>",
    "\n  <reasoning>\nthink\n</reasoning>\n\n<answer> 4 </answer>\n",
])
def test_format_pass(response: str) -> None:
    v = score_one("format", response)
    assert (v.score, v.passed) == (1.0, True)
    assert (v.judge, v.judge_version) == ("format", "1.0")


@pytest.mark.parametrize("response, reason", [
    ("", "empty response"),
    ("   ", "empty response"),
    ("just 4", "missing <reasoning> block"),
    ("<answer>4</answer>", "missing <reasoning> block"),
    ("<reasoning>think</reasoning>", "missing <answer> block"),
    ("<reasoning>think</reasoning>4", "missing <answer> block"),
    ("<reasoning>a</reasoning><reasoning>b</reasoning><answer>4</answer>",
     "more than one <reasoning> block"),
    ("<reasoning>a</reasoning><answer>4</answer><answer>5</answer>",
     "more than one <answer> block"),
    ("<reasoning>a<answer>4</answer>", "unclosed <reasoning> block"),
    ("<reasoning>a</reasoning><answer>4", "unclosed <answer> block"),
    ("<reasoning>a</reasoning>4</answer>", "</answer> without a matching <answer>"),
    ("<answer>4</answer><reasoning>a</reasoning>",
     "<answer> block comes before the <reasoning> block"),
    ("<reasoning>a<answer>4</answer></reasoning>", "tags are nested or out of order"),
    ("Sure! <reasoning>a</reasoning><answer>4</answer>", "text outside the tags"),
    ("<reasoning>a</reasoning> so <answer>4</answer>", "text outside the tags"),
    ("<reasoning>a</reasoning><answer>4</answer> Hope this helps", "text outside the tags"),
    ("<reasoning>  </reasoning><answer>4</answer>", "empty <reasoning> block"),
    ("<reasoning>a</reasoning><answer>\n</answer>", "empty <answer> block"),
])
def test_format_failures_name_the_problem(response: str, reason: str) -> None:
    v = score_one("format", response)
    assert v.scored  # a malformed trace is a 0, never unscored
    assert (v.score, v.passed) == (0.0, False)
    assert reason in v.rationale


def test_format_lists_every_content_problem() -> None:
    v = score_one("format", "x<reasoning></reasoning><answer></answer>")
    assert v.rationale == "text outside the tags; empty <reasoning> block; empty <answer> block"


# --- mock -------------------------------------------------------------------------------

ITEMS = [Item(id=f"item-{i}", response="r") for i in range(2000)]


def test_mock_is_deterministic() -> None:
    first = get_judge("mock").score(ITEMS[:200], CTX)
    second = get_judge("mock").score(ITEMS[:200], ScoringContext(run_id="run-1"))
    assert first == second
    assert all(v.score in (0.0, 1.0) and v.passed == (v.score == 1.0) for v in first)
    assert all((v.judge, v.judge_version) == ("mock", "1.0") for v in first)


def test_mock_differs_between_runs() -> None:
    judge = get_judge("mock")
    a = [v.passed for v in judge.score(ITEMS[:200], ScoringContext(run_id="run-a"))]
    b = [v.passed for v in judge.score(ITEMS[:200], ScoringContext(run_id="run-b"))]
    assert a != b
    # independent coin flips agree about half the time, not nearly always
    assert sum(x == y for x, y in zip(a, b)) < 150


@pytest.mark.parametrize("pass_rate", [0.0, 0.1, 0.5, 0.8, 1.0])
def test_mock_pass_rate(pass_rate: float) -> None:
    verdicts = get_judge("mock", pass_rate=pass_rate).score(ITEMS, CTX)
    passed = sum(v.passed for v in verdicts) / len(verdicts)
    mean = sum(v.score for v in verdicts) / len(verdicts)
    assert passed == pytest.approx(pass_rate, abs=0.05)
    assert mean == passed  # binary scores: the mean is the pass rate


@pytest.mark.parametrize("response", ["", " \n "])
def test_mock_empty_response_is_wrong_even_when_everything_passes(response: str) -> None:
    v = score_one("mock", response, pass_rate=1.0)
    assert (v.score, v.passed, v.rationale) == (0.0, False, "empty response")
    assert score_one("mock", "x", pass_rate=1.0).passed is True


@pytest.mark.parametrize("pass_rate", [-0.1, 1.5])
def test_mock_rejects_bad_pass_rate(pass_rate: float) -> None:
    with pytest.raises(ValueError, match="pass_rate"):
        get_judge("mock", pass_rate=pass_rate)


# --- every built-in judge ---------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(BUILT_INS))
def test_one_verdict_per_item_in_order(name: str) -> None:
    items = [Item(id=f"q{i}", response=r, reference=ref) for i, (r, ref) in enumerate([
        ("<reasoning>a</reasoning><answer>1</answer>", "1"),
        ("", "2"),
        ("#### 3", None),
        ("nonsense", "4"),
        ("The answer is 5", "5"),
    ])]
    judge = get_judge(name)
    verdicts = judge.score(items, CTX)
    assert [v.item_id for v in verdicts] == [item.id for item in items]
    assert all((v.judge, v.judge_version) == (judge.name, judge.version) for v in verdicts)
    assert judge.score([], CTX) == []


@pytest.mark.parametrize("name", sorted(BUILT_INS))
@pytest.mark.parametrize("response", ["", " \t\n "])
def test_every_built_in_scores_an_empty_response_as_wrong(name: str, response: str) -> None:
    v = score_one(name, response, reference="4")
    assert v.scored and (v.score, v.passed) == (0.0, False)
    assert "empty response" in v.rationale


# --- registry ---------------------------------------------------------------------------

def test_list_judges_includes_built_ins_with_versions() -> None:
    specs = {spec.name: spec for spec in list_judges()}
    for name, version in BUILT_INS.items():
        assert specs[name].version == version
    assert specs["exact_match"].requires_reference is True
    assert specs["format"].requires_reference is False
    assert specs["mock"].requires_reference is False
    names = [spec.name for spec in list_judges()]
    assert names == sorted(names)


@pytest.mark.parametrize("name", sorted(BUILT_INS))
def test_built_in_judge_attributes_match_registry(name: str) -> None:
    judge = get_judge(name)
    assert (judge.name, judge.version) == (name, BUILT_INS[name])


def test_get_judge_unknown_name_lists_known_ones() -> None:
    with pytest.raises(JudgeRegistryError, match="no_such_judge") as excinfo:
        get_judge("no_such_judge")
    assert "exact_match" in str(excinfo.value)
    assert "mock" in str(excinfo.value)


def test_registering_a_duplicate_name_raises() -> None:
    name = "test_judges_tmp_duplicate"

    def factory():  # the registry never calls it here
        raise AssertionError

    try:
        register_judge(name, version="0.1")(factory)
        with pytest.raises(JudgeRegistryError, match="already registered"):
            register_judge(name, version="0.2")(factory)
    finally:
        unregister_judge(name)
    with pytest.raises(JudgeRegistryError):
        get_judge(name)


def test_reregistering_a_built_in_raises_and_keeps_it() -> None:
    with pytest.raises(JudgeRegistryError, match="mock"):
        register_judge("mock", version="9.9")(lambda: None)
    assert get_judge("mock").version == "1.0"


# --- capabilities -----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(BUILT_INS))
def test_deterministic_built_ins_declare_no_capability(name: str) -> None:
    spec = judge_spec(name)
    assert spec.capabilities() == {"caches": False, "samples": False, "costs": False}
    assert spec.cache_parameter is None
    judge = spec.build()
    assert not samples(judge) and not costs(judge)


class _Sampler:
    name, version, requires_reference = "test_judges_sampler", "1", False
    ledger = Ledger()

    def score(self, items, context):  # noqa: ANN001, ANN201
        return [Verdict(i.id, 1.0, True, "", self.name, self.version) for i in items]

    def variant(self, seed_offset: int) -> _Sampler:
        return self


def test_capabilities_are_derived_from_the_factory() -> None:
    def annotated(cache=None) -> _Sampler:  # noqa: ANN001
        return _Sampler()

    def bare():  # noqa: ANN202 - nothing to derive from
        return _Sampler()

    try:
        register_judge("test_judges_derived", version="1")(annotated)
        spec = judge_spec("test_judges_derived")
        assert spec.capabilities() == {"caches": True, "samples": True, "costs": True}
        assert spec.cache_parameter == "cache"
        assert samples(spec.build()) and costs(spec.build())

        register_judge("test_judges_declared", version="1", samples=True, costs=True)(bare)
        assert judge_spec("test_judges_declared").capabilities() == {
            "caches": False, "samples": True, "costs": True}
        assert judge_spec("test_judges_declared").build().name == "test_judges_sampler"
    finally:
        unregister_judge("test_judges_derived")
        unregister_judge("test_judges_declared")


def test_a_judge_that_is_not_what_it_says_is_refused() -> None:
    def bare():  # noqa: ANN202
        return _Sampler()

    try:
        register_judge("test_judges_silent", version="1")(bare)  # samples and costs, undeclared
        with pytest.raises(JudgeRegistryError, match="samples=False but the judge it built has a "
                                                     "variant"):
            get_judge("test_judges_silent")
        register_judge("test_judges_boast", version="1", samples=True)(
            lambda: get_judge("exact_match"))
        with pytest.raises(JudgeRegistryError, match="samples=True but the judge it built has no"):
            get_judge("test_judges_boast")
        with pytest.raises(JudgeRegistryError, match="caches=True but its factory takes none"):
            register_judge("test_judges_nocache", version="1", caches=True)(bare)
    finally:
        for name in ("test_judges_silent", "test_judges_boast", "test_judges_nocache"):
            unregister_judge(name)


def test_ledger_total_sums_each_counter() -> None:
    total = Ledger.total([Ledger(calls=2, cache_hits=1, retries=1, tokens_in=10, tokens_out=3),
                          Ledger(calls=1, tokens_in=5)])
    assert total.as_dict() == {"calls": 3, "cache_hits": 1, "retries": 1, "tokens_in": 15,
                               "tokens_out": 3}
    assert Ledger.total([]) == Ledger()


@pytest.mark.parametrize("text", ["0", "7", "42", "100", "1000000", "12345678901234567890",
                                  "123456789012345678901234567890", "042", "00", "٤٢"])
def test_plain_integers_take_a_shortcut_to_the_same_form(text: str) -> None:
    """The shortcut for plain integers gives the Decimal form the full path gives."""
    from decimal import Decimal

    value = Decimal(text)
    assert normalize_answer(text) == ("0" if value == 0 else format(value.normalize(), "f"))
