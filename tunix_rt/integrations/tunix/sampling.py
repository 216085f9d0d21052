"""Predictions from the trained model, generated with Tunix's own sampler.

:func:`write_predictions` samples a response for every item of an eval set with
``tunix.generate.sampler.Sampler`` (greedy by default) and writes the predictions file
the judges score (docs/CONTRACT.md, "Predictions file"): one JSON line per item with
``id``, ``prompt``, ``response`` and ``reference``. So the loop scores what the trained
model says, not what a script computed beside it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tunix.generate import sampler as sampler_lib

__all__ = ["generate", "write_predictions"]


def _cache_config(model: Any, cache_size: int) -> sampler_lib.CacheConfig:
    config = model.config
    return sampler_lib.CacheConfig(cache_size=cache_size, num_layers=config.num_layers,
                                   num_kv_heads=config.num_kv_heads, head_dim=config.head_dim)


def generate(model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = 8,
             max_prompt_length: int = 32, batch_size: int = 64, temperature: float = 0.0,
             seed: int = 0) -> list[str]:
    """Tunix's sampler on ``prompts``, ``batch_size`` at a time; one text per prompt.

    ``model`` is a Tunix model (its ``config`` gives the KV cache's shape), LoRA or not;
    ``tokenizer`` anything Tunix's ``TokenizerAdapter`` takes. ``temperature`` 0 is greedy.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    longest = max((len(tokenizer.encode(p)) + 1 for p in prompts), default=1)
    max_prompt_length = max(max_prompt_length, longest)
    sampler = sampler_lib.Sampler(
        transformer=model, tokenizer=tokenizer,
        cache_config=_cache_config(model, max_prompt_length + max_new_tokens + 8))
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start:start + batch_size])
        options: dict[str, Any] = {"temperature": temperature, "seed": seed} \
            if temperature > 0 else {}
        out = sampler(batch, max_generation_steps=max_new_tokens,
                      max_prompt_length=max_prompt_length, echo=False, **options)
        texts += [str(text) for text in out.text]
    return texts


def write_predictions(model: Any, tokenizer: Any, items: Sequence[Mapping[str, Any]],
                      path: str | os.PathLike[str], *, prompt_template: str = "{prompt}",
                      max_new_tokens: int = 8, max_prompt_length: int = 32,
                      batch_size: int = 64, metadata: Mapping[str, Any] | None = None) -> str:
    """Sample a response for each item (``id``, ``prompt``, ``reference``) and write the
    predictions JSONL at ``path``; returns its ``file://`` URI.

    The model sees ``prompt_template.format(prompt=item["prompt"])`` (the form it was
    trained on); the file keeps the eval set's own prompt. The file is written whole and
    then renamed, so a reader never sees half of it.
    """
    prompts = [prompt_template.format(prompt=item["prompt"]) for item in items]
    responses = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                         max_prompt_length=max_prompt_length, batch_size=batch_size)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for item, response in zip(items, responses, strict=True):
        line = {"id": item["id"], "prompt": item["prompt"], "response": response.strip(),
                "reference": item.get("reference")}
        if metadata:
            line["metadata"] = dict(metadata)
        lines.append(json.dumps(line))
    partial = target.with_name(target.name + ".partial")
    partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(partial, target)
    return target.resolve().as_uri()
