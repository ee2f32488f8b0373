"""What only a GPU can check: fp16 autocast with its GradScaler, channels_last, NCCL Sync BN, the DeviceLoader on the
device, and one study's GPU preset for real. Skipped by name where there is no CUDA; `make test` on a GPU box runs
them. (The GradScaler's arithmetic is checked on CPU below, in every suite.)"""

from __future__ import annotations

import pytest
import torch

from bnlab.runner import run
from bnlab.train.accumulate import GradientAccumulator
from bnlab.train.run_dir import RunDir

NO_CUDA = "needs a CUDA device (run on a GPU box: make test)"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
needs_2_gpus = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (NCCL Sync BN)"
)


def _weights(summary) -> dict[str, torch.Tensor]:
    state = torch.load(RunDir(summary["run_dir"]).checkpoint, weights_only=False, map_location="cpu")["model"]
    return {k.removeprefix("module."): v for k, v in state.items() if v.dtype.is_floating_point}


def _max_diff(a, b) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_grad_scaler_step_equals_the_plain_step():
    """Scaling the loss by a power of two and unscaling the gradients is exact: the same update as without it,
    also for a short last accumulation group (rescaled after unscaling)."""
    torch.manual_seed(0)
    x, y = torch.randn(12, 5), torch.randint(0, 3, (12,))
    models = [torch.nn.Linear(5, 3) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())

    class NoSchedule:
        def step_batch(self):
            pass

    for model, scaler in zip(models, (None, torch.amp.GradScaler("cpu", init_scale=2.0**10))):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        acc = GradientAccumulator(opt, NoSchedule(), 2, 3, scaler)  # 3 micro-batches: groups of 2 and 1
        for chunk in range(3):
            sl = slice(4 * chunk, 4 * chunk + 4)
            acc.backward(torch.nn.functional.cross_entropy(model(x[sl]), y[sl]))
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.allclose(a, b, atol=1e-7)


@needs_cuda
def test_fp16_autocast_trains_with_a_grad_scaler(tiny_cfg):
    from bnlab.train.fast import grad_scaler

    cfg = tiny_cfg("device=cuda", "train.autocast=fp16")
    assert isinstance(grad_scaler(cfg.train, "cuda"), torch.amp.GradScaler)
    summary = run(cfg)
    assert summary["status"] == "completed" and summary["final"]["train_loss"] < 10


@needs_cuda
def test_channels_last_matches_the_default_layout_after_one_step(tiny_cfg):
    step = ("device=cuda", "train.epochs=1", "train.batches_per_epoch=1", "train.deterministic=true")
    plain = run(tiny_cfg("study=nchw", *step))
    nhwc = run(tiny_cfg("study=nhwc", "train.channels_last=true", *step))
    assert _max_diff(_weights(plain), _weights(nhwc)) < 1e-4  # different conv algorithms: rounding only


@needs_2_gpus
def test_nccl_sync_bn_over_two_gpus_matches_one_gpu(tiny_cfg):
    """test_distributed.py's comparison on GPUs: NBS 64 as 2 ranks x 32 (NCCL) = one GPU with batch 64."""
    step = ("device=cuda", "train.epochs=1", "train.batches_per_epoch=1", "train.deterministic=true")
    one = run(tiny_cfg("study=one", "norm.nbs=null", *step))
    two = run(tiny_cfg("study=two", "norm.nbs=64", "train.processes=2", *step))
    control = run(tiny_cfg("study=per_rank", "norm.nbs=32", *step))
    assert two["status"] == "completed"
    assert _max_diff(_weights(one), _weights(two)) < 1e-4  # TF32 convs: looser than CPU's 1e-5
    assert _max_diff(_weights(one), _weights(control)) > 1e-3


@needs_cuda
def test_device_loader_batches_live_on_the_gpu(tiny_cfg):
    from bnlab.data import build_data

    cpu, gpu = build_data(tiny_cfg(), "cpu"), build_data(tiny_cfg(), "cuda")
    for loader in (gpu.train, gpu.val):
        x, y = next(iter(loader))
        assert x.is_cuda and y.is_cuda and x.dtype == torch.float32
    (xc, yc), (xg, yg) = next(iter(cpu.val)), next(iter(gpu.val))  # no augmentation: the same numbers
    assert torch.equal(yc, yg.cpu()) and torch.allclose(xc, xg.cpu(), atol=1e-6)


@needs_cuda
def test_a_gpu_preset_trains_two_steps_on_the_gpu(tmp_path):
    from test_gpu_presets import gpu_preset_on_cpu

    cfg = gpu_preset_on_cpu("nbs", tmp_path)
    cfg.device = "cuda"
    summary = run(cfg)
    assert summary["status"] == "completed" and summary["step"] == 2


@needs_cuda
def test_training_steps_make_no_host_sync_between_logging_points(tiny_cfg):
    """What tests/test_host_sync.py counts on CPU, as the GPU reports it: every step of an augmented, Ghost BN,
    channels_last epoch runs under set_sync_debug_mode("error") except the logging point (the last step)."""
    from bnlab.train.build import build
    from bnlab.train.fast import prepare_training_model
    from bnlab.train.loop import train_one_epoch

    cfg = tiny_cfg("device=cuda", "train.batches_per_epoch=6", "data.crop_padding=2", "data.flip=true",
                   "norm.nbs=8", "train.channels_last=true")  # fmt: skip
    job = build(cfg, "cuda")
    net = prepare_training_model(job.model, cfg.train, "cuda")

    class Strict:  # the loader, with a sync an error in every step but the last
        device = job.data.train.device

        def set_epoch(self, epoch):
            job.data.train.set_epoch(epoch)

        def __len__(self):
            return len(job.data.train)

        def __iter__(self):
            last = len(job.data.train) - 1
            try:
                for i, batch in enumerate(job.data.train):  # batch 0's fetch made the epoch's one copy
                    torch.cuda.set_sync_debug_mode("default" if i == last else "error")  # the last step logs
                    yield batch
            finally:
                torch.cuda.set_sync_debug_mode("default")

    # check_every > steps: only the epoch's last step reads its loss
    train_one_epoch(net, Strict(), job.loss_fn, job.optimizer, job.schedule, 0, False, check_every=100)
