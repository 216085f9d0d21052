"""judge_reward as the reward of Tunix's GRPO learner: what Tunix receives is the judge's score.

One GRPO step of the tiny Qwen3 (qwix LoRA) with Tunix's GRPOLearner. Half of the
references are what the untrained model answers (its greedy output, sampled at a
temperature near 0), so the step sees rewards of 1 and of 0; each reward Tunix receives
is compared with the exact_match judge's own verdict on the same completion.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tunix_rt.judges import Item, ScoringContext, get_judge

pytestmark = pytest.mark.slow
SEED = 2
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def test_the_rewards_tunix_receives_are_the_judges_scores(tmp_path: Path) -> None:
    from tunix_rt.integrations.tunix.rewards import judge_reward
    from tunix_rt.integrations.tunix.sampling import generate
    from tunix_rt.integrations.tunix.tiny import CharTokenizer, tiny_qwen3
    from tunix_rt.integrations.tunix.trainables import eval_pairs, train_grpo

    candidates = [f"What is {a} + {b}?=" for a, b in eval_pairs(40)]
    # LoRA starts as the identity, so the actor answers as the base model does.
    # Seed 2's untrained model answers something (seed 0's ends every reply at once).
    greedy = generate(tiny_qwen3(seed=SEED), CharTokenizer(), candidates, max_new_tokens=4)
    answered = [(p, g.strip()) for p, g in zip(candidates, greedy) if g.strip()][:2]
    assert len(answered) == 2, greedy
    others = [(f"What is {a} + {b}?=", str(a + b)) for a, b in eval_pairs(40)[-2:]]
    prompts = [p for p, _ in answered + others]
    references = [r for _, r in answered + others]
    batch = {"prompts": np.array(prompts), "reference": np.array(references)}

    reward = judge_reward("exact_match")
    received: list[tuple[list[str], list[str], list[str], list[float]]] = []

    def recording(prompts: Any, completions: Any, **kwargs: Any) -> list[float]:
        """What Tunix's reward manager gets back from judge_reward, kept for the test."""
        rewards = reward(prompts=prompts, completions=completions, **kwargs)
        received.append(([str(p) for p in prompts], [str(c) for c in completions],
                         [str(r) for r in kwargs["reference"]], rewards))
        return rewards

    reports: list[dict[str, Any]] = []
    uri = train_grpo({"steps": 1, "batch_size": 4, "num_generations": 2,
                      "temperature": 1e-4, "n_eval": 20, "seed": SEED},
                     report=reports.append, out_dir=tmp_path, reward=recording,
                     batches=[batch])

    assert len(received) == 1  # one step: one call, every prompt G = 2 times
    got_prompts, completions, got_references, rewards = received[0]
    assert got_prompts == [p for p in prompts for _ in range(2)]
    assert got_references == [r for r in references for _ in range(2)]
    verdicts = get_judge("exact_match").score(
        [Item(id=str(i), response=c, prompt=p, reference=r)
         for i, (p, c, r) in enumerate(zip(got_prompts, completions, got_references))],
        ScoringContext(run_id="check"))
    assert all(v.scored for v in verdicts)
    assert rewards == [v.score for v in verdicts]
    assert rewards[:4] == [1.0] * 4, (completions, references)  # the model's own answers
    assert set(rewards) == {0.0, 1.0}
    assert [v.passed for v in reward.last_verdicts] == [v.passed for v in verdicts]

    # The run's loss curve and its predictions, sampled from the trained actor.
    assert reports[-1]["predictions_uri"] == uri and reports[-1]["step"] == 1
    assert [p["step"] for r in reports for p in r.get("tunix_rt_points", [])] == [1]
    lines = [json.loads(line) for line in Path(uri[len("file://"):]).read_text().splitlines()]
    assert len(lines) == 20 and {"id", "prompt", "response", "reference"} <= set(lines[0])


def test_unscored_verdicts_map_to_the_unscored_reward() -> None:
    """No reference: exact_match cannot score, and the reward is the documented value."""
    from tunix_rt.integrations.tunix.rewards import judge_reward

    reward = judge_reward("exact_match", unscored=0.25)
    assert reward(prompts=["What is 1 + 1?", "What is 2 + 2?"], completions=["2", "5"],
                  reference=["2", None]) == [1.0, 0.25]
    assert reward.last_verdicts[1].score is None
    with pytest.raises(ValueError, match="'answer'"):
        judge_reward("exact_match", reference_key="answer")(prompts=["p"], completions=["c"])
    with pytest.raises(Exception, match="exact_match"):
        judge_reward("no-such-judge")


def test_the_llm_judge_as_a_reward_pays_for_a_completion_once(
        engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """judge_reward('llm') against a real local OpenAI-API server: the verdict cache in the
    database serves a completion graded before, and the ledger counts what was paid."""
    from tests.fakes.openai_server import Reply, fake_openai
    from tunix_rt.integrations.tunix.rewards import judge_reward

    def grader(request: dict, attempt: int) -> Reply:
        prompt = request["messages"][-1]["content"]
        if "GARBLED" in prompt:
            return Reply.text("no grade here")  # the judge cannot read it: unscored
        return Reply.json(1.0 if "FORTY-TWO" in prompt else 0.0, "graded")

    prompts = ["What is 40 + 2?", "What is 1 + 1?", "What is 2 + 2?"]
    completions = ["FORTY-TWO", "three", "GARBLED"]
    references = ["42", "2", "4"]
    with fake_openai(grader) as provider:
        monkeypatch.setenv("TUNIX_RT_LLM_BASE_URL", provider.base_url)
        monkeypatch.setenv("TUNIX_RT_LLM_MODEL", "gemma-3-27b-it")
        reward = judge_reward("llm", engine=engine, unscored=0.5)
        first = reward(prompts=prompts, completions=completions, reference=references)
        paid = len(provider.requests)
        again = reward(prompts=prompts, completions=completions, reference=references)

    assert first == again == [1.0, 0.0, 0.5]
    assert paid == 3 and len(provider.requests) == 4  # only the unscored one asked again
    assert reward.ledger.calls == 4 and reward.ledger.cache_hits == 2
    assert reward.mean == pytest.approx((1.0 + 0.0 + 0.5) * 2 / 6)
