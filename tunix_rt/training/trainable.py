"""Trainables: the built-in arithmetic trainer and the plug-in point for the user's own.

A *trainable* is what one tuning trial (``tunix-rt tune``) or one training run
(``tunix-rt train``) executes. The contract for a user's trainable, named in a sweep
or run file as ``"package.module:function"``:

* it is a function taking one argument, the trial's config dict (the sampled
  ``param_space`` values of a sweep, or a run file's ``config``); it should ignore
  keys it does not know;
* while it trains it calls :func:`tunix_rt.training.trainable.report` with a dict of metrics,
  for example ``report({"accuracy": 0.8, "loss": 0.4, "step": 100})``; the metric the
  sweep optimizes (``metric:`` in the sweep file) must be among them. Inside a Ray Tune
  trial each call is one Tune iteration (what ASHA's ``max_t`` and ``grace_period``
  count); outside Ray the reports are collected for ``tunix-rt train``;
* it returns the URI of the predictions file it wrote (docs/CONTRACT.md, "Predictions
  file"), which the judges then score.

``builtin`` names :func:`builtin_trainable`, which trains the small JAX model of
:func:`train_arithmetic` on the ``arithmetic`` dataset (:func:`arithmetic_items`).
``tunix-sft`` and ``tunix-grpo`` name Google Tunix's trainers on the same dataset
(:mod:`tunix_rt.integrations.tunix.trainables`, the ``tunix`` extra).

Importing this module is cheap: jax, optax and ray are imported only by the
functions that need them.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import random
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["BUILTIN", "DATASET", "DEFAULT_CONFIG", "Trainable", "arithmetic_items",
           "builtin_trainable", "clear_reports", "load_trainable", "report", "reporting_to",
           "reports", "set_reporter", "train_arithmetic", "training_pairs"]

Trainable = Callable[[dict[str, Any]], str]
Reporter = Callable[[dict[str, Any]], None]

BUILTIN = "builtin"
#: Trainables named like ``builtin`` that live in the ``tunix`` extra's adapter.
TUNIX_TRAINABLES = {"tunix-sft": "tunix_rt.integrations.tunix.trainables:sft_trainable",
                    "tunix-grpo": "tunix_rt.integrations.tunix.trainables:grpo_trainable"}
DATASET = "arithmetic"
PREDICTIONS_FILE = "predictions.jsonl"

# --- the arithmetic dataset -------------------------------------------------------------

MAX_OPERAND = 49           # a and b are drawn from 0..MAX_OPERAND
EVAL_SIZE = 200
EVAL_SEED = 1234


def _all_pairs() -> list[tuple[int, int]]:
    return [(a, b) for a in range(MAX_OPERAND + 1) for b in range(MAX_OPERAND + 1)]


def _eval_pairs(n: int, seed: int) -> list[tuple[int, int]]:
    pairs = _all_pairs()
    if not 1 <= n <= len(pairs):
        raise ValueError(f"n: must be between 1 and {len(pairs)}, got {n}")
    return random.Random(seed).sample(pairs, n)


def arithmetic_items(n: int = EVAL_SIZE, seed: int = EVAL_SEED) -> list[dict[str, str]]:
    """The fixed evaluation set of the ``arithmetic`` dataset: ``n`` distinct sums.

    Items look like ``{"id": "add-0000", "prompt": "What is 37 + 8?", "reference": "45"}``
    with both operands in 0..49; the same ``n`` and ``seed`` always give the same items.
    """
    return [{"id": f"add-{i:04d}", "prompt": f"What is {a} + {b}?", "reference": str(a + b)}
            for i, (a, b) in enumerate(_eval_pairs(n, seed))]


def training_pairs(seed: int = EVAL_SEED, n_eval: int = EVAL_SIZE) -> list[tuple[int, int]]:
    """The training split: every ``(a, b)`` pair NOT in ``arithmetic_items(n_eval, seed)``.

    Disjoint from the evaluation pairs, so held-out accuracy measures generalization.
    Deterministic, in a fixed order.
    """
    held_out = set(_eval_pairs(n_eval, seed))
    return [pair for pair in _all_pairs() if pair not in held_out]


# --- configuration ----------------------------------------------------------------------

DEFAULT_CONFIG: dict[str, Any] = {"learning_rate": 0.01, "hidden_size": 32, "steps": 200,
                                  "seed": 0, "steps_per_report": 10}
BATCH_SIZE = 128
INPUT_DIM = 40              # one-hot tens and units digits of a and b, 10 dims each


def _config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The known keys of ``config`` with defaults filled in, validated; others are ignored."""
    if not isinstance(config, Mapping):
        raise ValueError(f"config: expected a mapping, got {type(config).__name__}")
    merged = {**DEFAULT_CONFIG, **{k: v for k, v in config.items() if k in DEFAULT_CONFIG}}
    learning_rate = merged["learning_rate"]
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)):
        raise ValueError(f"learning_rate: must be a number, got {learning_rate!r}")
    if not learning_rate > 0 or learning_rate == float("inf"):
        raise ValueError(f"learning_rate: must be a finite number > 0, got {learning_rate!r}")
    merged["learning_rate"] = float(learning_rate)
    for key, low in (("hidden_size", 1), ("steps", 1), ("steps_per_report", 1), ("seed", 0)):
        value = merged[key]
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # e.g. 64.0 from a quantized search space
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: must be an integer, got {value!r}")
        if value < low:
            raise ValueError(f"{key}: must be >= {low}, got {value}")
        merged[key] = value
    return merged


