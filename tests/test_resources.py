"""The guard that drops JAX's compiled programs before a long run exhausts the process's memory mappings."""

import sys

import jax
import jax.numpy as jnp
import pytest

from kernelattn.experiments.resources import memory_maps, release_compiled_programs_if_crowded


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/maps is Linux's")
def test_memory_maps_counts_this_process_against_the_kernel_limit():
    held, limit = memory_maps()
    assert 0 < held < limit


def test_programs_are_kept_below_the_threshold_and_dropped_above_it():
    double = jax.jit(lambda x: 2 * x)
    double(jnp.ones(3))
    assert release_compiled_programs_if_crowded(fraction=1.0) is False
    assert double._cache_size() == 1  # private, but the one way to see the cache
    dropped = release_compiled_programs_if_crowded(fraction=0.0)
    assert dropped is (memory_maps() is not None)
    if dropped:
        assert double._cache_size() == 0


def test_small_linear_algebra_runs_on_one_blas_thread_and_large_keeps_its_threads():
    from threadpoolctl import threadpool_info

    from kernelattn.experiments.resources import SMALL_N_BLAS, blas_single_thread

    def blas_threads():
        return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}

    before = blas_threads()
    with blas_single_thread(SMALL_N_BLAS):
        assert blas_threads() == {1}
    assert blas_threads() == before
    with blas_single_thread(SMALL_N_BLAS + 1):
        assert blas_threads() == before
