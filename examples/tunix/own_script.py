"""Your own Tunix script, reporting to tunix-rt: a PeftTrainer with TunixRtHooks.

    export TUNIX_RT_URL=http://127.0.0.1:8000 TUNIX_RT_WEBHOOK_SECRET=whsec_...
    python examples/tunix/own_script.py --out ./tunix_rt_jobs/own-script

It trains Tunix's Qwen3, made tiny and randomly initialised, with qwix LoRA on the
``arithmetic`` set (about 10 s of training on a CPU), then samples the eval set with
Tunix's sampler. The hooks send run.started, the loss curve (run.progress) and
run.completed with the predictions file; `tunix-rt serve` then judges, ranks and gates
the run. On a real host, load your model and tokenizer instead of the tiny ones
(tunix_rt.integrations.tunix.trainables.load_model shows Tunix's loading code).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import optax
from tunix.sft import peft_trainer

from tunix_rt.integrations.tunix import TunixRtHooks, write_predictions
from tunix_rt.integrations.tunix.tiny import CharTokenizer, tiny_qwen3
from tunix_rt.integrations.tunix.trainables import (DEFAULTS, eval_pairs, model_input_fn,
                                                    sft_batches, with_lora)
from tunix_rt.training.trainable import arithmetic_items, training_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the predictions file")
    parser.add_argument("--external-id", default="own-script-1")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--flush-every-s", type=float, default=10.0)
    args = parser.parse_args()

    tokenizer = CharTokenizer()
    model = with_lora(tiny_qwen3(seed=0), {**DEFAULTS, "lora_rank": 4, "lora_alpha": 8.0})
    trainer = peft_trainer.PeftTrainer(
        model, optax.adamw(args.learning_rate),
        peft_trainer.TrainingConfig(eval_every_n_steps=10, max_steps=args.steps))
    trainer = trainer.with_gen_model_input_fn(model_input_fn(tokenizer.pad_id()))
    items = arithmetic_items()[:100]

    hooks = TunixRtHooks(
        args.external_id, name=f"tunix-lora-lr{args.learning_rate:g}", dataset="arithmetic",
        model="qwen3-tiny-lora", config={"learning_rate": args.learning_rate, "lora_rank": 4},
        flush_every_s=args.flush_every_s,
        # Evaluated when training ends: what the trained model says, sampled by Tunix.
        predictions_uri=lambda trained: write_predictions(
            trained.model, tokenizer, items, Path(args.out) / "predictions.jsonl",
            prompt_template="{prompt}=", max_new_tokens=4))
    trainer.with_training_hooks(hooks)

    template = "{prompt}="
    train = list(sft_batches(tokenizer, template, training_pairs(), n=args.steps, batch_size=8,
                          length=36, seed=0))
    held_out = eval_pairs(len(items))
    evaluation = list(sft_batches(tokenizer, template, held_out, n=2, batch_size=8, length=36,
                               seed=1))
    with hooks:  # an exception in training is sent as run.failed
        trainer.train(train, evaluation)
    print(json.dumps({"hook_calls": hooks.calls,
                      "deliveries": [[r.status, r.delivery_id] for r in hooks.results]}))


if __name__ == "__main__":
    main()
