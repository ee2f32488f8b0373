"""A GPU sweep planned and checked on a machine without a GPU: `bnlab plan <study> --scale gpu` prices it, and
launching it stops once, before any job, with a named error (no per-job tracebacks, no _multirun folders)."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode

from bnlab import CONF_DIR
from bnlab.cli import main
from bnlab.cost import job_cost
from bnlab.plan import launcher_problem, plan_jobs
from conftest import run_entry_point
from test_studies import compose_point


def _master_and_jobs(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration(config_name="train", overrides=overrides, run_mode=RunMode.MULTIRUN)
        return master, plan_jobs(master, loader)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_sweep_without_cuda_fails_once_before_any_job(tmp_path):
    done = run_entry_point(["-m", "experiment=nbs_sync", "scale=gpu", f"out_dir={tmp_path / 'runs'}"], tmp_path)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "config key 'device': 'cuda' requested but CUDA is not available" in errors[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists()  # no _multirun/N folders, no run directories


def test_slurm_sweep_whose_jobs_need_other_ranks_is_refused():
    """ten_ways' sync arm has 4 ranks; the SLURM launcher gives every job of the sweep the sweep's own 1 task."""
    master, jobs = _master_and_jobs(["experiment=ten_ways", "scale=gpu", "hydra/launcher=slurm"])
    assert master.hydra.launcher.tasks_per_node == master.hydra.launcher.gpus_per_node == 1
    problem = launcher_problem(master, jobs)
    assert problem is not None and "arm/ten_ways=sync" in problem and "need 4 ranks" in problem
    master, jobs = _master_and_jobs(["experiment=ten_ways", "scale=gpu", "hydra/launcher=slurm", "arm/ten_ways=sync"])
    assert master.hydra.launcher.tasks_per_node == master.hydra.launcher.gpus_per_node == 4  # derived from the run
    assert launcher_problem(master, jobs) is None


def test_flops_per_image_are_measured_from_the_model():
    """ResNet-20 at full width on 32x32: about 41M multiply-adds per image (He et al. 2016), 2 FLOPs each."""
    cost = job_cost(compose_point("ten_ways", "gpu", []))
    assert 80e6 < cost.flops_per_image < 82.5e6
    assert cost.steps == 30 * (50000 // 16) and cost.gpus == 1
    assert cost.ops_per_step and cost.ops_per_step > 100  # counted on the meta device, at the job's batch
    # batches of 16: launching kernels, not arithmetic, bounds it, the same on every GPU type
    launch_bound = cost.micro_steps * cost.ops_per_step * 10e-6 / 3600
    assert cost.gpu_hours("A100") == cost.gpu_hours("H100") == pytest.approx(launch_bound)
    assert cost.gpu_hours("H100", op_us=0) < cost.gpu_hours("A100", op_us=0) < cost.gpu_hours("V100", op_us=0)


def test_plan_of_a_gpu_study_prints_gpus_steps_and_gpu_hours(capsys, tmp_path):
    main(["plan", "nbs_sync", f"out_dir={tmp_path}", "--scale", "gpu"])
    out = capsys.readouterr().out
    assert "5 jobs: 5 to do" in out and " 2 GPU " in out and "3240 steps" in out  # 90 epochs of 36 (Imagenette)
    assert "GPUs per job: 2" in out and "A100" in out and "H100" in out and "NVIDIA datasheets" in out


def test_plan_prices_an_imagenet100_study_from_the_class_list_alone(capsys, tmp_path):
    """data=imagenet100 reads the user's ImageNet folder: plan prices it without one (126,689 train images: 494 steps
    of 256 an epoch); another class list at ImageNet's 1300 train / 50 val a class."""
    main(["plan", "nbs", "data=imagenet100", f"data.root={tmp_path}", "norm.nbs=32", "seed=0", f"out_dir={tmp_path}",
          "--scale", "gpu"])  # fmt: skip
    out = capsys.readouterr().out
    assert "1 jobs: 1 to do" in out and f"{90 * (126689 // 256)} steps" in out and "H100" in out
    cfg = compose_point("nbs", "gpu", ["data=imagenet100", "data.classes=imagenette", "norm.nbs=32", "seed=0"])
    cost = job_cost(cfg)
    assert cost.steps == 90 * (10 * 1300 // 256) and cost.train_images == 90 * (10 * 1300 // 256) * 256
    assert 7.5e9 < cost.flops_per_image < 8.5e9  # ResNet-50 at 224 px: ~4.1G multiply-adds (He et al. 2016)


def test_a_study_without_scale_is_its_cpu_preset(capsys, tmp_path):
    """`bnlab plan nbs` (and `python -m bnlab.train experiment=nbs`) without scale=: the CPU preset, as make sweep's
    SCALE=cpu; before, every study whose model depends on the scale failed on `model/preset/nbs_None`."""
    main(["plan", "nbs", f"out_dir={tmp_path}"])
    default = capsys.readouterr().out
    main(["plan", "nbs", f"out_dir={tmp_path}", "--scale", "cpu"])
    assert default == capsys.readouterr().out and " to do" in default
    cfg = compose_point("forum_instability", "cpu", [])
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        assert compose("train", overrides=["experiment=forum_instability"]) == cfg
