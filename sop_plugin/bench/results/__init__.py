"""Everything that reads finished runs.

The report, plots, multi-seed summaries and their statistics, sweeps and tuning drivers.
"""
