"""(5) studies: each study's CPU preset wall time, from the committed results/<study>/cpu/runs.csv."""

from __future__ import annotations

from bnlab.bench import ROOT


def bench_studies() -> list[dict]:
    import pandas as pd

    rows = []
    for path in sorted(ROOT.glob("results/*/cpu/runs.csv")):
        df = pd.read_csv(path)
        wall = df["wall_time"].dropna()
        rows.append(
            {
                "study": path.parts[-3],
                "runs": len(df),
                "sum_of_run_wall_min": round(wall.sum() / 60, 1),
                "median_run_s": round(wall.median(), 1),
                "max_run_s": round(wall.max(), 1),
                "source": str(path.relative_to(ROOT)),
            }
        )
    return rows