# --- reporting --------------------------------------------------------------------------

_reports: list[dict[str, Any]] = []
_reporter: Reporter | None = None


def report(metrics: dict[str, Any]) -> None:
    """Report one set of metrics from a trainable (one Tune iteration in a sweep).

    Where the metrics go, in order: to the reporter installed with :func:`set_reporter`
    or :func:`reporting_to` if there is one; to Ray Tune (``ray.tune.report``) when
    called inside a Tune trial; otherwise to this process's list, see :func:`reports`.
    """
    if not isinstance(metrics, Mapping):
        raise TypeError(f"report() takes a dict of metrics, got {type(metrics).__name__}")
    metrics = dict(metrics)
    if _reporter is not None:
        _reporter(metrics)
    elif _in_tune_trial():
        import ray.tune

        ray.tune.report(metrics)
    else:
        _reports.append(metrics)


def _in_tune_trial() -> bool:
    """Whether this is a Ray Tune trial; never imports ray (a trial has it imported)."""
    if "ray" not in sys.modules:
        return False
    try:
        import ray.tune

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # outside a session Ray warns and answers None
            return ray.tune.get_context().get_trial_id() is not None
    except Exception:  # an older or newer Ray without this API: not a Tune trial we know
        return False


def reports() -> list[dict[str, Any]]:
    """The metrics reported in this process so far with no reporter installed and no Tune."""
    return [dict(m) for m in _reports]


def clear_reports() -> None:
    """Forget the reports collected by :func:`reports`."""
    _reports.clear()


def set_reporter(reporter: Reporter | None) -> Reporter | None:
    """Send every :func:`report` to ``reporter`` (``None`` removes it); returns the old one."""
    global _reporter
    if reporter is not None and not callable(reporter):
        raise TypeError(f"reporter must be callable, got {type(reporter).__name__}")
    previous, _reporter = _reporter, reporter
    return previous


@contextlib.contextmanager
def reporting_to(reporter: Reporter) -> Iterator[Reporter]:
    """Within the block, :func:`report` calls ``reporter``; the previous one is restored after.

    ``with reporting_to(collected.append): train(config)`` collects a trainable's reports.
    """
    previous = set_reporter(reporter)
    try:
        yield reporter
    finally:
        set_reporter(previous)


# --- loading trainables -----------------------------------------------------------------

def is_trainable_path(path: str) -> bool:
    """``"builtin"``, ``"tunix-sft"``, ``"tunix-grpo"``, or ``"package.module:function"``
    made of identifiers (nothing imported)."""
    if path == BUILTIN or path in TUNIX_TRAINABLES:
        return True
    module_name, sep, attr = path.partition(":")
    return bool(sep and module_name.strip() and attr.strip() and ":" not in attr
                and all(part.isidentifier() for part in module_name.split("."))
                and all(part.isidentifier() for part in attr.split(".")))


def load_trainable(path: str) -> Trainable:
    """Resolve ``"builtin"`` or ``"package.module:function"`` to the trainable function."""
    if not isinstance(path, str):
        raise ValueError(f"trainable: expected a string, got {type(path).__name__}")
    if path == BUILTIN:
        return builtin_trainable
    if path in TUNIX_TRAINABLES:
        try:
            import tunix  # noqa: F401
        except ModuleNotFoundError:
            raise ValueError(f"trainable {path!r} needs Google's Tunix: pip install "
                             f"'tunix-rt[tunix]'") from None
        path = TUNIX_TRAINABLES[path]
    if not is_trainable_path(path):
        raise ValueError(f"trainable {path!r}: expected \"builtin\" or "
                         f"\"package.module:function\"")
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name != exc.name \
                and not module_name.startswith(exc.name + "."):
            raise  # the module exists but one of its own imports is missing: show that
        raise ValueError(f"trainable {path!r}: module {module_name!r} not found") from None
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"trainable {path!r}: module {module_name!r} has no attribute "
                             f"{attr!r}") from None
    if not callable(target):
        raise ValueError(f"trainable {path!r}: {attr!r} is not callable "
                         f"(it is a {type(target).__name__})")
    return target


