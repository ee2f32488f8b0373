"""The hessian analysis measures again when the collected runs are not the ones its cache was measured on."""

from __future__ import annotations

import pandas as pd

from bnlab.results.analysis import load_study_module

hessian = load_study_module("hessian")


def _runs(tmp_path, ids, seeds_key="null"):
    rows = []
    for i, rid in enumerate(ids):
        d = tmp_path / "runs" / rid
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(f"hessian:\n  seeds: {seeds_key}\n")
        rows.append({"run_id": rid, "run_dir": str(d), "seed": i})
    return pd.DataFrame(rows)


def test_cache_is_used_only_for_the_runs_it_measured(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    done = _runs(tmp_path, ["aaa", "bbb"])
    assert not hessian._cache_matches(done, out)  # nothing cached yet
    pd.DataFrame({"run_id": ["old"]}).to_csv(out / hessian.NETS, index=False)
    pd.DataFrame({"run_id": ["old"]}).to_csv(out / hessian.SPECTRA, index=False)
    assert not hessian._cache_matches(done, out)  # a cache from earlier runs: measure again
    pd.DataFrame({"run_id": ["aaa", "bbb", "bbb"]}).to_csv(out / hessian.NETS, index=False)
    assert hessian._cache_matches(done, out)
    only_first = _runs(tmp_path / "s", ["aaa", "bbb"], seeds_key="[0]")  # hessian.seeds keeps seed 0 only
    pd.DataFrame({"run_id": ["aaa"]}).to_csv(out / hessian.NETS, index=False)
    assert hessian._cache_matches(only_first, out)
    gone = pd.DataFrame({"run_id": ["aaa", "bbb"], "run_dir": ["/nonexistent/a", "/nonexistent/b"], "seed": [0, 1]})
    assert hessian._cache_matches(gone, out)  # a fresh clone has no run directories: redraw what was measured
