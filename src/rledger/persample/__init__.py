"""The per-sample engine: exact per-sample columns of PPO's loss gradient, with no per-sample Python loop.

Modules, each importing only those before it: :mod:`~rledger.persample.loss` (loss terms, per-sample
coefficients, clip factors, optimizer step scales, the column formulas), :mod:`~rledger.persample.gram`
(Linear-layer Gram identities, output gradients from a live graph), :mod:`~rledger.persample.functional`
(the policy's loss parts under ``torch.func``; the generic path), :mod:`~rledger.persample.replay`
(batched replay of buffered minibatches), :mod:`~rledger.persample.slots` (slot buffers and their
flush), :mod:`~rledger.persample.checks` (what is supported, which path a policy takes) and
:mod:`~rledger.persample.engine` (:class:`PerSampleEngine`, which drives them from ``train()``).
"""

from rledger.persample.checks import UnsupportedPolicyError
from rledger.persample.engine import PerSampleEngine
from rledger.persample.loss import LossTerms, clip_coefs

__all__ = ["LossTerms", "PerSampleEngine", "UnsupportedPolicyError", "clip_coefs"]