def builtin_trainable(config: dict[str, Any]) -> str:
    """The ``builtin`` trainable: :func:`train_arithmetic` reporting through :func:`report`."""
    return train_arithmetic(config, report=report)


# --- the model --------------------------------------------------------------------------

def _digits_one_hot(np: Any, pairs: list[tuple[int, int]]) -> Any:
    """(n, 40) float32: one-hot tens(a), units(a), tens(b), units(b)."""
    digits = np.array([(a // 10, a % 10, b // 10, b % 10) for a, b in pairs], dtype=np.int32)
    x = np.zeros((len(pairs), INPUT_DIM), dtype=np.float32)
    rows = np.arange(len(pairs))
    for slot in range(4):
        x[rows, slot * 10 + digits[:, slot]] = 1.0
    return x


@lru_cache(maxsize=1)
def _datasets() -> tuple[Any, Any, Any, Any, list[tuple[int, int]]]:
    """Training inputs and digit targets, eval inputs, and the eval pairs (cached)."""
    import numpy as np

    train = training_pairs(EVAL_SEED, EVAL_SIZE)
    evaluation = _eval_pairs(EVAL_SIZE, EVAL_SEED)
    sums = np.array([a + b for a, b in train], dtype=np.int32)
    targets = np.stack([sums // 10, sums % 10], axis=1)
    eval_sums = np.array([a + b for a, b in evaluation], dtype=np.int32)
    return (_digits_one_hot(np, train), targets, _digits_one_hot(np, evaluation), eval_sums,
            evaluation)


def _padded_width(hidden_size: int) -> int:
    """The hidden width actually computed: ``hidden_size`` rounded up to a power of two, at
    least 64, so that one compiled step serves many sizes.

    The extra units have all-zero weights; relu'(0) is 0 in JAX, so their gradients and
    Adam updates are exactly zero and they stay zero: the model is exactly the
    ``hidden_size`` model, and a sweep over sizes compiles once per bucket, not per size.
    """
    return max(64, 1 << (hidden_size - 1).bit_length())


def _init_params(np: Any, rng: Any, hidden_size: int) -> dict[str, Any]:
    """He-scaled first layer, 1/sqrt(fan-in) heads, zero biases; padded with zero units."""
    width = _padded_width(hidden_size)

    def padded(shape: tuple[int, int], scale: float, axis: int) -> Any:
        values = np.zeros((shape[0], width) if axis == 1 else (width, shape[1]), np.float32)
        block = (rng.standard_normal(shape) * scale).astype(np.float32)
        if axis == 1:
            values[:, :hidden_size] = block
        else:
            values[:hidden_size, :] = block
        return values

    return {"w1": padded((INPUT_DIM, hidden_size), np.sqrt(2.0 / INPUT_DIM), axis=1),
            "b1": np.zeros((width,), np.float32),
            "w_tens": padded((hidden_size, 10), np.sqrt(1.0 / hidden_size), axis=0),
            "b_tens": np.zeros((10,), np.float32),
            "w_units": padded((hidden_size, 10), np.sqrt(1.0 / hidden_size), axis=0),
            "b_units": np.zeros((10,), np.float32)}


@lru_cache(maxsize=1)
def _compiled() -> tuple[Any, Any]:
    """``(init_state, chunk)``: jitted functions, built once per process.

    The learning rate lives in the optimizer state (``optax.inject_hyperparams``), so a
    new learning rate does not recompile; shapes change only with the hidden-size bucket
    and ``steps_per_report``.
    """
    import jax
    import jax.numpy as jnp
    import optax

    # XLA's CPU backend spends most of a trial compiling; its lowest optimization level
    # halves that and costs nothing measurable on a model this small.
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=0.01)

    def init_state(params: Any, learning_rate: Any) -> Any:
        state = optimizer.init(params)
        state.hyperparams["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
        return state

    def forward(params: dict[str, Any], x: Any) -> tuple[Any, Any]:
        h = jax.nn.relu(x @ params["w1"] + params["b1"])
        return h @ params["w_tens"] + params["b_tens"], h @ params["w_units"] + params["b_units"]

    def loss_fn(params: dict[str, Any], x: Any, y: Any) -> Any:
        tens, units = forward(params, x)
        return (optax.softmax_cross_entropy_with_integer_labels(tens, y[:, 0]).mean()
                + optax.softmax_cross_entropy_with_integer_labels(units, y[:, 1]).mean())

    def chunk(params: Any, opt_state: Any, batches: Any, n_steps: Any, x_train: Any,
              y_train: Any, x_eval: Any) -> tuple[Any, Any, Any, Any]:
        """Run the first ``n_steps`` minibatches of ``batches`` (rows of training indices);
        return the new parameters and state, the mean loss and the eval predictions."""

        def step(i: Any, carry: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
            params, opt_state, total = carry
            idx = batches[i]
            loss, grads = jax.value_and_grad(loss_fn)(params, x_train[idx], y_train[idx])
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, total + loss

        params, opt_state, total = jax.lax.fori_loop(
            0, n_steps, step, (params, opt_state, jnp.zeros((), jnp.float32)))
        tens, units = forward(params, x_eval)
        predicted = 10 * jnp.argmax(tens, axis=-1) + jnp.argmax(units, axis=-1)
        return params, opt_state, total / n_steps, predicted

    return (jax.jit(init_state, compiler_options=options),
            jax.jit(chunk, compiler_options=options))


def train_arithmetic(config: Mapping[str, Any], *, report: Reporter | None = None,
                     out_dir: str | Path | None = None) -> str:
    """Train the small JAX adder on the ``arithmetic`` training split; return the predictions URI.

    ``config``: ``learning_rate`` (0.01), ``hidden_size`` (32), ``steps`` (200), ``seed``
    (0), ``steps_per_report`` (10); other keys are ignored, bad values raise
    :class:`ValueError` naming the key. The model is an MLP on the one-hot digits of
    ``a`` and ``b`` with one relu hidden layer and two softmax heads (tens and units digit
    of ``a + b``), trained with Adam on minibatches of 128 drawn with replacement.

    Every ``steps_per_report`` steps (and after the last step) ``report`` gets
    ``{"accuracy", "loss", "step"}``: ``accuracy`` is the held-out exact-match accuracy on
    :func:`arithmetic_items` (predicted sum == a + b, as the ``exact_match`` judge scores
    the file), ``loss`` the mean training loss of those steps. Finally
    ``predictions.jsonl`` is written to ``out_dir`` (a new temporary directory if
    ``None``), one line per evaluation item. The same config gives bit-identical
    reports and predictions.
    """
    cfg = _config(config)
    import numpy as np

    init_state, chunk = _compiled()
    x_train, y_train, x_eval, eval_sums, eval_pairs = _datasets()
    rng = np.random.default_rng(cfg["seed"])
    params = _init_params(np, rng, cfg["hidden_size"])
    opt_state = init_state(params, np.float32(cfg["learning_rate"]))
    steps, every = cfg["steps"], cfg["steps_per_report"]

    directory = Path(out_dir) if out_dir is not None else Path(
        tempfile.mkdtemp(prefix="tunix-rt-arithmetic-"))
    done = 0
    uri = ""
    while done < steps:
        n = min(every, steps - done)
        block = np.zeros((every, BATCH_SIZE), np.int32)  # fixed shape: one compilation
        block[:n] = rng.integers(0, len(x_train), size=(n, BATCH_SIZE), dtype=np.int32)
        params, opt_state, loss, predicted = chunk(params, opt_state, block, np.int32(n),
                                                   x_train, y_train, x_eval)
        done += n
        # Predictions of the current state go out with every report: a trial that a
        # scheduler stops early still leaves the predictions of where it stopped.
        uri = _write_predictions(eval_pairs, np.asarray(predicted).tolist(), done, directory)
        if report is not None:
            report({"accuracy": float(np.mean(np.asarray(predicted) == eval_sums)),
                    "loss": float(loss), "step": done, "predictions_uri": uri})
    return uri


def _write_predictions(pairs: list[tuple[int, int]], predicted: list[int], steps: int,
                       directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / PREDICTIONS_FILE
    lines = []
    for i, ((a, b), pred) in enumerate(zip(pairs, predicted, strict=True)):
        tens, units = divmod(int(pred), 10)
        lines.append(json.dumps({
            "id": f"add-{i:04d}", "prompt": f"What is {a} + {b}?",
            "response": (f"<reasoning>{a} + {b}: model output tens digit {tens}, units digit "
                         f"{units}</reasoning><answer>{int(pred)}</answer>"),
            "reference": str(a + b),
            "metadata": {"trainable": BUILTIN, "step": steps}}))
    # Written whole then renamed: a reader never sees half a file.
    partial = path.with_name(path.name + ".partial")
    partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path.resolve().as_uri()
