"""Rubrics for the LLM judge, and the chat prompts built from them.

A rubric is a name, grading instructions and whether it needs the item's reference.
Two are built in (``correctness``, ``reasoning``); a user rubric is a YAML file with
those three keys, or a plain-text file whose whole text is the instructions (its name
is the file's stem). ``rubric_hash`` fingerprints a rubric so that cached verdicts
follow its text, not its name.

``build_messages`` turns (rubric, item) into OpenAI chat messages for a preset:
``default`` uses a system message; ``gemma`` has no system role, so the instructions
open the first user turn. Either way the judge model is asked for a JSON reply
``{"score": <number in [0, 1]>, "rationale": "..."}``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunix_rt.judges.base import Item

PRESETS = ("default", "gemma")

REPLY_FORMAT = ('Reply with a single JSON object and nothing else, of the form '
                '{"score": <a number from 0 to 1>, "rationale": "<one or two sentences>"}.')


@dataclass(frozen=True, slots=True)
class Rubric:
    """Grading instructions for the judge model."""

    name: str
    instructions: str
    requires_reference: bool = False

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("a rubric needs a non-empty name")
        if not self.instructions.strip():
            raise ValueError(f"rubric {self.name!r} has empty instructions")

    def canonical_text(self) -> str:
        """The rubric as canonical JSON: what ``rubric_hash`` digests."""
        return json.dumps({"name": self.name, "instructions": self.instructions.strip(),
                           "requires_reference": self.requires_reference}, sort_keys=True)


BUILTIN_RUBRICS: dict[str, Rubric] = {r.name: r for r in (
    Rubric("correctness", requires_reference=True, instructions=(
        "Decide whether the response's final answer is correct, judged against the reference answer. "
        "Only the final answer matters: ignore style, length and the quality of the working. An "
        "equivalent form of the reference (0.5 and 1/2, a missing unit, different formatting) counts as "
        "correct. Score 1 if the final answer is correct; score 0 if it is wrong, missing or ambiguous.")),
    Rubric("reasoning", requires_reference=False, instructions=(
        "Rate the quality of the reasoning trace in the response, from 0 to 1: are the steps logically "
        "valid, relevant and sufficient to reach the stated answer, free of errors, contradictions and "
        "unsupported leaps? 1 means sound and complete; 0.5 partly sound, with gaps or minor errors; 0 "
        "missing, incoherent or wrong. Judge the reasoning itself, not only whether the final answer is "
        "right.")),
)}


def rubric_hash(rubric: Rubric) -> str:
    """A short sha256 of the rubric's canonical text (16 hex characters)."""
    return hashlib.sha256(rubric.canonical_text().encode()).hexdigest()[:16]


def load_rubric(path: str | Path) -> Rubric:
    """Read a user rubric: YAML with ``instructions`` (and optional ``name``,
    ``requires_reference``), or plain text taken whole as the instructions."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    is_yaml_file = path.suffix.lower() in {".yaml", ".yml"}
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        if is_yaml_file:
            raise ValueError(f"rubric file {path} is not valid YAML: {exc}") from None
        data = None
    if isinstance(data, dict) and (is_yaml_file or "instructions" in data):
        unknown = set(data) - {"name", "instructions", "requires_reference"}
        if unknown:
            raise ValueError(f"rubric file {path} has unknown keys {sorted(unknown)}; "
                             "expected name, instructions, requires_reference")
        if not isinstance(data.get("instructions"), str):
            raise ValueError(f"rubric file {path} needs 'instructions' as text")
        requires_reference = data.get("requires_reference", False)
        if not isinstance(requires_reference, bool):
            raise ValueError(f"rubric file {path}: requires_reference must be true or false, "
                             f"got {requires_reference!r}")
        return Rubric(name=str(data.get("name") or path.stem), instructions=data["instructions"],
                      requires_reference=requires_reference)
    if is_yaml_file:
        raise ValueError(f"rubric file {path} must be a YAML mapping with 'instructions'")
    return Rubric(name=path.stem, instructions=text)


def resolve_rubric(rubric: Rubric | str | Path) -> Rubric:
    """A rubric object, a built-in rubric's name, or the path of a rubric file."""
    if isinstance(rubric, Rubric):
        return rubric
    if isinstance(rubric, str) and rubric in BUILTIN_RUBRICS:
        return BUILTIN_RUBRICS[rubric]
    if Path(rubric).is_file():
        return load_rubric(rubric)
    raise ValueError(f"unknown rubric {str(rubric)!r}: not a built-in rubric "
                     f"({', '.join(sorted(BUILTIN_RUBRICS))}) nor a rubric file")


def _system_text(rubric: Rubric) -> str:
    return f"You are a strict, impartial grader.\n\n{rubric.instructions.strip()}\n\n{REPLY_FORMAT}"


def _item_text(item: Item) -> str:
    parts = [f"<prompt>\n{item.prompt if item.prompt is not None else '(not given)'}\n</prompt>",
             f"<response>\n{item.response}\n</response>"]
    if item.reference is not None:
        parts.append(f"<reference>\n{item.reference}\n</reference>")
    return "Grade the response below.\n\n" + "\n\n".join(parts)


def build_messages(rubric: Rubric, item: Item, preset: str = "default") -> list[dict[str, str]]:
    """The chat messages asking the judge model to grade ``item`` under ``rubric``."""
    if preset == "default":
        return [{"role": "system", "content": _system_text(rubric)},
                {"role": "user", "content": _item_text(item)}]
    if preset == "gemma":
        # Gemma chat templates have no system role: the instructions open the user turn.
        return [{"role": "user", "content": f"{_system_text(rubric)}\n\n{_item_text(item)}"}]
    raise ValueError(f"unknown prompt preset {preset!r}; presets: {', '.join(PRESETS)}")
