"""A tiny Tunix model and a character-level tokenizer, for CPU runs and tests.

The model is one of Tunix's own (``tunix.models.qwen3``), made small: 2 layers, 64 wide,
a vocabulary of 32. It is randomly initialised, so nothing is downloaded. The tokenizer
knows the characters of the ``arithmetic`` dataset's prompts and answers; it has the
methods Tunix's ``TokenizerAdapter`` asks of a tokenizer of one's own (``encode``,
``decode``, ``bos_id``, ``eos_id``, ``pad_id``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

PAD, BOS, EOS, UNK = 0, 1, 2, 3
CHARS = "0123456789 +=?Whatis"
VOCAB_SIZE = 32


class CharTokenizer:
    """One id per character of :data:`CHARS`; anything else is ``UNK``."""

    def __init__(self, chars: str = CHARS) -> None:
        self._ids = {c: i + 4 for i, c in enumerate(chars)}
        self._chars = {i: c for c, i in self._ids.items()}
        if len(self._ids) + 4 > VOCAB_SIZE:
            raise ValueError(f"{len(chars)} characters do not fit a vocabulary of {VOCAB_SIZE}")

    def encode(self, text: str, **_: Any) -> list[int]:
        return [self._ids.get(c, UNK) for c in text]

    def decode(self, ids: Any, **_: Any) -> str:
        out = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if i == EOS:
                break
            out.append(self._chars.get(int(i), ""))
        return "".join(out)

    def bos_id(self) -> int:
        return BOS

    def eos_id(self) -> int:
        return EOS

    def pad_id(self) -> int:
        return PAD


def tiny_qwen3_config() -> Any:
    """Tunix's Qwen3 config, small: 2 layers, 64 wide, 2 heads of 32, vocabulary 32."""
    from tunix.models.qwen3 import model as qwen3

    return qwen3.ModelConfig(num_layers=2, vocab_size=VOCAB_SIZE, embed_dim=64, hidden_dim=128,
                             num_heads=2, head_dim=32, num_kv_heads=1, rope_theta=10_000,
                             norm_eps=1e-6)


def tiny_qwen3(seed: int = 0) -> Any:
    """A randomly initialised tiny Qwen3 (nothing downloaded)."""
    from flax import nnx
    from tunix.models.qwen3 import model as qwen3

    return qwen3.Qwen3(tiny_qwen3_config(), rngs=nnx.Rngs(params=seed))
