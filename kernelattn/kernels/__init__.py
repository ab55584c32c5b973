"""Kernels: Gram spectra, infinite-width closed forms, empirical NTKs (generic; the one structured/streamed head
NTK and its width stream; the QKV network's), neural-tangents backend."""
