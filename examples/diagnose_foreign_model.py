"""Diagnose a model bnlab did not build: the forum case ("Batch norm instability", claim C4) in plain PyTorch.

A small MobileNet-style net (pointwise conv -> BN -> ReLU -> depthwise 3x3 -> BN -> ReLU blocks) is trained with
the forum study's recipe, written here without bnlab: Fashion-MNIST with classes 5-9 kept at 5% and oversampled
back, batches of 40, Adam at a high lr (2e-2), BN defaults (momentum 0.1, eps 1e-5). At that lr some channels
die: the ReLU before a depthwise conv zeroes them on every training image, so the BN after it sees a constant and
its running_var shrinks by 0.9 per step toward float32's fixed point 5.6e-45 (seed 0 reaches it at step 1200,
seed 1, the default, is at 7.6e-36 and has the thread's symptom: eval-mode val loss 0.5 above train-mode). The
only bnlab code used is the diagnosis at the end:

    from bnlab.diagnostics import diagnose
    report = diagnose(model, train_data, val_data, loss_fn)

Run (1-2 minutes on one core):  PYTHONPATH=src python examples/diagnose_foreign_model.py [--steps 1200]
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bnlab.diagnostics import diagnose

ROOT = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(read_idx(root / f"{split}-images-idx3-ubyte.gz").copy()).float().div(255)
    y = torch.from_numpy(read_idx(root / f"{split}-labels-idx1-ubyte.gz").copy()).long()
    return ((x - 0.286) / 0.353).unsqueeze(1), y


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.pw, self.bn_pw = nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        self.dw = nn.Conv2d(c_out, c_out, 3, stride, 1, groups=c_out, bias=False)
        self.bn_dw = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return self.bn_dw(self.dw(self.bn_pw(self.pw(x)).relu())).relu()


class Net(nn.Module):
    def __init__(self, widths=(16, 32, 64, 64), strides=(2, 2, 2, 1)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        c, blocks = 16, []
        for w, s in zip(widths, strides, strict=True):
            blocks.append(Block(c, w, s))
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--lr", type=float, default=2e-2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--root", default=str(ROOT))
    p.add_argument("--json", default=None, help="also write the report as JSON")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    x, y = fashion_mnist(Path(args.root), "train")
    g = torch.Generator().manual_seed(args.seed)
    keep = (y < 5) | (torch.rand(len(y), generator=g) < 0.05)  # classes 5-9 rare, as the forum's imbalance
    x, y = x[keep], y[keep]
    weights = torch.where(y < 5, 1.0, (y < 5).sum() / (y >= 5).sum())  # oversampled back to equal shares
    vx, vy = fashion_mnist(Path(args.root), "t10k")

    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.functional.cross_entropy
    last_bn = model.blocks[-1].bn_dw
    t0 = time.time()
    model.train()
    for step in range(1, args.steps + 1):
        idx = torch.multinomial(weights, 40, replacement=True, generator=g)
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 300 == 0:
            rv = last_bn.running_var
            print(f"step {step:5d}  train loss {loss.item():.3f}  last BN running_var min {rv.min().item():.3g}")
    print(f"trained {args.steps} steps in {time.time() - t0:.0f} s\n")

    # the diagnosis: 8 training batches drawn as training drew them, 25 validation batches of 40 (1000 images)
    train_data = [(x[i], y[i]) for i in (torch.multinomial(weights, 40, True, generator=g) for _ in range(8))]
    val_data = [(vx[i : i + 40], vy[i : i + 40]) for i in range(0, 1000, 40)]
    report = diagnose(model, train_data, val_data, loss_fn, batches=8, val_batches=25)
    print(report)
    if args.json:
        report.to_json(args.json)


if __name__ == "__main__":
    main()
