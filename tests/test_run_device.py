"""Analyses of a trained run (experiments/hessian) measure it on the device it trained on, not always the CPU."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from bnlab.train.trained import run_device


def test_a_run_is_measured_on_its_own_device_or_on_the_cpu_without_cuda():
    cuda = torch.cuda.is_available()
    assert run_device(OmegaConf.create({"device": "cpu"})) == "cpu"
    assert run_device(OmegaConf.create({"device": "auto"})) == ("cuda" if cuda else "cpu")
    assert run_device(OmegaConf.create({"device": "cuda:1"})) == ("cuda:1" if cuda else "cpu")
