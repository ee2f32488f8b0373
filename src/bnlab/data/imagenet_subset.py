"""An ImageNet subset read from the ImageNet folder a user already has: the classes of a list in conf/data/classes/.

Layout under data.root, as torchvision's ImageFolder reads it: `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG` (the
validation images sorted into one folder per WordNet id). Only the listed classes are read, labelled in the list's
sorted order; a listed class missing from either split is named before anything is decoded.
"""

from __future__ import annotations

from pathlib import Path

from bnlab.data.errors import DatasetNotFoundError


def class_list(name_or_path: str) -> list[str]:
    """WordNet ids of a list: conf/data/classes/<name>.txt or a file path (one id a line, '#' comments)."""
    from bnlab import CONF_DIR

    path = Path(str(name_or_path)).expanduser()
    if not path.is_file():
        path = Path(CONF_DIR) / "data" / "classes" / f"{name_or_path}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in (Path(CONF_DIR) / "data" / "classes").glob("*.txt"))
        raise DatasetNotFoundError(
            f"data.classes: no class list {name_or_path!r} (lists: {', '.join(known)}; or a file path)"
        )
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [w for w in lines if w]


def open_subset(dcfg, split: str, transform=None):
    """torchvision ImageFolder over <root>/<split>, restricted to the listed classes."""
    from torchvision.datasets import ImageFolder

    wnids = sorted(class_list(dcfg.classes))
    if dcfg.get("root") is None:
        raise DatasetNotFoundError("data.root: set it to your ImageNet folder (train/<wnid>/, val/<wnid>/)")
    folder = Path(dcfg.root).expanduser() / split
    missing = [w for w in wnids if not (folder / w).is_dir()]
    if missing:
        raise DatasetNotFoundError(
            f"ImageNet subset {dcfg.classes!r}: {len(missing)} of its {len(wnids)} classes are not folders under "
            f"{folder} (first: {missing[0]}); data.root must hold train/<wnid>/ and val/<wnid>/ with .JPEG images"
        )

    class Listed(ImageFolder):
        def find_classes(self, directory):
            return wnids, {w: i for i, w in enumerate(wnids)}

    return Listed(str(folder), transform=transform)
