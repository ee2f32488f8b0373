"""What a run prints: one line per epoch that fits a terminal (~100 characters); metrics.csv has every value."""

from __future__ import annotations

from bnlab.health_events import EVENTS


def _val_errors(row: dict) -> str:
    """`running 14.2 batch 13.9 precise 512:13.1 2048:13.0` from the row's val_err_* (percent)."""
    parts, last = [], None
    for key, v in row.items():
        if not key.startswith("val_err_") or not isinstance(v, float):
            continue
        mode, _, size = key[len("val_err_") :].partition("_")
        value = f"{100 * v:.1f}"
        parts.append(f"{size}:{value}" if size and mode == last else f"{mode} {size + ':' if size else ''}{value}")
        last = mode
    return " ".join(parts)


def format_row(row: dict, epochs: int | None = None) -> str:
    """One console line of ~100 characters: epoch, lr, training loss, then error rates (%) of training and of each
    validation mode; validation losses, health/... and the rest are in metrics.csv."""
    text = (
        f"epoch {row['epoch']}{f'/{epochs}' if epochs else ''} lr {row['lr']:.3g} loss {row['train_loss']:.4g} | "
        f"err% train {100 * row['train_err']:.1f} {_val_errors(row)} | {row.get('epoch_time', 0.0):.0f}s"
    )
    events = [k.replace("_", " ") for k in EVENTS if row.get(f"health/{k}")]
    return text + (f"  BN-HEALTH: {', '.join(events)}" if events else "")
