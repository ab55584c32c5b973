"""Kernels: Gram spectra, infinite-width closed forms, empirical NTKs, neural-tangents backend."""
