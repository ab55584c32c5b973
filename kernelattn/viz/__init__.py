"""Figures and the markdown report, drawn from result stores only.

- ``frames``: the stores under a results directory read into data frames (one row per record);
- ``style``: the figures' paper style, colours, log axes, panel grids, saving;
- ``figures_sweeps``, ``figures_malleability``: the figures of kernel sweeps and of malleability runs;
- ``figures``: which figures the stores support, drawn to files in worker processes;
- ``report_tables``: the report's markdown tables; ``report``: the report itself, with the paper's claims.
"""
