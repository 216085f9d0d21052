"""Judges from elsewhere: entry-point plugins and composites defined in configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunix_rt.judges import Item, ScoringContext, get_judge
from tunix_rt.judges.composite import register_composites
from tunix_rt.judges.registry import JudgeRegistryError, unregister_judge

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
