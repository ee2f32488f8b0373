"""`bnlab fetch`: download a dataset archive once, resuming where an interrupted download stopped (HTTP Range), check
the archive's published md5, extract it, and check every extracted file against the archive.

The partial download lives beside the archive as `<name>.part`; a rerun (or the next retry inside one call) asks the
server for the rest (`Range: bytes=<have>-`) and starts over only when the server ignores the range. After
extraction each file's SHA-256 is compared with the bytes the archive holds for it, and the list is kept as
`<folder>/SHA256SUMS` so that a later `bnlab fetch` of a present folder checks the files instead of downloading.
"""

from __future__ import annotations

import hashlib
import http.client
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bnlab.data.errors import DatasetNotFoundError

CHUNK = 1 << 20
MANIFEST = "SHA256SUMS"


@dataclass
class Archive:
    url: str
    md5: str | None  # the published checksum of the whole archive (None: not published)
    folder: str  # what it extracts to, under root


def archive_of(dataset: str, variant: str = "160px") -> Archive:
    """The official archive of a dataset, with the URL and md5 torchvision's readers use."""
    from torchvision.datasets import CIFAR10, CIFAR100, Imagenette

    if dataset in ("cifar10", "cifar100"):
        reader = CIFAR10 if dataset == "cifar10" else CIFAR100
        return Archive(reader.url, reader.tgz_md5, reader.base_folder)
    if variant not in Imagenette._ARCHIVES:
        raise DatasetNotFoundError(
            f"--variant: {variant!r} is not an Imagenette archive ({', '.join(Imagenette._ARCHIVES)})"
        )
    url, md5 = Imagenette._ARCHIVES[variant]
    return Archive(url, md5, Path(url).name.removesuffix(".tgz"))


def download(url: str, dest: Path, attempts: int = 5, say=print) -> Path:
    """`url` -> `dest`, resumed from `dest.part` after an interruption (up to `attempts` requests)."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(attempts):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                resumed = have and response.status == 206
                if have:
                    say(
                        f"[bnlab] resuming {dest.name} at {have} bytes"
                        if resumed
                        else f"[bnlab] {url}: no range support, restarting"
                    )
                length = response.headers.get("Content-Length")
                expected = (have if resumed else 0) + int(length) if length else None
                with open(part, "ab" if resumed else "wb") as f:
                    while chunk := response.read(CHUNK):
                        f.write(chunk)
            if expected is not None and part.stat().st_size < expected:  # the connection closed early
                raise ConnectionError(f"{part.stat().st_size} of {expected} bytes")
            part.replace(dest)
            return dest
        except (http.client.IncompleteRead, ConnectionError, TimeoutError, urllib.error.URLError) as e:
            if isinstance(e, urllib.error.HTTPError) and e.code == 416 and have:  # nothing left to send: complete
                part.replace(dest)
                return dest
            if isinstance(e, urllib.error.HTTPError):
                raise DatasetNotFoundError(f"{url}: HTTP {e.code} {e.reason}") from e
            say(
                f"[bnlab] download of {dest.name} interrupted ({type(e).__name__}); attempt {attempt + 2} of {attempts}"
            )
    raise DatasetNotFoundError(
        f"{url}: still incomplete after {attempts} attempts; rerun `bnlab fetch` to resume from {part}"
    )


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def extract_verified(archive: Path, root: Path) -> dict[str, str]:
    """Extract the tar archive under root; every extracted file must hash to the bytes the archive holds for it."""
    expected: dict[str, str] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.isfile():
                expected[member.name] = hashlib.sha256(tar.extractfile(member).read()).hexdigest()
        tar.extractall(root, filter="data")
    for name, digest in expected.items():
        if _digest(root / name, "sha256") != digest:
            raise DatasetNotFoundError(f"{root / name}: extracted file differs from {archive.name}'s copy (disk full?)")
    return expected


def verify_manifest(folder: Path) -> int:
    """Check the files of a fetched folder against its SHA256SUMS; the number of files checked."""
    lines = (folder / MANIFEST).read_text().splitlines()
    for line in lines:
        digest, name = line.split("  ", 1)
        path = folder.parent / name
        if not path.is_file() or _digest(path, "sha256") != digest:
            raise DatasetNotFoundError(
                f"{path}: missing or changed since `bnlab fetch` (SHA256SUMS); delete {folder} and fetch again"
            )
    return len(lines)


def fetch(archive: Archive, root: Path, say=print) -> Path:
    """The dataset's folder under root: checked if fetched before, else downloaded (resumably), checked, extracted."""
    folder = root / archive.folder
    if (folder / MANIFEST).exists():
        say(f"[bnlab] {folder}: present, {verify_manifest(folder)} files match {MANIFEST}")
        return folder
    path = download(archive.url, root / Path(archive.url).name, say=say)
    if archive.md5 and (got := _digest(path, "md5")) != archive.md5:
        path.unlink()
        raise DatasetNotFoundError(f"{path}: md5 {got} is not the published {archive.md5}; deleted, fetch again")
    files = extract_verified(path, root)
    lines = [f"{digest}  {name}" for name, digest in sorted(files.items())]
    (folder / MANIFEST).write_text("\n".join(lines) + "\n")
    say(f"[bnlab] {len(files)} files extracted from {path.name} and checked (SHA-256 list: {folder / MANIFEST})")
    path.unlink()  # the archive is no longer needed: the folder and its checksums are what runs read
    return folder
