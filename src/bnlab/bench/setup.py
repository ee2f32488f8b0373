"""The training setups the benchmarks time: a config of the CPU preset, built as a run builds it, and the plain
reference loop (forward, cross-entropy, SGD: nothing else) beside bnlab's own epoch function."""

from __future__ import annotations

import time

import torch


def compose(model: str, extra: list[str] = ()):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from bnlab import CONF_DIR

    overrides = [f"model={model}", "scale=cpu", "device=cpu", "logger=none", "train.progress=false", *extra]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


class Setup:
    """Model, optimizer, schedule, loss and data of one config, as bnlab.runner.run builds them."""

    def __init__(self, model: str, extra: list[str] = ()):
        from bnlab.data import build_data
        from bnlab.models import build_model
        from bnlab.norm import build_norm
        from bnlab.train.fast import prepare_training_model
        from bnlab.train.losses import build_loss
        from bnlab.train.optim import Schedule, build_optimizer

        self.cfg = cfg = compose(model, extra)
        torch.manual_seed(0)
        self.data = build_data(cfg, "cpu")
        self.model = build_model(cfg.model, build_norm(cfg.norm), self.data.in_channels, self.data.num_classes)
        self.optimizer = build_optimizer(cfg.optim, self.model)
        self.schedule = Schedule(cfg.schedule, self.optimizer, len(self.data.train), int(cfg.train.epochs))
        self.loss_fn = build_loss(cfg.loss, self.data.num_classes)
        self.net = prepare_training_model(self.model, cfg.train, "cpu")


def plain_batches(setup: Setup, n: int):
    """The same images as bnlab's loader, normalized once, as a list of in-memory (x, y) batches."""
    loader = setup.data.train
    b = int(setup.cfg.train.batch_size)
    x_all = loader.transform(loader.images[: n * b])
    y_all = loader.labels[: n * b]
    return [(x_all[i * b : (i + 1) * b].contiguous(), y_all[i * b : (i + 1) * b]) for i in range(n)]


def run_plain(model, batches, lr: float) -> float:
    """The reference: forward, cross-entropy, SGD step; nothing else. Returns seconds."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    t0 = time.perf_counter()
    for x, y in batches:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def run_bnlab(setup: Setup, n: int) -> float:
    """bnlab's training epoch function on bnlab's loader, `n` batches. Returns seconds."""
    from bnlab.train.loop import train_one_epoch

    setup.data.train.batch_sampler.batches_per_epoch = n
    t0 = time.perf_counter()
    train_one_epoch(setup.net, setup.data.train, setup.loss_fn, setup.optimizer, setup.schedule, 0, False)
    return time.perf_counter() - t0
