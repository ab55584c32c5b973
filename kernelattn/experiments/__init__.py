"""Experiments: specs as data, run into a result store.

- ``specs``: the one spec schema and validator (sweep, training, malleability, reproduce tier);
- ``sweeps``: width sweeps of kernels and trained networks;
- ``malleability``: influence malleability under attack, with null baselines (a package: experiment, report,
  api, runner);
- ``store``: the resumable result store; ``provenance``: what produced a result;
- ``reproduce``: the quick / real / full tiers, end to end.
"""
