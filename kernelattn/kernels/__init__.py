"""Kernels and the numerics around them.

- ``gram``: Gram matrices, spectra, condition numbers κ_d(G);
- ``analytic``: infinite-width closed forms (Θ_∞, NNGP) of the heads, with and without attention;
- ``stax``: the infinite-width composer: layers whose one description gives a Flax network and its NNGP/NTK;
- ``empirical``: the generic empirical NTK of any Flax model and the one structured/streamed head NTK;
- ``stream``: the head NTK streamed over width blocks; ``qkv``: the QKV network's NTK;
- ``exact``: exact integer products for ±1 activation patterns; ``factored``: the rank-factored head NTK;
- ``distributed``: sharding the same kernels over devices and hosts;
- ``memory``: memory plans and width chunks; ``guards``: is a kernel fit for a solve;
- ``linalg``: factorizations and kernel regression; ``metrics``: convergence of Θ_m to Θ_∞;
- ``nt_backend``: the neural-tangents oracle (legacy environment only).
"""
