"""Preference optimisation of causal language models (DPO family, KTO, listwise).

- :mod:`prefkit.align.tokenize`: prompt/completion token ids with a correct boundary.
- :mod:`prefkit.align.logprobs`: completion log-probs, one forward pass or a shared prompt.
- :mod:`prefkit.align.refcache`: reference log-probs computed once and cached on disk.
- :mod:`prefkit.align.trainer`: :class:`AlignConfig`, the training task and :func:`align`.
- :mod:`prefkit.align.synthetic`: a tiny synthetic language for tests and demos.

Importing this package imports torch but not transformers or peft.
"""

from prefkit.align.trainer import AlignConfig, AlignResult, AlignTask, align, build_examples

__all__ = ["AlignConfig", "AlignResult", "AlignTask", "align", "build_examples"]
