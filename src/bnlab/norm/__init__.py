"""Normalization layers and the one factory every model uses to build them.

One file per idea: batchnorm (plain BN, the NBS knob), ghost (Ghost BN), sync (Sync BN), renorm (Batch Renorm),
frozen, separate (per-domain statistics), virtual (reference-batch BN), attach (domain ids and the reference batch reach
the layers through model hooks), precise (Precise / Adaptive BN), modes
(train/eval switching that leaves buffers untouched), stats (combining statistics of several pieces of data), group
(GroupNorm, LayerNorm), identity (none), layer (what bnlab asks of a norm layer, the registry and the one "is a BN
layer" predicate), factory (config -> layer), validate (config checks several layers share).

Adding a norm: its file (a `NormLayer` subclass with `config_name`, `from_config`, `check_config` and its traits;
norm/layer.py says which) and conf/norm/<name>.yaml, plus its tests. Nothing else imports it by name.

The ten ways to do BatchNorm (Wu, "Devils in BatchNorm", summary slide). Plain BN is `norm=batch`: batch
statistics of each device's batch normalize in training, they update the EMA, and the EMA normalizes at test.

| way (slide question)              | file:symbol                     | config switch                         |
|-----------------------------------|---------------------------------|---------------------------------------|
| EMA stats in training (which mu)  | batchnorm.py:BatchNorm2d        | norm.train_stats=running              |
| Batch Renorm (which mu)           | renorm.py:BatchRenorm2d         | norm=renorm                           |
| Sync BN (how mu_B: all devices)   | sync.py:sync_batch_norm         | norm.nbs > batch/N, train.processes=N |
| Ghost BN (how mu_B: split batch)  | ghost.py:ghost_batch_norm       | norm=ghost (norm.nbs < batch)         |
| Virtual BN (how mu_B: +reference) | virtual.py:attach_reference_batch | norm=virtual (norm.reference_size)  |
| No EMA update (whether to update) | batchnorm.py:BatchNorm2d        | norm.update_stats=false               |
| Separate BN (update per domain)   | separate.py:SeparateBatchNorm2d | norm=separate domains=shifted         |
| Precise BN (what at test)         | precise.py:precise_bn           | eval.modes=[..,precise]               |
| Adaptive BN (test: target data)   | precise.py:adaptive_bn          | eval.modes=[..,adaptive]              |
| Frozen BN (test / fine-tuning)    | frozen.py:FrozenBatchNorm2d     | norm=frozen; freeze_batchnorm(m)      |

Batch statistics at test time (BN in training mode on test batches) are eval.modes: [batch] (train/evaluate.py).
"""

from bnlab.norm.attach import attach_norm_inputs
from bnlab.norm.batchnorm import BatchNorm2d, no_stats_update
from bnlab.norm.factory import NORMS, build_norm
from bnlab.norm.frozen import FrozenBatchNorm2d, freeze_batchnorm
from bnlab.norm.layer import NormLayer, batchnorm_layers, has_running_stats, is_batchnorm, load_layers
from bnlab.norm.precise import adaptive_bn, frozen_ema, precise_bn
from bnlab.norm.renorm import BatchRenorm2d
from bnlab.norm.separate import SeparateBatchNorm2d, route_domains, set_domain, use_domain
from bnlab.norm.validate import validate_norm
from bnlab.norm.virtual import attach_reference_batch, virtual_bn

load_layers()  # every layer file registers its config name (norm/layer.py)

__all__ = [
    "NORMS",
    "BatchNorm2d",
    "BatchRenorm2d",
    "FrozenBatchNorm2d",
    "NormLayer",
    "SeparateBatchNorm2d",
    "adaptive_bn",
    "attach_norm_inputs",
    "attach_reference_batch",
    "batchnorm_layers",
    "build_norm",
    "freeze_batchnorm",
    "frozen_ema",
    "has_running_stats",
    "is_batchnorm",
    "no_stats_update",
    "precise_bn",
    "route_domains",
    "set_domain",
    "use_domain",
    "validate_norm",
    "virtual_bn",
]
