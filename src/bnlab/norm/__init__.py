"""Normalization layers and the one factory every model uses to build them.

One file per idea: batchnorm (plain / Ghost BN, the NBS knob), sync (Sync BN), renorm (Batch Renorm), frozen,
separate (per-domain statistics), virtual (reference-batch BN), attach (domain ids and the reference batch
reach the layers through model hooks), precise (Precise / Adaptive BN), stats (the
sums -> mean/var formula they share), factory (config -> layer), validate (config checks).
"""

from bnlab.norm.attach import attach_norm_inputs
from bnlab.norm.batchnorm import BatchNorm2d, no_stats_update
from bnlab.norm.factory import NORMS, build_norm
from bnlab.norm.frozen import FrozenBatchNorm2d, freeze_batchnorm
from bnlab.norm.precise import adaptive_bn, batchnorm_layers, precise_bn
from bnlab.norm.renorm import BatchRenorm2d
from bnlab.norm.separate import SeparateBatchNorm2d, route_domains, set_domain, use_domain
from bnlab.norm.validate import validate_norm
from bnlab.norm.virtual import attach_reference_batch, virtual_bn

__all__ = [
    "NORMS",
    "BatchNorm2d",
    "BatchRenorm2d",
    "FrozenBatchNorm2d",
    "SeparateBatchNorm2d",
    "adaptive_bn",
    "attach_norm_inputs",
    "attach_reference_batch",
    "batchnorm_layers",
    "build_norm",
    "freeze_batchnorm",
    "no_stats_update",
    "precise_bn",
    "route_domains",
    "set_domain",
    "use_domain",
    "validate_norm",
    "virtual_bn",
]
