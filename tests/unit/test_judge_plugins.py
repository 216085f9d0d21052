"""Judges from elsewhere: entry-point plugins and composites defined in configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunix_rt.judges import Item, ScoringContext, get_judge, judge_spec
from tunix_rt.judges.base import costs, samples
from tunix_rt.judges.composite import register_composites
from tunix_rt.judges.llm import MemoryCache
from tunix_rt.judges.registry import JudgeRegistryError, unregister_judge
from tests.fakes.openai_server import Reply, fake_openai

BIN = Path(sys.executable).parent / "tunix-rt"
CONTEXT = ScoringContext(run_id="r")


def _plugin_site(tmp_path: Path, body: str) -> Path:
    """A real installed distribution (dist-info with entry_points.txt) on a path."""
    site = tmp_path / "site"
    (site / "acme_judges-1.0.dist-info").mkdir(parents=True)
    (site / "acme_judges-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: acme-judges\nVersion: 1.0\n")
    (site / "acme_judges-1.0.dist-info" / "entry_points.txt").write_text(
        "[tunix_rt.judges]\nlength = acme_judges:length_judge\nbroken = acme_judges:nothing\n")
    (site / "acme_judges.py").write_text(body)
    return site


PLUGIN = '''
from tunix_rt.judges import Verdict

class Length:
    name, version, requires_reference = "length", "2.1", False
    def score(self, items, context):
        return [Verdict(i.id, min(1.0, len(i.response) / 10), len(i.response) >= 5, "length",
                        self.name, self.version) for i in items]

def length_judge():
    """responses of at least five characters pass"""
    return Length()
length_judge.version = "2.1"
'''


def test_an_entry_point_plugin_appears_in_judges_list(tmp_path: Path) -> None:
    site = _plugin_site(tmp_path, PLUGIN)
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run([str(BIN), "judges", "list", "--format", "json"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    judges = {j["name"]: j for j in json.loads(result.stdout)["judges"]}
    assert judges["length"]["version"] == "2.1"
    assert "five characters" in judges["length"]["description"]
    # Capabilities are shown: the plugin's are derived (none); the llm judge has all three.
    assert {k: judges["length"][k] for k in ("caches", "samples", "costs")} == {
        "caches": False, "samples": False, "costs": False}
    assert {k: judges["llm"][k] for k in ("caches", "samples", "costs")} == {
        "caches": True, "samples": True, "costs": True}
    # The broken entry point is reported, and the others still load.
    assert "judge plugin 'broken'" in result.stderr


def _items() -> list[Item]:
    return [Item("a", "<reasoning>x</reasoning><answer>4</answer>", reference="4"),
            Item("b", "<answer>5</answer>", reference="4"),
            Item("c", "4", reference="4")]


def test_majority_and_weighted_composites() -> None:
    names = register_composites({
        "vote": {"type": "majority", "judges": ["exact_match", "format", "mock"]},
        "blend": {"type": "weighted", "judges": {"exact_match": 3, "format": 1}}})
    try:
        vote, blend = get_judge("vote"), get_judge("blend")
        assert vote.version.startswith("c-") and vote.requires_reference
        verdicts = {v.item_id: v for v in blend.score(_items(), CONTEXT)}
        assert verdicts["a"].score == 1.0 and verdicts["a"].passed
        assert verdicts["b"].score == 0.0  # wrong answer, and not the trace format
        assert verdicts["c"].score == 0.75 and verdicts["c"].passed
        voted = {v.item_id: v for v in vote.score(_items(), CONTEXT)}
        assert voted["a"].passed and not voted["b"].passed
        assert set(voted["a"].raw) == {"exact_match", "format", "mock"}
    finally:
        for name in names:
            unregister_judge(name)


def test_a_members_wrong_answer_counts_as_a_scored_zero() -> None:
    names = register_composites({
        "vote2": {"type": "majority", "judges": ["exact_match", "format", "mock"]},
        "blend2": {"type": "weighted", "judges": {"exact_match": 3, "format": 1}}})
    items = [Item("empty", "", reference="4"), Item("blank", "  \n", reference="4"),
             Item("noref", "", reference=None)]
    try:
        voted = {v.item_id: v for v in get_judge("vote2").score(items, CONTEXT)}
        blended = {v.item_id: v for v in get_judge("blend2").score(items, CONTEXT)}
    finally:
        for name in names:
            unregister_judge(name)
    for item_id in ("empty", "blank"):  # every member calls it wrong: 0 of 3 votes, a 0 mean
        assert (voted[item_id].score, voted[item_id].passed) == (0.0, False)
        assert voted[item_id].rationale == "0 of 3 judges passed it"
        assert (blended[item_id].score, blended[item_id].passed) == (0.0, False)
        assert blended[item_id].rationale == "weighted mean of 2 judges"
    # Without a reference exact_match cannot judge: left out, the others' zeros remain.
    assert (voted["noref"].score, voted["noref"].rationale) == (0.0, "0 of 2 judges passed it")
    assert blended["noref"].score == 0.0 and "renormalized without exact_match" in \
        blended["noref"].rationale


def test_a_composite_is_what_its_members_are() -> None:
    names = register_composites({
        "plain": {"type": "weighted", "judges": {"exact_match": 1, "format": 1}},
        "graded": {"type": "majority", "judges": ["exact_match", "format", "llm"]}})
    try:
        plain, graded = judge_spec("plain"), judge_spec("graded")
        assert plain.capabilities() == {"caches": False, "samples": False, "costs": False}
        assert plain.cache_parameter is None
        assert graded.capabilities() == {"caches": True, "samples": True, "costs": True}
        assert graded.cache_parameter == "cache_factory"
        judge = plain.build()
        assert not samples(judge) and not costs(judge)  # no variant, no ledger to report
        with pytest.raises(AttributeError, match="no member that samples"):
            judge.variant  # noqa: B018
    finally:
        for name in names:
            unregister_judge(name)


def test_a_composite_gives_each_caching_member_its_own_cache_and_sums_their_ledgers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    register_composites({"graded2": {"type": "weighted",
                                             "judges": {"exact_match": 1, "llm": 1}}})
    caches: dict[tuple[str, str], MemoryCache] = {}

    def cache_factory(name: str, version: str) -> MemoryCache:
        return caches.setdefault((name, version), MemoryCache())

    items = [Item("a", "#### 4", prompt="What is 2 + 2?", reference="4"),
             Item("b", "#### 5", prompt="What is 2 + 3?", reference="4"),
             Item("c", "", prompt="What is 2 + 4?", reference="6")]
    try:
        with fake_openai(Reply.json(1.0, "right")) as server:
            monkeypatch.setenv("TUNIX_RT_LLM_BASE_URL", server.base_url)
            monkeypatch.setenv("TUNIX_RT_LLM_MODEL", "judge-model")
            first_judge = get_judge("graded2", cache_factory=cache_factory)
            first = first_judge.score(items, CONTEXT)
            first_cost = first_judge.ledger.as_dict()
            again_judge = get_judge("graded2", cache_factory=cache_factory)
            again = again_judge.score(items, CONTEXT)
            calls = server.calls
    finally:
        unregister_judge("graded2")
    assert list(caches) == [("llm", "1.1")]  # keyed by the member's own name and version
    assert len(caches["llm", "1.1"].entries) == 2  # the empty response was never asked about
    assert calls == 2  # the second scoring was answered from the cache
    assert first_cost["calls"] == 2 and first_cost["cache_hits"] == 0
    assert first_cost["tokens_in"] > 0
    assert again_judge.ledger.calls == 0 and again_judge.ledger.cache_hits == 2
    assert [v.score for v in first] == [1.0, 0.5, 0.0] == [v.score for v in again]


def test_a_composites_variant_resamples_its_sampling_members(
        monkeypatch: pytest.MonkeyPatch) -> None:
    register_composites({"graded3": {"type": "majority",
                                             "judges": ["exact_match", "format", "llm"]}})
    try:
        with fake_openai(lambda request, attempt: Reply.json(float(request["seed"] % 2))) \
                as server:
            monkeypatch.setenv("TUNIX_RT_LLM_BASE_URL", server.base_url)
            monkeypatch.setenv("TUNIX_RT_LLM_MODEL", "judge-model")
            judge = get_judge("graded3")
            variant = judge.variant(1)
            [verdict] = variant.score([Item("a", "<reasoning>r</reasoning><answer>4</answer>",
                                            reference="4")], CONTEXT)
    finally:
        unregister_judge("graded3")
    assert (variant.name, variant.version) == (judge.name, judge.version)
    members = [member for member, _ in variant.members]
    assert members[0] is judge.members[0][0]  # deterministic members are reused
    assert members[2].config.seed == 1 and members[2].cache is None
    assert server.requests[0]["seed"] == 1 and variant.ledger.calls == 1
    assert verdict.raw == {"exact_match": 1.0, "format": 1.0, "llm": 1.0}


@pytest.mark.parametrize("definition, message", [
    ({"x": {"type": "average", "judges": ["mock"]}}, "composites.x: needs type"),
    ({"x": {"type": "majority", "judges": ["mock"]}}, "a majority needs a list of 2+"),
    ({"x": {"type": "weighted", "judges": {"mock": -1}}}, "positive weight"),
    ({"x": {"type": "majority", "judges": ["mock", "nope"]}}, "unknown judge 'nope'"),
])
def test_bad_composites_are_refused(definition: dict, message: str) -> None:
    with pytest.raises((ValueError, JudgeRegistryError), match=message):
        register_composites(definition)
    unregister_judge("x")


def test_composites_from_the_configured_file(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from tunix_rt.quality.judge_config import ensure_configured_judges

    config = tmp_path / "judges.yaml"
    config.write_text("composites:\n  both: {type: weighted, judges: {exact_match: 1, format: 1}}\n")
    monkeypatch.setenv("TUNIX_RT_JUDGES_CONFIG", str(config))
    try:
        assert ensure_configured_judges() == ["both"]
        assert ensure_configured_judges() == []  # once per process
        assert get_judge("both").score(_items(), CONTEXT)[2].score == 0.5
    finally:
        unregister_judge("both")
