"""Read an OCI image archive (`buildah push IMAGE oci-archive:PATH`): its manifest, its
configuration, and its root filesystem unpacked, for checking an image without a container runtime.
Standard library only; unpacking needs root (file owners).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.extractfile(name)
    if member is None:
        raise ValueError(f"{name} is not a file in {tar.name}")
    return member.read()


def _blob(tar: tarfile.TarFile, digest: str) -> Any:
    return json.loads(_member(tar, "blobs/" + digest.replace(":", "/")))


def image_manifest(archive: Path) -> dict[str, Any]:
    """The OCI manifest of the archive's (first) image."""
    with tarfile.open(archive) as tar:
        index = json.loads(_member(tar, "index.json"))
        manifest: dict[str, Any] = _blob(tar, index["manifests"][0]["digest"])
    return manifest


def image_config(archive: Path) -> dict[str, Any]:
    """The OCI image configuration; its "config" holds User, Env, Entrypoint, Cmd, ExposedPorts,
    Labels."""
    digest = image_manifest(archive)["config"]["digest"]
    with tarfile.open(archive) as tar:
        config: dict[str, Any] = _blob(tar, digest)
    return config


def rootfs(archive: Path) -> Path:
    """The image's root filesystem, unpacked once into <archive folder>/rootfs/<archive stem>."""
    target = archive.parent / "rootfs" / archive.stem
    done = target / ".unpacked"
    if done.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent caller waits, then finds it unpacked
        if done.exists():
            return target
        scratch = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(scratch, ignore_errors=True)
        layout, root = scratch / "oci", scratch / "root"
        layout.mkdir(parents=True)
        root.mkdir()
        subprocess.run(["tar", "-xf", str(archive), "-C", str(layout)], check=True)
        for layer in image_manifest(archive)["layers"]:
            _apply_layer(layout / "blobs" / layer["digest"].replace(":", "/"), root)
        (root / ".unpacked").touch()
        shutil.rmtree(target, ignore_errors=True)
        root.replace(target)
        shutil.rmtree(scratch)
    return target


def _apply_layer(blob: Path, root: Path) -> None:
    # OCI whiteouts: `.wh.NAME` deletes NAME of the layers below and `.wh..wh..opq` empties its
    # folder; then the layer's files go on top (GNU tar: numeric owners, whiteouts left out).
    with tarfile.open(blob) as layer:
        names = [m.name for m in layer if os.path.basename(m.name).startswith(".wh.")]
    for name in names:
        folder, marker = os.path.split(os.path.normpath(name))
        if marker == ".wh..wh..opq":
            for child in (root / folder).iterdir() if (root / folder).is_dir() else ():
                _remove(child)
        else:
            _remove(root / folder / marker.removeprefix(".wh."))
    cmd = ["tar", "-xf", str(blob), "-C", str(root), "--numeric-owner", "--exclude=.wh.*"]
    subprocess.run(cmd, check=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
