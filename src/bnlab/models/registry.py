"""The model registry (its own module, so model files register themselves without importing the package)."""

from bnlab.registry import Registry

MODELS = Registry("model", runtime=("norm", "in_channels", "num_classes"))
register = MODELS.register
