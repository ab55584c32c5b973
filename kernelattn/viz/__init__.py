"""Figures and the markdown report, drawn from result stores only.

- ``plotting``: matplotlib figures of sweeps and malleability;
- ``report``: the markdown report with its tables and the paper's claims.
"""
