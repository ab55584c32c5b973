"""Experiments: specs as data, run into a result store.

- ``specs``: the one spec schema and validator (sweep, training, malleability, reproduce tier);
- ``sweeps``: width sweeps of kernels and trained networks;
- ``malleability``: influence malleability under attack, with null baselines (a package: experiment, report,
  api, runner);
- ``store``: the resumable result store (and its Parquet files); ``provenance``: what produced a result
  (versions, devices, the git commit);
- ``tracking``: optional MLflow logging of a store, one run per store (off unless called);
- ``reproduce``: the quick / real / full tiers, end to end.
"""
