"""Run directories -> DataFrames (collect) -> tables and figures (per-study analysis) -> report."""
