"""`make bench` times a preset's training step with each speed setting and refits the plan's two constants (time per
operator, fraction of peak) from it; `bnlab plan` uses them on the GPU they were measured on, and keeps its assumed
GPU values elsewhere (a CPU's measurement is written, never used to price a GPU)."""

from __future__ import annotations

import json

import pytest

from bnlab import cost
from bnlab.bench import provenance
from bnlab.bench.preset import bench_preset, write_plan_constants
from bnlab.cli import main

H100_BF16 = cost.PEAK_TFLOPS["H100"]["bf16"] * 1e12


def _measured_table(op_us: float = 8.0, utilisation: float = 0.3) -> list[dict]:
    """Three H100 steps made by the plan's own model: one launch-bound (small net), two compute-bound."""
    launch = {"variant": "baseline", "precision": "tf32", "ops_per_step": 2000, "flops_per_step": 1e11}
    launch["seconds_per_step"] = 2000 * op_us * 1e-6  # 16 ms of launches; its FLOPs would take 1 ms at 0.3 of peak
    big = {"variant": "+bf16", "precision": "bf16", "ops_per_step": 3000, "flops_per_step": 3e13}
    big["seconds_per_step"] = 3e13 / (H100_BF16 * utilisation)  # 101 ms of arithmetic, 24 ms of launches
    slower = {**big, "seconds_per_step": big["seconds_per_step"] * 1.5}  # a worse run of the same step
    return [launch, big, slower]


def test_fit_recovers_the_constants_each_step_binds():
    fitted = cost.fit_constants(_measured_table(), "H100")
    assert fitted["op_us"] == pytest.approx(8.0) and fitted["utilisation"] == pytest.approx(0.3)
    assert cost.fit_constants(_measured_table(), None)["utilisation"] is None  # no datasheet peak on a CPU
    assert cost.fit_constants(_measured_table(), "H200")["utilisation"] == pytest.approx(0.3)  # H100's peaks


def test_gpu_model_from_device_names():
    assert cost.gpu_model("NVIDIA H100 80GB HBM3") == "H100" and cost.gpu_model("NVIDIA H200") == "H200"
    assert cost.gpu_model("NVIDIA A100-SXM4-80GB") == "A100" and cost.gpu_model("NVIDIA GeForce RTX 4090") is None


def _plan(tmp_path, bench_dir, capsys) -> str:
    capsys.readouterr()  # what was printed before
    main(["plan", "nbs_sync", f"out_dir={tmp_path / 'runs'}", "--scale", "gpu", "--bench", str(bench_dir)])
    return capsys.readouterr().out


def test_bench_writes_constants_and_the_plan_uses_them_only_on_their_gpu(tmp_path, capsys, monkeypatch):
    """A real (tiny) preset bench on this CPU writes plan_constants_cpu.json; the plan keeps its assumed values.
    The same plan on an H100 with a measured H100 file prices every job with that file's constants."""
    rows = bench_preset(["nbs cpu"], ["baseline"], n_batches=1, rounds=1, device="cpu")
    assert rows[0]["steps_per_s"] > 0 and rows[0]["ops_per_step"] > 100 and rows[0]["ratio_vs_baseline"] == 1.0
    written = json.loads(write_plan_constants(rows, provenance("cpu"), tmp_path).read_text())
    assert written["gpu"] is None and written["utilisation"] is None and written["op_us"] > 0
    assumed = _plan(tmp_path, tmp_path, capsys)
    assert "at 0.1 of peak and 10 us per operator (assumed;" in assumed

    h100 = {"gpu": "H100", **cost.fit_constants(_measured_table(), "H100"), "date": "2026-12-07 20:00 UTC"}
    cost.constants_file(tmp_path, "H100").write_text(json.dumps(h100))
    assert _plan(tmp_path, tmp_path, capsys) == assumed  # not on an H100: the file is not this machine's
    monkeypatch.setattr(cost, "present_gpu", lambda: "H100")
    measured = _plan(tmp_path, tmp_path, capsys)
    assert "at 0.3 of peak and 8 us per operator (measured on this H100 by make bench" in measured
    job = next(line for line in measured.splitlines() if line.lstrip().startswith("#0"))
    nbs_sync = cost.job_cost(_first_job_config(tmp_path))
    assert f"{nbs_sync.gpu_hours('H100', utilisation=0.3, op_us=8.0):7.3f} GPU-h" in job  # priced on the H100


def _first_job_config(tmp_path):
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from bnlab import CONF_DIR
    from bnlab.plan import job_config, sweep_overrides

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        overrides = ["experiment=nbs_sync", "scale=gpu", f"out_dir={tmp_path / 'runs'}"]
        master = loader.load_configuration(config_name="train", overrides=overrides, run_mode=RunMode.MULTIRUN)
        return job_config(master, loader, sweep_overrides(master, loader)[0])
