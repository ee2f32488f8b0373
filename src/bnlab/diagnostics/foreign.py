"""`bnlab health CHECKPOINT --model module:callable --data module:callable | --images DIR`: a model bnlab did not build.

The user's code builds the model (`--model pkg.models:make_net`, or `path/to/file.py:make_net`, called without
arguments) and the data (`--data pkg.data:batches`, returning (train_batches, val_batches): iterables of tensors
or (x, y) pairs, e.g. DataLoaders) or an image folder gives it (`--images DIR`: DIR/train and DIR/val, or DIR/val
only / DIR itself for both, one subfolder per class, as torchvision's ImageFolder). The checkpoint may be a
state_dict, a dict holding one (under "state_dict", "model_state_dict", "model", "net", ...; Lightning's "model."
and DDP's "module." prefixes are removed when the keys need it) or, with `--full-pickle`, a pickled nn.Module.
Failures are named: CallableNotFoundError, CheckpointLoadError, StateDictMismatchError.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import torch
from torch import nn

from bnlab.diagnostics.diagnose import HealthInputError, HealthReport, diagnose
from bnlab.diagnostics.health import HealthConfig

STATE_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "network", "module", "weights")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class CallableNotFoundError(HealthInputError):
    """`module:callable` names a module that does not import or a callable it does not have."""


class CheckpointLoadError(HealthInputError):
    """The checkpoint file is missing, unreadable or holds no state_dict."""


class StateDictMismatchError(HealthInputError):
    """The checkpoint's state_dict does not fit the model the callable built."""


def load_callable(spec: str, what: str = "--model"):
    """'pkg.module:name' or 'path/to/file.py:name' -> the object (the current directory is importable, as with
    `python -m`)."""
    if ":" not in spec:
        raise CallableNotFoundError(f"{what} {spec!r}: expected module:callable, e.g. mypkg.models:build_model")
    mod_name, _, attr = spec.rpartition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.exists():
                raise CallableNotFoundError(f"{what} {spec!r}: file {path} not found")
            loader_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[path.stem] = module
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except CallableNotFoundError:
        raise
    except ModuleNotFoundError as e:
        msg = f"{what} {spec!r}: module {mod_name!r} not found ({e}); is it on PYTHONPATH?"
        raise CallableNotFoundError(msg) from e
    except Exception as e:
        raise CallableNotFoundError(f"{what} {spec!r}: importing {mod_name!r} failed: {type(e).__name__}: {e}") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CallableNotFoundError(f"{what} {spec!r}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CallableNotFoundError(f"{what} {spec!r}: {attr!r} is not callable")
    return obj


def build_model(spec: str) -> nn.Module:
    model = load_callable(spec, "--model")()
    if not isinstance(model, nn.Module):
        raise CallableNotFoundError(f"--model {spec!r} returned {type(model).__name__}, not an nn.Module")
    return model


def _is_state_dict(d) -> bool:
    return isinstance(d, dict) and bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def _find_state_dict(obj, path: Path) -> dict:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if _is_state_dict(obj):
        return obj
    if isinstance(obj, dict):
        for k in STATE_KEYS:
            if k in obj:
                return _find_state_dict(obj[k], path)
    keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    msg = f"checkpoint {path} holds no state_dict (top-level keys: {keys}; looked for {STATE_KEYS})"
    raise CheckpointLoadError(msg)


def _strip_prefix(state: dict, expected: set[str]) -> dict:
    if set(state) & expected:
        return state
    for prefix in ("module.", "model.", "_orig_mod.", "net."):
        stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if stripped and set(stripped) & expected:
            return stripped
    return state


def load_weights(model: nn.Module, path: str | Path, full_pickle: bool = False) -> None:
    """Load a checkpoint's state_dict into `model` (on CPU), strictly; named errors for every failure."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointLoadError(f"checkpoint {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not full_pickle)
    except Exception as e:  # truncated, garbage, or a pickle weights_only refuses
        hint = "" if full_pickle else " (a pickled model or custom objects need --full-pickle, for trusted files only)"
        raise CheckpointLoadError(f"checkpoint {path} does not load: {type(e).__name__}: {e}".strip() + hint) from e
    own = model.state_dict()
    state = _strip_prefix(_find_state_dict(obj, path), set(own))
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]  # fmt: skip
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:4]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:4]})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {shapes[:3]})")
        raise StateDictMismatchError(
            f"checkpoint {path} does not match the model: keys " + "; ".join(parts) + ". Does --model build the "
            "architecture that was saved (same widths, classes, layer names)?"
        )
    model.load_state_dict(state)


def load_data(spec: str):
    out = load_callable(spec, "--data")()
    if not (isinstance(out, list | tuple) and len(out) == 2):
        raise CallableNotFoundError(f"--data {spec!r} must return (train_batches, val_batches), got {type(out)}")
    return out


def image_folder(
    root: str | Path,
    batch_size: int = 32,
    image_size: int | None = None,
    grayscale: bool = False,
    normalize: bool = True,
    seed: int = 0,
):
    """(train, val) DataLoaders over an image folder: ROOT/train and ROOT/val (or valid/test) when present, else
    ROOT for both. Training batches shuffled (seeded), as a training loop draws them."""
    from torchvision import datasets, transforms

    root = Path(root)
    if not root.is_dir():
        raise HealthInputError(f"--images {root}: not a directory")
    sub = {p.name: p for p in root.iterdir() if p.is_dir()}
    train_dir = sub.get("train", root)
    val_dir = next((sub[k] for k in ("val", "valid", "validation", "test") if k in sub), train_dir)
    tf = []
    if grayscale:
        tf.append(transforms.Grayscale())
    if image_size:
        tf += [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
    tf.append(transforms.ToTensor())
    if normalize:
        mean, std = ((0.5,), (0.5,)) if grayscale else (IMAGENET_MEAN, IMAGENET_STD)
        tf.append(transforms.Normalize(mean, std))
    tf = transforms.Compose(tf)
    try:
        train, val = datasets.ImageFolder(train_dir, tf), datasets.ImageFolder(val_dir, tf)
    except (FileNotFoundError, RuntimeError) as e:
        raise HealthInputError(f"--images {root}: {e}") from e
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader
    return loader(train, batch_size, shuffle=True, generator=g), loader(val, batch_size, shuffle=False)


LOSSES = {"cross_entropy": nn.functional.cross_entropy, "mse": nn.functional.mse_loss}


def foreign_report(
    checkpoint: str | Path | None,
    model: str,
    data: str | None = None,
    images: str | Path | None = None,
    loss: str | None = None,
    device: str = "cpu",
    full_pickle: bool = False,
    image_options: dict | None = None,
    **overrides,
) -> tuple[HealthReport, nn.Module]:
    """Build the user's model, load the checkpoint, take their data, and diagnose."""
    if (data is None) == (images is None):
        raise HealthInputError("give the data as exactly one of --data module:callable or --images DIR")
    net = build_model(model)
    if checkpoint is not None:
        load_weights(net, checkpoint, full_pickle)
    net.to(device)
    train, val = load_data(data) if data else image_folder(images, **(image_options or {}))
    loss_fn = None
    if loss:
        loss_fn = LOSSES.get(loss) or load_callable(loss, "--loss")
    cfg = HealthConfig(**overrides)
    return diagnose(net, train, val, loss_fn, config=cfg), net
