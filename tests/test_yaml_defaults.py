"""The YAML is the only source of a default: a `.get(key, default)` fallback on a config section in src/ must not
say something else than a conf/ file that defines the key (Imagenette's num_workers was 8 in its YAML and 0 in the
code that read it; `flip` fell back to False on one path and True on another)."""

from __future__ import annotations

import ast
from pathlib import Path

from omegaconf import OmegaConf

from bnlab import CONF_DIR, REPO_ROOT

CONF = Path(CONF_DIR)
FIXED = ("train", "eval", "finetune", "health")  # sections of conf/train.yaml itself
GROUPS = ("data", "norm", "sampler", "logger", "domains", "optim", "model", "schedule", "loss")

# what a receiver's source text is a config section of; names that hold one section in their file
RECEIVERS = {
    "train_cfg": "train",
    "dcfg": "data",
    "scfg": "sampler",
    "lcfg": "logger",
    "hcfg": "health",
    "ft": "finetune",
    "norm": "norm",
    "cfg.get('eval', {})": "eval",
    "cfg.get('norm', {})": "norm",
}
PER_FILE = {  # files whose `cfg` is one section (data/glyphs: only conf/data/glyphs.yaml reaches it)
    "data/glyphs.py": {"cfg": "data/glyphs"},
    "data/samplers/label_pairs.py": {"cfg": "sampler"},
    "data/samplers/oversampled.py": {"cfg": "sampler"},
    "data/domains.py": {"d": "domains"},
}


def _section(receiver: str, file: str) -> str | None:
    if receiver in PER_FILE.get(file, {}):
        return PER_FILE[file][receiver]
    if receiver in RECEIVERS:
        return RECEIVERS[receiver]
    head, _, last = receiver.rpartition(".")
    if head in ("cfg", "self.cfg") and last in (*FIXED, *GROUPS):
        return last
    return None


def fallbacks() -> list[tuple[str, int, str, str, object]]:
    """(file, line, section, key, default) of every `<config section>.get("key", <constant>)` in src/bnlab."""
    src = REPO_ROOT / "src" / "bnlab"
    out = []
    for path in sorted(src.rglob("*.py")):
        file = path.relative_to(src).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"):
                continue
            if len(node.args) != 2 or not all(isinstance(a, ast.Constant) for a in node.args):
                continue
            key, default = node.args[0].value, node.args[1].value
            section = _section(ast.unparse(node.func.value), file)
            if section is not None and isinstance(key, str):
                out.append((file, node.lineno, section, key, default))
    return out


def _load(path: Path) -> dict:
    """A conf file with its `defaults:` entries of the same folder merged under it (ghost.yaml builds on batch)."""
    node = OmegaConf.to_container(OmegaConf.load(path)) or {}
    merged: dict = {}
    for entry in node.pop("defaults", []):
        if isinstance(entry, str) and entry != "_self_":
            merged.update(_load(path.parent / f"{entry}.yaml"))
    merged.update(node)
    return merged


def yaml_values(section: str, key: str) -> dict[str, object]:
    """{conf file: value} of `key` in every file that defines it for `section` (a group's `name`: the choice of
    conf/train.yaml's defaults list, the one default among the group's files)."""
    top = OmegaConf.to_container(OmegaConf.load(CONF / "train.yaml"))
    if section in FIXED:
        return {"train.yaml": top[section][key]} if key in top.get(section, {}) else {}
    group, _, only = section.partition("/")
    if key == "name":
        choice = [e[group] for e in top["defaults"] if isinstance(e, dict) and group in e]
        return {"train.yaml defaults": choice[0]} if choice else {}
    files = [CONF / group / f"{only}.yaml"] if only else sorted((CONF / group).glob("*.yaml"))
    return {p.name: v[key] for p in files if key in (v := _load(p))}


def test_the_scan_sees_the_config_fallbacks():
    sections = {f[2] for f in fallbacks()}
    assert {"train", "eval", "data", "data/glyphs", "norm", "sampler", "domains"} <= sections, sections


def test_no_fallback_disagrees_with_the_yaml():
    wrong = [
        f"src/bnlab/{file}:{line} {section}.{key} falls back to {default!r}, {name} says {value!r}"
        for file, line, section, key, default in fallbacks()
        for name, value in yaml_values(section, key).items()
        if value != default
    ]
    assert not wrong, "read the key without a fallback (or make it agree):\n" + "\n".join(wrong)


# --- every group file names the code that reads it (issue 33) --------------------------------------------------
REGISTRIES = {  # group -> (module, registry name)
    "data": ("bnlab.data", "DATASETS"),
    "sampler": ("bnlab.data.samplers", "SAMPLERS"),
    "model": ("bnlab.models", "MODELS"),
    "norm": ("bnlab.norm", "NORMS"),
    "optim": ("bnlab.train.optim", "OPTIMIZERS"),
    "schedule": ("bnlab.train.optim", "SCHEDULES"),
    "loss": ("bnlab.train.losses", "LOSSES"),
}


def _resolve(dotted: str):
    """The object a dotted path names (module, then attributes), or a repository file that exists."""
    import importlib

    if "/" in dotted:
        assert (REPO_ROOT / dotted).is_file(), dotted
        return None
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # a package's attribute first (bnlab.data.synthetic: the function)
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            target = getattr(target, attr)
        return target
    return importlib.import_module(dotted)


def test_every_group_yaml_names_the_code_that_reads_it():
    """A `# read by: <module.callable>` line in each conf/<group>/*.yaml header; for a registry's group it is the
    constructor that `name:` selects (or the factory of a builder made inside one)."""
    import importlib

    from hydra import compose, initialize_config_dir

    from bnlab.norm.layer import load_layers

    load_layers()
    missing, wrong = [], []
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for path in sorted(CONF.rglob("*.yaml")):
            rel = path.relative_to(CONF)
            if len(rel.parts) < 2:
                continue
            header = [ln for ln in path.read_text().splitlines()[:3] if ln.startswith("# read by: ")]
            if not header:
                missing.append(str(rel))
                continue
            named = _resolve(header[0].removeprefix("# read by: ").split()[0])
            group = rel.parts[0]
            if group in REGISTRIES:
                module, attr = REGISTRIES[group]
                option = "/".join(rel.with_suffix("").parts[1:])  # model/preset/nbs_gpu.yaml -> preset/nbs_gpu
                fn = getattr(importlib.import_module(module), attr)[compose("train", [f"{group}={option}"])[group].name]
                same = named == fn or fn.__qualname__.startswith(f"{getattr(named, '__qualname__', '')}.<locals>")
                if not same:
                    wrong.append(f"{rel}: {header[0]} but {group}.name builds {fn.__qualname__}")
    assert not missing, f"no '# read by:' line: {missing}"
    assert not wrong, wrong
