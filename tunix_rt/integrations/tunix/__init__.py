"""tunix-rt with Google's Tunix: hooks in the trainer, judges as rewards, trainables.

Needs the extra: ``pip install 'tunix-rt[tunix]'``. The core never imports this package.

- :class:`~tunix_rt.integrations.tunix.hooks.TunixRtHooks`: Tunix training hooks that
  report started, the loss curve, completed or failed;
- :func:`~tunix_rt.integrations.tunix.rewards.judge_reward`: a judge as a GRPO reward;
- :func:`~tunix_rt.integrations.tunix.sampling.write_predictions`: the predictions file
  from the trained model, with Tunix's sampler;
- the ``tunix-sft`` and ``tunix-grpo`` trainables (:mod:`.trainables`).
"""

from __future__ import annotations

from tunix_rt.integrations.tunix.hooks import TunixRtHooks
from tunix_rt.integrations.tunix.rewards import judge_reward
from tunix_rt.integrations.tunix.sampling import write_predictions

__all__ = ["TunixRtHooks", "judge_reward", "write_predictions"]
