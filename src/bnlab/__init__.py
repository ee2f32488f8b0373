"""bnlab: reproducible experiments and benchmarks for the pathologies of Batch Normalization."""

import os
from pathlib import Path

__version__ = "0.1.0"

# conf/ lives at the repository root (installed editable from src/); BNLAB_CONF overrides it.
REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = str(Path(os.environ.get("BNLAB_CONF", REPO_ROOT / "conf")).resolve())
