"""Every study's GPU preset (conf/scale/gpu.yaml + conf/study_scale/<study>_gpu.yaml) trains two steps on CPU at
its real model, batch sizes, samplers and eval modes, on a stand-in for its dataset written here with the same
shapes (CIFAR-10's pickle batches of 3x32x32 images; the glyphs at all 808 classes, fewer images each).

Only the device and the amount of data change: a GPU sweep's first job no longer fails on a shape, a sampler or an
eval setting that the CPU presets never reach. The large ones are slow-marked (`make test-slow`)."""

from __future__ import annotations

import math

import pytest
from omegaconf import open_dict

from bnlab.runner import run
from test_data_cifar import write_cifar10, write_cifar100
from test_data_imagenette import write_imagenette
from test_studies import STUDIES, compose_point, sweep_grid

IMAGENETTE_WNIDS = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042",
                    "n03425413", "n03445777", "n03888257"]  # all 10 classes: the preset's output layer  # fmt: skip

# 2 steps at full size on a loaded 2-core CPU: ten_ways 7 s stays in the fast suite; the rest took 15 s (renorm_small)
# to 208 s (nbs_sync: batch 1024 over 2 gloo ranks) and run in `make test-slow`
FAST = {"ten_ways"}


def gpu_preset_on_cpu(study: str, tmp_path, point: list[str] | None = None):
    """The study's first GPU grid point (or `point`), on CPU, 2 optimizer steps, on stand-in data in tmp_path."""
    cfg = compose_point(study, "gpu", point if point is not None else sweep_grid(study, "gpu")[0])
    assert cfg.preset == "gpu" and str(cfg.device).startswith("cuda")
    train_bs = int(cfg.train.batch_size) * int(cfg.train.get("accumulate") or 1)
    eval_bs = int(cfg.eval.get("batch_size") or cfg.train.batch_size)
    with open_dict(cfg):
        cfg.device = "cpu"
        # the GPU preset's bf16 autocast on a CPU without bf16 units runs reference kernels (one ResNet-50 step took
        # minutes): the model and input shape are the preset's, the speed setting is the GPU's
        cfg.train.autocast = None
        cfg.out_dir = str(tmp_path / "runs")
        cfg.logger.mode = "disabled"
        cfg.train.epochs = 1
        cfg.train.batches_per_epoch = 2 * int(cfg.train.get("accumulate") or 1)
        if cfg.data.name == "cifar10":
            per_batch = math.ceil(2 * train_bs / 5) + 8  # 5 training pickle batches hold 2 SGD batches and more
            write_cifar10(tmp_path / "cifar", per_batch=per_batch, n_test=max(eval_bs, 64))
            cfg.data.root, cfg.data.download, cfg.data.verify_checksums = str(tmp_path / "cifar"), False, False
            cfg.data.train_subset, cfg.data.val_subset = None, eval_bs  # one full eval batch
        elif cfg.data.name == "cifar100":  # 100 labels: label-pair batches need every label twice and more
            write_cifar100(tmp_path / "cifar", n_train=max(4 * train_bs, 400), n_test=max(eval_bs, 200))
            cfg.data.root, cfg.data.download, cfg.data.verify_checksums = str(tmp_path / "cifar"), False, False
            cfg.data.train_subset, cfg.data.val_subset = None, eval_bs
        elif cfg.data.name == "imagenette":  # JPEGs of the archive's layout, decoded at the preset's crop size
            per_class = math.ceil(2 * train_bs / 10) + 2
            write_imagenette(
                tmp_path / "inette", n_train=per_class, n_val=math.ceil(eval_bs / 10), wnids=IMAGENETTE_WNIDS
            )
            cfg.data.root, cfg.data.num_workers, cfg.data.stats_images = str(tmp_path / "inette"), 0, 20
            cfg.data.train_subset, cfg.data.val_subset = None, eval_bs
        elif cfg.data.name == "glyphs":  # every class the preset uses (the output layer), 2 + 2 images each
            cfg.data.cache_dir = str(tmp_path / "glyphs")
            cfg.data.train_per_class, cfg.data.test_per_class = 2, 2
        else:
            raise AssertionError(f"no stand-in for data={cfg.data.name}: add one here")
        if cfg.eval.get("precise_samples"):
            samples = cfg.eval.precise_samples
            cfg.eval.precise_samples = [train_bs] * len(samples) if not isinstance(samples, int) else train_bs
        if cfg.eval.get("train_images"):
            cfg.eval.train_images = eval_bs
    return cfg


def _params(study: str):
    return study if study in FAST else pytest.param(study, marks=pytest.mark.slow)


# the named variants of the GPU presets (README, "GPU presets"): the cheaper or CPU-design version of a study
VARIANTS = {
    "nbs_cifar": ("nbs", ["study_scale=nbs_cifar_gpu", "model=resnet20", "data=cifar10", "norm.nbs=2", "seed=0"]),
    "renorm_small_mlp": (
        "renorm_small",
        ["study_scale=renorm_small_mlp_gpu", "model=mlp_deep", "data=glyphs", "norm=batch", "norm.nbs=2", "seed=0"],
    ),  # fmt: skip
    "forum_dwsep": (
        "forum_instability",
        [
            "study_scale=forum_instability_dwsep_gpu",
            "model=dwsep",
            "data=cifar10",
            "arm/forum_instability=bn",
            "seed=0",
        ],
    ),  # fmt: skip
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_named_gpu_variant_trains_two_steps_on_cpu(variant, tmp_path):
    study, point = VARIANTS[variant]
    summary = run(gpu_preset_on_cpu(study, tmp_path, point))
    assert summary["status"] == "completed" and summary["step"] == 2, summary.get("reason")


@pytest.mark.parametrize("study", [_params(s) for s in STUDIES])
def test_gpu_preset_trains_two_steps_on_cpu(study, tmp_path):
    cfg = gpu_preset_on_cpu(study, tmp_path)
    summary = run(cfg)
    assert summary["status"] == "completed", summary.get("reason")
    assert summary["step"] == 2 and summary["epochs_completed"] == 1
    final = summary["final"]
    for mode in cfg.eval.modes:  # every eval mode of the preset produced a number
        assert any(k.startswith("val_err_") for k in final), mode
    assert 0.0 <= final["val_err_running"] <= 1.0
