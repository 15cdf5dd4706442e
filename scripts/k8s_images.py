"""Container images built here, no registry: the pod sandbox ("pause") and small static programs.

An image is an OCI image-layout archive (oci-layout, index.json, blobs/sha256/...) with one
uncompressed layer, written by the standard library, named by the `io.containerd.image.name`
annotation so that `ctr -n k8s.io images import ARCHIVE` registers it under that reference.
Archives are cached in <cache>/images/, keyed by the digest of their contents, so a second run
pays nothing:

    pause_image()                                  # Kubernetes' own build/pause/linux/pause.c
    go_program_image("localhost/probe:1", DIR)     # a static Go program (package in DIR)
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from k8s_build import CACHE_ROOT, K8S_VERSION, TOOLS_MODULE, K8sLocalError

IMAGE_CACHE = CACHE_ROOT / "images"
# The tag of build/pause/Makefile in this release (TAG ?= 3.10.1).
PAUSE_REF = "localhost/mailsluice-pause:3.10.1"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class ImageArchive:
    """An OCI archive on disk and the reference it is imported as."""

    path: Path
    ref: str


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(files: dict[str, bytes]) -> bytes:
    """A reproducible tar of executables at the given paths (no timestamps, owner root)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), 0o755, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _descriptor(media_type: str, blob: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": _digest(blob), "size": len(blob)}


def _blobs(ref: str, files: dict[str, bytes], entrypoint: list[str]) -> tuple[bytes, list[bytes]]:
    """The index.json and the blobs (layer, config, manifest) of a one-layer image."""
    layer = _layer(files)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": entrypoint, "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": _descriptor("application/vnd.oci.image.config.v1+json", config),
            "layers": [_descriptor(LAYER_TYPE, layer)],
        },
        sort_keys=True,
    ).encode()
    entry = _descriptor(MANIFEST_TYPE, manifest)
    entry["platform"] = {"architecture": "amd64", "os": "linux"}
    entry["annotations"] = {
        "io.containerd.image.name": ref,
        "org.opencontainers.image.ref.name": ref.rpartition(":")[2],
    }
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json"}
    index["manifests"] = [entry]
    return json.dumps(index, sort_keys=True).encode(), [layer, config, manifest]


def oci_archive(ref: str, files: dict[str, bytes], entrypoint: list[str]) -> ImageArchive:
    """Write (once) an OCI archive of one layer holding `files`; return it with its ref."""
    index, blobs = _blobs(ref, files, entrypoint)
    name = ref.rpartition("/")[2].replace(":", "_")
    path = IMAGE_CACHE / f"{name}-{hashlib.sha256(index).hexdigest()[:16]}.tar"
    if path.exists():
        return ImageArchive(path, ref)
    IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
    members = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index)]
    members += [(f"blobs/sha256/{_digest(blob)[7:]}", blob) for blob in blobs]
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for member, data in members:
            info = tarfile.TarInfo(member)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(path)
    return ImageArchive(path, ref)


def _kubernetes_source() -> Path:
    """The k8s.io/kubernetes module directory (downloaded by the Go build of the binaries)."""
    proc = subprocess.run(
        ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{K8S_VERSION}"],
        cwd=TOOLS_MODULE,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise K8sLocalError(f"go mod download k8s.io/kubernetes failed:\n{proc.stderr}")
    return Path(json.loads(proc.stdout)["Dir"])


def pause_binary() -> Path:
    """Kubernetes' pause.c compiled with gcc -static, cached by the source's digest."""
    source = _kubernetes_source() / "build" / "pause" / "linux" / "pause.c"
    # The flags of build/pause/Makefile (CFLAGS = -Os -Wall -Werror -static -DVERSION=...).
    flags = ["-Os", "-Wall", "-Werror", "-static"]
    flags.append(f"-DVERSION=v{PAUSE_REF.rpartition(':')[2]}-{K8S_VERSION}")
    key = hashlib.sha256(source.read_bytes() + " ".join(flags).encode()).hexdigest()[:16]
    out = IMAGE_CACHE / f"pause-{key}"
    if out.exists():
        return out
    gcc = shutil.which("gcc")
    if not gcc:
        raise K8sLocalError("gcc not found (Debian package 'gcc'; libc6-dev for -static)")
    IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    argv = [gcc, *flags, "-o", str(tmp), str(source)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise K8sLocalError(f"compiling pause.c failed:\n{proc.stderr}")
    subprocess.run(["strip", str(tmp)], check=False, capture_output=True)
    tmp.replace(out)
    return out


@functools.cache  # one `go mod download` per process
def pause_image() -> ImageArchive:
    """The pod sandbox image: /pause as entrypoint, reference PAUSE_REF."""
    return oci_archive(PAUSE_REF, {"/pause": pause_binary().read_bytes()}, ["/pause"])


def _tree_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def go_program_image(ref: str, package_dir: Path, name: str | None = None) -> ImageArchive:
    """A static Go program (main package in package_dir, its own go.mod) as an image whose
    entrypoint is /<name>; the build is cached by the digest of package_dir's files."""
    name = name or package_dir.name
    out = IMAGE_CACHE / f"{name}-{_tree_digest(package_dir)}"
    if not out.exists():
        IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=mod -buildvcs=false")
        argv = ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp), "."]
        proc = subprocess.run(
            argv, cwd=package_dir, env=env, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise K8sLocalError(f"go build in {package_dir} failed:\n{proc.stderr}")
        tmp.replace(out)
    return oci_archive(ref, {f"/{name}": out.read_bytes()}, [f"/{name}"])
