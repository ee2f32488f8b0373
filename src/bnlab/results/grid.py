"""A study's runs are the runs its sweep grid defines: `bnlab collect` keeps those and names the others.

The grid of a study is every point of `hydra.sweeper.params` of each experiment that writes into the study
(nbs and nbs_sync both write study nbs), composed with Hydra for the preset, exactly as `make sweep` composes it.
A run belongs to the study when its resolved config equals one grid point's in every key that makes a run's
identity (its hash; run_dir.identity_config). A run swept with extra overrides (`ARGS="optim.lr=0.05"`) matches
no point: it is left out, or with `--all` kept under a `variant` label naming the keys by which it differs from
the nearest grid point, so that a table never averages runs whose configs differ in more than seed and arm.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from bnlab import CONF_DIR

# keys some committed runs were hashed without (they predate the key), equal to runs that have them at this value
LEGACY_DEFAULTS: dict[str, object] = {"train.processes": 1}


def conf_dir() -> str:
    return CONF_DIR


def experiments(conf: str | None = None) -> list[str]:
    return sorted(p.stem for p in (Path(conf or conf_dir()) / "experiment").glob("*.yaml"))


def joined_study(name: str, conf: str | None = None) -> str:
    """The study whose runs an experiment writes: its `study` key, or that of the experiment it builds on (nbs_sync
    lists nbs in its defaults and joins study nbs). Any other name (a folder like nbs_demo) is itself."""
    path = Path(conf or conf_dir()) / "experiment" / f"{name}.yaml"
    if not path.exists():
        return name
    cfg = OmegaConf.load(path)
    if "study" in cfg:
        return str(cfg.study)
    bases = [d for d in cfg.get("defaults", []) if isinstance(d, str) and d != "_self_"]
    return joined_study(bases[0], conf) if bases else name


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def identity(cfg) -> dict[str, str]:
    """The keys that make a run's hash, flattened to 'a.b' -> JSON text (legacy keys at their default dropped)."""
    from bnlab.train.run_dir import identity_config

    flat = _flatten(identity_config(cfg))
    for key, value in LEGACY_DEFAULTS.items():
        if flat.get(key, value) == value:
            flat.pop(key, None)
    return {k: json.dumps(v, sort_keys=True, default=str) for k, v in flat.items()}


def _key(ident: dict[str, str]) -> str:
    return json.dumps(ident, sort_keys=True)


def _hydra(conf: str | None):
    from hydra import initialize_config_dir

    return initialize_config_dir(config_dir=str(conf or conf_dir()), version_base="1.3")


def grid_points(experiment: str, preset: str | None) -> list[list[str]]:
    """The sweep of `experiment=<experiment> scale=<preset>` as override lists, expanded by Hydra's basic sweeper
    (call inside `_hydra(conf)`)."""
    from hydra import compose
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hcfg = compose("train", overrides=_base(experiment, preset), return_hydra_config=True)
    params = OmegaConf.to_container(hcfg.hydra.sweeper.params or {})
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return BasicSweeper.split_arguments(parsed, None)[0] if parsed else [[]]


def _base(experiment: str, preset: str | None) -> list[str]:
    return [f"experiment={experiment}"] + ([f"scale={preset}"] if preset not in (None, "none") else [])


def compose_point(experiment: str, preset: str | None, point: list[str]):
    """One grid point's config (call inside `_hydra(conf)`)."""
    from hydra import compose

    return compose("train", overrides=[*_base(experiment, preset), *point])


def _updated(base, point: list[str]):
    """`base` with the point's overrides set, when they all change existing leaf values (norm.nbs=8, seed=1): the
    same config as composing them, without a compose per point (~0.5 s each). None when a point selects a config
    group (norm=group, arm/ten_ways=bn) or adds or deletes keys: those are composed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from omegaconf import Container

    cfg = base.copy()
    for o in OverridesParser.create().parse_overrides(point):
        key = o.key_or_group
        if o.type != OverrideType.CHANGE or o.package is not None or "/" in key or "." not in key and key not in cfg:
            return None
        try:
            current = OmegaConf.select(cfg, key, throw_on_missing=False, default=_MISSING)
        except Exception:
            return None
        if current is _MISSING or isinstance(current, Container):  # absent, or a group (norm=group)
            return None
        OmegaConf.update(cfg, key, o.value(), merge=False)
    return cfg


_MISSING = object()


@dataclass
class StudyGrid:
    """Every grid point of a study for some presets: (experiment, overrides, identity)."""

    study: str
    presets: list[str]
    points: list[tuple[str, list[str], dict[str, str]]] = field(default_factory=list)

    @classmethod
    def of(cls, study: str, preset: str = "cpu", conf: str | None = None) -> StudyGrid | None:
        """None when no experiment of conf/experiment writes this study (e.g. nbs_demo, a study=... of one's own)."""
        exps = [e for e in experiments(conf) if joined_study(e, conf) == study]
        if not exps:
            return None
        presets = ["cpu", "gpu", "none"] if preset == "all" else [preset]
        grid = cls(study, presets)
        with _hydra(conf):
            for exp in exps:
                for p in presets:
                    base = compose_point(exp, p, [])
                    for point in grid_points(exp, p):
                        cfg = _updated(base, point) or compose_point(exp, p, point)
                        grid.points.append((exp, point, identity(cfg)))
        grid._index = {_key(ident) for _, _, ident in grid.points}
        return grid

    @property
    def size(self) -> int:
        """Distinct runs the grid defines."""
        return len(self._index)

    @property
    def swept_keys(self) -> list[str]:
        """Config keys whose value differs between grid points (seed, the arms, the scale when several)."""
        keys = set().union(*(ident for _, _, ident in self.points))
        return sorted(k for k in keys if len({ident.get(k) for _, _, ident in self.points}) > 1)

    def contains(self, ident: dict[str, str]) -> bool:
        return _key(ident) in self._index

    def difference(self, ident: dict[str, str]) -> dict[str, tuple[str | None, str | None]]:
        """key -> (run's value, grid's value) against the nearest grid point: the fewest differing keys."""
        best: dict = {}
        for _, _, point in self.points:
            diff = {
                k: (ident.get(k), point.get(k)) for k in sorted(set(ident) | set(point)) if ident.get(k) != point.get(k)
            }
            if not best or len(diff) < len(best):
                best = diff
            if len(diff) <= 1:  # a run differs at least by what made it fall outside
                break
        return best


def variant_label(diff: dict[str, tuple[str | None, str | None]], skip=("seed",)) -> str:
    """'optim.lr=0.05' for a run that differs from the grid in optim.lr (comma-joined for several keys); '' for a
    run that differs only in its seed (another seed of a grid point: it may be averaged with the grid's)."""
    parts = []
    for key, (mine, _) in diff.items():
        if key not in skip:
            parts.append(f"{key}={'<unset>' if mine is None else json.loads(mine)}")
    return ",".join(parts)


def run_identity(run_dir: str | Path) -> dict[str, str] | None:
    """The identity of a run directory's config.yaml; None when it cannot be read."""
    try:
        return identity(OmegaConf.load(Path(run_dir) / "config.yaml"))
    except Exception:  # unreadable or half-written config: collect reports it as a problem
        return None
