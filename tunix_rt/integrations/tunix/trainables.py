"""The built-in Tunix trainables: ``tunix-sft`` (LoRA SFT with ``PeftTrainer``) and
``tunix-grpo`` (GRPO with Tunix's RL learner, rewarded by a tunix-rt judge).

Named in run files and sweep files like ``builtin`` (``trainable: tunix-sft``), each
takes the config dict and returns the URI of the predictions file it wrote, sampled
from the trained model with Tunix's sampler over the ``arithmetic`` eval set.

**Here (CPU, no model hub)** the model is Tunix's Qwen3 made tiny and randomly
initialised (:mod:`tunix_rt.integrations.tunix.tiny`) with a character-level tokenizer:
30 steps take seconds. **On a TPU or GPU host** the same trainable loads a real model:

- ``model_id`` (e.g. ``Qwen/Qwen3-0.6B``) with ``model_source`` (``huggingface``,
  ``kaggle``, ``gcs`` or ``internal``: ``tunix.models.automodel.AutoModel``), or a local
  ``model_path`` (a checkpoint directory) with ``model_id`` naming its family;
- ``tokenizer_path`` (default: the model's own) and ``tokenizer_type`` (``hf`` or
  ``sp``), loaded by Tunix's ``Tokenizer``;
- ``prompt_template`` (default ``"{prompt}="`` for the tiny model), ``max_new_tokens``,
  ``max_prompt_length``, ``lora_module_path`` (qwix's regex of the layers LoRA wraps).

Config keys a sweep can tune: ``learning_rate``, ``lora_rank``, ``lora_alpha``,
``steps``; also ``batch_size``, ``steps_per_report`` (an eval and a report every that
many steps: one Ray Tune iteration), ``seed``, ``n_eval`` (eval items sampled for the
predictions). Each report has ``step``, ``train_loss``, ``eval_loss`` and the points
since the last one (the run's loss curve); the last also has ``predictions_uri``.
``tunix-grpo`` adds ``num_generations``, ``beta``, ``temperature`` and ``judge`` (the
reward, default ``exact_match``); its reports add ``reward_mean``, the mean reward the
judge gave over the run (the metric a GRPO sweep optimizes).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tunix_rt.training import trainable as core

__all__ = ["DEFAULTS", "GRPO_DEFAULTS", "check_config", "eval_pairs", "grpo_trainable", "load_model",
           "model_input_fn", "sft_batches", "sft_trainable", "train_grpo", "train_sft",
           "with_lora"]

OUT_DIR_ENV = "TUNIX_RT_OUT_DIR"
TINY_TEMPLATE = "{prompt}="
LORA_MODULES = ".*q_proj|.*k_proj|.*v_proj|.*o_proj|.*gate_proj|.*up_proj|.*down_proj"

DEFAULTS: dict[str, Any] = {
    "learning_rate": 3e-3, "lora_rank": 4, "lora_alpha": 8.0, "steps": 30, "batch_size": 8,
    "steps_per_report": 10, "seed": 0, "n_eval": 200, "max_new_tokens": 4,
    "max_prompt_length": 32, "eval_batches": 2,
    # A real model instead of the tiny one (see the module docstring).
    "model_id": None, "model_source": "huggingface", "model_path": None,
    "tokenizer_path": None, "tokenizer_type": "hf", "prompt_template": None,
    "lora_module_path": LORA_MODULES,
}
GRPO_DEFAULTS: dict[str, Any] = {**DEFAULTS, "learning_rate": 1e-3, "steps": 4,
                                 "batch_size": 4, "steps_per_report": 2,
                                 "num_generations": 2, "beta": 0.0, "temperature": 0.9,
                                 "judge": "exact_match"}
_INTS = ("lora_rank", "steps", "batch_size", "steps_per_report", "seed", "n_eval",
         "max_new_tokens", "max_prompt_length", "eval_batches", "num_generations")
_FLOATS = ("learning_rate", "lora_alpha", "beta", "temperature")
_POSITIVE = {"learning_rate", "lora_alpha", "lora_rank", "steps", "batch_size",
             "steps_per_report", "n_eval", "max_new_tokens", "max_prompt_length",
             "eval_batches", "temperature"}


def _config(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The known keys with defaults filled in, checked; a bad value raises ValueError
    naming the key. Other keys are ignored (a sweep may pass its own)."""
    if not isinstance(config, Mapping):
        raise ValueError(f"config: expected a mapping, got {type(config).__name__}")
    merged = {**defaults, **{k: v for k, v in config.items() if k in defaults}}
    for key in _INTS:
        if key not in merged:
            continue
        value = merged[key]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: must be an integer, got {value!r}")
        merged[key] = value
    for key in _FLOATS:
        if key not in merged:
            continue
        value = merged[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not np.isfinite(value):
            raise ValueError(f"{key}: must be a finite number, got {value!r}")
        merged[key] = float(value)
    for key in _POSITIVE & merged.keys():
        if merged[key] <= 0:
            raise ValueError(f"{key}: must be > 0, got {merged[key]}")
    if merged["seed"] < 0:
        raise ValueError(f"seed: must be >= 0, got {merged['seed']}")
    if merged.get("num_generations", 2) < 2:
        raise ValueError("num_generations: GRPO needs at least 2")
    if merged["n_eval"] > core.EVAL_SIZE:
        raise ValueError(f"n_eval: at most {core.EVAL_SIZE} (the arithmetic eval set)")
    if merged["model_id"] is None and merged["model_path"] is not None:
        raise ValueError("model_id: name the model's family (e.g. Qwen/Qwen3-0.6B) with "
                         "model_path")
    return merged


def check_config(trainable: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` checked for ``tunix-sft`` or ``tunix-grpo`` (a run file's --dry-run)."""
    return _config(config, GRPO_DEFAULTS if trainable == "tunix-grpo" else DEFAULTS)


def _out_dir() -> Path:
    given = os.environ.get(OUT_DIR_ENV)
    return Path(given) if given else Path(tempfile.mkdtemp(prefix="tunix-rt-tunix-"))


# --- the model ---------------------------------------------------------------------------

def load_model(cfg: Mapping[str, Any]) -> tuple[Any, Any, str]:
    """``(base model, tokenizer, prompt template)``: the tiny model, or a real one.

    The real path is Tunix's own loading (``AutoModel.from_pretrained`` and its
    ``Tokenizer``), as ``tunix.cli`` does it; it needs the model's hub or the checkpoint.
    """
    if cfg["model_id"] is None:
        from tunix_rt.integrations.tunix.tiny import CharTokenizer, tiny_qwen3

        return tiny_qwen3(cfg["seed"]), CharTokenizer(), cfg["prompt_template"] or TINY_TEMPLATE
    import jax
    from tunix.generate import tokenizer_adapter
    from tunix.models import automodel

    mesh = jax.make_mesh((1, len(jax.devices())), ("fsdp", "tp"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)
    model, model_path = automodel.AutoModel.from_pretrained(
        model_id=cfg["model_id"], mesh=mesh,
        model_source=automodel.ModelSource(cfg["model_source"]),
        model_path=cfg["model_path"], rng_seed=cfg["seed"])
    tokenizer = tokenizer_adapter.Tokenizer(
        cfg["tokenizer_type"], cfg["tokenizer_path"] or model_path or cfg["model_id"],
        True, False, os.environ.get("HF_TOKEN"))
    return model, tokenizer, cfg["prompt_template"] or "{prompt}\nAnswer: "


def with_lora(model: Any, cfg: Mapping[str, Any]) -> Any:
    """The model with qwix LoRA adapters (rank and alpha from the config), as Tunix does."""
    import qwix
    from flax import nnx

    provider = qwix.LoraProvider(module_path=cfg["lora_module_path"], rank=cfg["lora_rank"],
                                 alpha=cfg["lora_alpha"])
    return qwix.apply_lora_to_model(model, provider, rngs=nnx.Rngs(cfg.get("seed", 0)),
                                    **model.get_model_input())


# --- data --------------------------------------------------------------------------------

def _examples(tokenizer: Any, template: str, pairs: list[tuple[int, int]], length: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Token rows ``bos + prompt + answer + eos`` right-padded to ``length``, and the loss
    mask: the answer and eos only (the model learns to answer, not to ask)."""
    bos, eos, pad = tokenizer.bos_id(), tokenizer.eos_id(), tokenizer.pad_id()
    tokens = np.full((len(pairs), length), pad, np.int32)
    mask = np.zeros((len(pairs), length), np.bool_)
    for row, (a, b) in enumerate(pairs):
        prompt = ([bos] if bos is not None else []) + list(
            tokenizer.encode(template.format(prompt=f"What is {a} + {b}?")))
        answer = list(tokenizer.encode(str(a + b))) + [eos]
        ids = (prompt + answer)[:length]
        tokens[row, :len(ids)] = ids
        mask[row, len(prompt):len(ids)] = True
    return tokens, mask


def sft_batches(tokenizer: Any, template: str, pairs: list[tuple[int, int]], *, n: int,
             batch_size: int, length: int, seed: int) -> Iterator[Any]:
    from tunix.sft import peft_trainer

    rng = np.random.default_rng(seed)
    for _ in range(n):
        chosen = [pairs[i] for i in rng.integers(0, len(pairs), batch_size)]
        tokens, mask = _examples(tokenizer, template, chosen, length)
        yield peft_trainer.TrainingInput(input_tokens=tokens, input_mask=mask)


def model_input_fn(pad_id: int) -> Any:
    """PeftTrainer's ``gen_model_input_fn``: positions and a causal mask from the padding."""
    from tunix.sft import utils

    def model_input(example: Any) -> dict[str, Any]:
        present = example.input_tokens != pad_id
        return {"input_tokens": example.input_tokens, "input_mask": example.input_mask,
                "positions": utils.build_positions_from_mask(present),
                "attention_mask": utils.make_causal_attn_mask(present)}

    return model_input


def _eval_items(n: int) -> list[dict[str, str]]:
    return core.arithmetic_items()[:n]


def eval_pairs(n: int) -> list[tuple[int, int]]:
    """The ``(a, b)`` of the first ``n`` items of the arithmetic eval set."""
    return core._eval_pairs(core.EVAL_SIZE, core.EVAL_SEED)[:n]


# --- tunix-sft ---------------------------------------------------------------------------

def train_sft(config: Mapping[str, Any], *, report: Any = None, out_dir: str | Path | None = None,
              hooks: Any = None) -> str:
    """LoRA SFT of the (tiny or real) model with Tunix's ``PeftTrainer``; returns the URI of
    the predictions its sampler wrote for the eval set.

    ``report`` gets the loss curve through :class:`TunixRtHooks` in direct mode (default:
    :func:`tunix_rt.training.trainable.report`); ``hooks`` replaces those hooks (e.g. a
    webhook-mode :class:`TunixRtHooks` of your own).
    """
    cfg = _config(config, DEFAULTS)
    import optax
    from tunix.sft import peft_trainer

    from tunix_rt.integrations.tunix.hooks import TunixRtHooks
    from tunix_rt.integrations.tunix.sampling import write_predictions

    base, tokenizer, template = load_model(cfg)
    model = with_lora(base, cfg)
    length = cfg["max_prompt_length"] + cfg["max_new_tokens"]
    train_pairs = core.training_pairs()
    held_out = eval_pairs(cfg["n_eval"])
    training = peft_trainer.TrainingConfig(eval_every_n_steps=cfg["steps_per_report"],
                                           max_steps=cfg["steps"], pbar_description=None)
    trainer = peft_trainer.PeftTrainer(model, optax.adamw(cfg["learning_rate"]), training)
    trainer = trainer.with_gen_model_input_fn(model_input_fn(tokenizer.pad_id()))
    directory = Path(out_dir) if out_dir is not None else _out_dir()
    target = directory / core.PREDICTIONS_FILE
    written: list[str] = []

    def predict(trained: Any = None) -> str:
        """The predictions of the trained model, sampled once (the hooks may ask first)."""
        if not written:
            written.append(write_predictions(
                model, tokenizer, _eval_items(cfg["n_eval"]), target,
                prompt_template=template, max_new_tokens=cfg["max_new_tokens"],
                max_prompt_length=cfg["max_prompt_length"],
                metadata={"trainable": "tunix-sft", "steps": cfg["steps"]}))
        return written[0]

    hooks = hooks or TunixRtHooks(report=report or core.report)
    if isinstance(hooks, TunixRtHooks) and hooks.report is None \
            and hooks.predictions_uri is None:
        hooks.predictions_uri = predict  # run.completed names what the model says
    trainer.with_training_hooks(hooks)

    train_ds = list(sft_batches(tokenizer, template, train_pairs, n=cfg["steps"],
                             batch_size=cfg["batch_size"], length=length, seed=cfg["seed"]))
    eval_ds = list(sft_batches(tokenizer, template, held_out, n=cfg["eval_batches"],
                            batch_size=cfg["batch_size"], length=length, seed=cfg["seed"] + 1))
    with hooks if isinstance(hooks, TunixRtHooks) else _nothing():
        trainer.train(train_ds, eval_ds)
    uri = predict()
    if isinstance(hooks, TunixRtHooks) and hooks.report is not None:
        hooks.report({**{k: v for k, v in hooks.latest.items() if v is not None},
                      "step": int(hooks.latest.get("step") or cfg["steps"]),
                      "predictions_uri": uri})
    return uri


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def sft_trainable(config: dict[str, Any]) -> str:
    """The ``tunix-sft`` trainable: :func:`train_sft` reporting through ``report()``."""
    return train_sft(config, report=core.report)


# --- tunix-grpo --------------------------------------------------------------------------

def train_grpo(config: Mapping[str, Any], *, report: Any = None,
               out_dir: str | Path | None = None, hooks: Any = None, reward: Any = None,
               batches: list[dict[str, Any]] | None = None) -> str:
    """GRPO with Tunix's ``GRPOLearner`` on the arithmetic prompts, the reward a tunix-rt
    judge (:func:`~tunix_rt.integrations.tunix.rewards.judge_reward`, ``judge`` in the
    config); returns the URI of the predictions sampled afterwards.

    ``reward`` replaces the judge's reward function; ``batches`` the training batches
    (each ``{"prompts": array, "reference": array}``, one per step).
    """
    cfg = _config(config, GRPO_DEFAULTS)
    import jax
    import optax
    from tunix.rl import rl_cluster as rl_cluster_lib
    from tunix.rl.grpo import grpo_learner
    from tunix.rl.rollout import base_rollout

    from tunix_rt.integrations.tunix.hooks import TunixRtHooks
    from tunix_rt.integrations.tunix.rewards import judge_reward
    from tunix_rt.integrations.tunix.sampling import write_predictions

    base, tokenizer, template = load_model(cfg)
    actor = with_lora(base, cfg)
    mesh = jax.make_mesh((1, 1), ("fsdp", "tp"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)
    rollout = base_rollout.RolloutConfig(
        max_tokens_to_generate=cfg["max_new_tokens"],
        max_prompt_length=cfg["max_prompt_length"],
        kv_cache_size=cfg["max_prompt_length"] + cfg["max_new_tokens"] + 8,
        temperature=cfg["temperature"], eos_tokens=[tokenizer.eos_id()])
    training = rl_cluster_lib.RLTrainingConfig(
        actor_optimizer=optax.adamw(cfg["learning_rate"]), max_steps=cfg["steps"],
        eval_every_n_steps=cfg["steps_per_report"], pbar_description=None)
    cluster = rl_cluster_lib.RLCluster(
        actor=actor, reference=base, tokenizer=tokenizer,
        cluster_config=rl_cluster_lib.ClusterConfig(
            role_to_mesh={role: mesh for role in (rl_cluster_lib.Role.ACTOR,
                                                  rl_cluster_lib.Role.REFERENCE,
                                                  rl_cluster_lib.Role.ROLLOUT)},
            rollout_engine="vanilla", offload_to_cpu=False, training_config=training,
            rollout_config=rollout))
    reward = reward or judge_reward(cfg["judge"])
    learner = grpo_learner.GRPOLearner(
        rl_cluster=cluster,
        algo_config=grpo_learner.GRPOConfig(num_generations=cfg["num_generations"],
                                            num_iterations=1, beta=cfg["beta"]),
        reward_fns=reward)
    hooks = hooks or TunixRtHooks(report=report or core.report)
    if isinstance(hooks, TunixRtHooks):
        hooks.complete_on_train_end = False  # the actor trainer ends once per batch
    cluster.actor_trainer.with_training_hooks(hooks)

    rng = np.random.default_rng(cfg["seed"])
    pairs = core.training_pairs()
    given, batches = batches, []
    for _ in range(cfg["steps"] if given is None else 0):
        chosen = [pairs[i] for i in rng.integers(0, len(pairs), cfg["batch_size"])]
        # Arrays, not lists: the learner repeats every column G times along axis 0.
        batches.append({"prompts": np.array([template.format(prompt=f"What is {a} + {b}?")
                                             for a, b in chosen]),
                        "reference": np.array([str(a + b) for a, b in chosen])})
    with hooks if isinstance(hooks, TunixRtHooks) else _nothing():
        learner.train(given if given is not None else batches)
        if isinstance(hooks, TunixRtHooks):
            if getattr(reward, "mean", None) is not None:
                hooks.latest["reward_mean"] = reward.mean  # what a GRPO sweep optimizes
            hooks.finish(cluster.actor_trainer)
    directory = Path(out_dir) if out_dir is not None else _out_dir()
    uri = write_predictions(actor, tokenizer, _eval_items(cfg["n_eval"]),
                            directory / core.PREDICTIONS_FILE, prompt_template=template,
                            max_new_tokens=cfg["max_new_tokens"],
                            max_prompt_length=cfg["max_prompt_length"],
                            metadata={"trainable": "tunix-grpo", "steps": cfg["steps"]})
    if isinstance(hooks, TunixRtHooks) and hooks.report is not None:
        hooks.report({**{k: v for k, v in hooks.latest.items() if v is not None},
                      "step": int(hooks.latest.get("step") or cfg["steps"]),
                      "predictions_uri": uri})
    return uri


def grpo_trainable(config: dict[str, Any]) -> str:
    """The ``tunix-grpo`` trainable: :func:`train_grpo` reporting through ``report()``."""
    return train_grpo(config, report=core.report)
