"""What bnlab asks a norm layer, asked in one place; each layer answers for itself, in its own file.

A layer class of bnlab subclasses `NormLayer` with `config_name=` the name of its conf/norm/<name>.yaml, which
registers it in `NORMS` (the package imports every module of bnlab.norm, so a new file needs no other edit):

    class MyNorm2d(NormLayer, nn.Module, config_name="mine"):
        is_batchnorm = True               # a BN layer (see `is_batchnorm` below)
        @classmethod
        def check_config(cls, cfg): ...   # the whole run config; raise ConfigError naming the key

Its answers, each with a default here:
- `from_config(**keys of the YAML, num_features, device, dtype)`: the constructor the YAML's keys call (the class);
- `check_config(cfg)`: errors before anything is built (config.validate -> norm.validate.validate_norm);
- `attach(model, cfg, data)`: hooks the layer needs on the model (Virtual BN's reference batch);
- `is_batchnorm`, `has_running_stats`: what the predicates below say;
- `batch_statistics()`: a context in which its training-mode forward normalizes by plain batch statistics
  (what Precise BN runs under: Batch Renorm with r = 1, d = 0, train_stats="batch");
- freezing (norm/frozen.py's freeze_batchnorm): a BN layer is replaced by FrozenBatchNorm2d.from_batchnorm; a
  layer that freezes another way defines `frozen(trainable_affine)` -> the module that replaces it;
- `why_not_stackable()`: why k copies cannot run under torch.func.vmap (train/stacked.py), or None.

Subclassing a layer keeps the contract: a `from_config(cls, *args, **kwargs)` that forwards to the class accepts
the class's keyword arguments (the registry follows `**kwargs` to the class's signature; a plain function taking
`**kwargs` must name its keys); BatchNorm2d's `check_config` checks only the keys the config holds, so a subclass
with fewer keys inherits it as it is; a BN subclass that overrides `forward` must define `frozen()`, or
`freeze_batchnorm` refuses it (Frozen BN would drop what its forward adds).

Layers bnlab did not write (torch's BatchNorm1d/2d/3d and SyncBatchNorm, GroupNorm, torchvision's
FrozenBatchNorm2d in a foreign model) get the same answers here, from what torch's classes are.
"""

from __future__ import annotations

import importlib
import pkgutil
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from bnlab.registry import Registry

# num_features comes from the model; device, dtype and process_group from the run, never from the config
NORMS = Registry("norm", runtime=("num_features", "device", "dtype", "process_group"))
LAYERS: dict[str, type] = {}  # config name -> layer class (NORMS holds its from_config)


class NormLayer:
    """A bnlab norm layer's answers about itself; subclasses override what differs (see the module docstring)."""

    config_name: ClassVar[str | None] = None
    is_batchnorm: ClassVar[bool] = False
    has_running_stats: ClassVar[bool] = False

    def __init_subclass__(cls, config_name: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if config_name is not None:
            cls.config_name = config_name
            LAYERS[config_name] = cls
            NORMS.register(config_name, cls.from_config if "from_config" in vars(cls) else cls)

    @classmethod
    def check_config(cls, cfg) -> None:
        """Raise ConfigError (naming the key) for `cfg.norm` values this layer would reject at the first batch."""

    @classmethod
    def attach(cls, model: nn.Module, cfg, data) -> None:
        """Hooks this norm needs on a model built for `data` (nothing by default)."""

    def batch_statistics(self):
        return nullcontext()

    def why_not_stackable(self) -> str | None:
        if getattr(self, "momentum", 0.1) is None and hasattr(self, "num_batches_tracked"):
            return momentum_none_reason()
        return None


def momentum_none_reason() -> str:
    return "momentum=None (cumulative average) reads num_batches_tracked as a Python number, which vmap cannot"


def momentum_problem(momentum, allow_none: bool = False) -> str | None:
    """The BN momentum rule, the weight of the new batch in the running statistics: a number in (0, 1] (None, the
    cumulative average, where the layer allows it). The problem as words, or None."""
    if momentum is None and allow_none:
        return None
    if isinstance(momentum, int | float) and not isinstance(momentum, bool) and 0 < momentum <= 1:
        return None
    return f"must be a number in (0, 1], got {momentum!r}"


def _torch_batchnorm(m: nn.Module) -> bool:
    bn = isinstance(m, nn.modules.batchnorm._BatchNorm)
    return bn and m.track_running_stats and m.running_mean is not None


def is_batchnorm(m: nn.Module) -> bool:
    """The one test of "is a BN layer": training normalizes by batch statistics, which move running statistics
    that evaluation uses. Precise / Adaptive BN recompute these layers, `frozen_ema` replays them and
    `freeze_batchnorm` replaces them. Separate BN is one (its active domain's statistics); Frozen BN is not (its
    statistics are constants: nothing to recompute or freeze), nor are GroupNorm / LayerNorm / InstanceNorm."""
    if isinstance(m, NormLayer):
        return m.is_batchnorm
    return _torch_batchnorm(m)


def has_running_stats(m: nn.Module) -> bool:
    """Normalizes by per-channel running statistics at evaluation: every BN layer and Frozen BN, whose running
    statistics the BN health monitor watches. A foreign layer counts when it holds 1-D running_mean/running_var
    tensors (torchvision's FrozenBatchNorm2d, InstanceNorm with track_running_stats)."""
    if isinstance(m, NormLayer):
        return m.has_running_stats
    rm, rv = getattr(m, "running_mean", None), getattr(m, "running_var", None)
    return isinstance(rm, torch.Tensor) and isinstance(rv, torch.Tensor) and rv.ndim == 1


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """Every BN layer of `model` (`is_batchnorm`), in module order."""
    return [m for m in model.modules() if is_batchnorm(m)]


@contextmanager
def batch_statistics(model: nn.Module):
    """Every layer of `model` normalizes by its batch statistics in training mode (each layer's own way)."""
    with ExitStack() as stack:
        for m in model.modules():
            if isinstance(m, NormLayer):
                stack.enter_context(m.batch_statistics())
        yield model


def why_not_stackable(m: nn.Module) -> str | None:
    """Why the norm layer `m` cannot run under torch.func.vmap with per-model state, or None."""
    if isinstance(m, NormLayer):
        return m.why_not_stackable()
    if isinstance(m, nn.SyncBatchNorm) or getattr(m, "process_group", None) is not None:
        return "Sync BN communicates across processes"
    if getattr(m, "momentum", 0.1) is None and hasattr(m, "num_batches_tracked"):
        return momentum_none_reason()
    return None


def load_layers() -> None:
    """Import every module of bnlab.norm, so that each layer file registers its config name."""
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__package__}.{info.name}")


def layer_class(name: str) -> type:
    load_layers()
    NORMS.lookup(name)
    return LAYERS[name]
