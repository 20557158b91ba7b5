"""Loss functions: small pure functions of tensors.

Every loss takes tensors (or a typed container of them) and returns a
per-example loss plus detached diagnostics; the caller reduces. Each loss cites
its paper and equation on the line that implements it.

- :mod:`prefkit.losses.reward`: reward-model losses (Bradley-Terry and its
  variants, ties, soft labels, Plackett-Luce, rating regression).
- :mod:`prefkit.losses.preference`: policy-optimisation losses (DPO family,
  reference-free, unpaired, listwise), the state a loss keeps across
  optimizer steps (KTO's KL estimate, BCO's reward shift), and their registry.
- :mod:`prefkit.losses.rl`: online-RL pieces (GRPO, RLOO, ReMax and REINFORCE++
  advantages, per-token KL estimators, the clipped policy loss, loss reductions).

This package imports torch and nothing else.
"""
