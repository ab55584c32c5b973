"""Influence malleability: how far perturbing the training data moves a model's influence scores (docs/math.md §10).

- ``experiment``: the clean fit and its influence (``prepare``), one intervention measured against it
  (``measure``), the null baselines (``measure_null``) and the memory plan of a fit;
- ``report``: ``MalleabilityReport``, the record of one measurement;
- ``api``: the public entry points ``malleability`` and ``malleability_sweep``;
- ``runner``: malleability specs run into a result store (``run_malleability_spec``).

The metrics (flip rate, Spearman ρ, top-k overlap) are ``kernelattn.learning.malleability_metrics``;
PGD adversarial training is ``kernelattn.learning.adversarial``.
"""
