"""The Dockerfiles' labels, and the images tests/images/build.sh builds from them with buildah (daemonless:
vfs storage, chroot isolation), opened read-only: their OCI config, their root filesystem, a command run
in them as the image's user.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.support import ROOT

BUILD_SCRIPT = ROOT / "tests" / "images" / "build.sh"
DOCKERFILES = {"operator": "operator/Dockerfile", "trainer": "trainer_image/Dockerfile"}


def labels(dockerfile: str) -> dict[str, str]:
    """The LABEL instruction of a Dockerfile (relative to the repository root) as a mapping."""
    text = (ROOT / dockerfile).read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith("LABEL ")]
    return dict(re.findall(r'([\w.]+)="([^"]*)"', line))


@dataclass(frozen=True)
class Image:
    name: str  # localhost/finetune-<operator|trainer>:<version>
    store: Path  # build.sh's store: vfs storage under store/storage

    def buildah(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        store = ("--root", str(self.store / "storage"), "--runroot", str(self.store / "run"))
        return subprocess.run(
            ["buildah", *store, "--storage-driver", "vfs", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def _ok(self, *args: str, timeout: float = 600) -> str:
        result = self.buildah(*args, timeout=timeout)
        assert result.returncode == 0, f"buildah {' '.join(args)}:\n{result.stderr}"
        return result.stdout

    def config(self) -> dict[str, Any]:
        """The OCI image configuration's `config` (User, Env, Entrypoint, Labels, ...)."""
        inspected = json.loads(self._ok("inspect", "--type", "image", self.name))
        config: dict[str, Any] = inspected["OCIv1"]["config"]
        return config

    @contextlib.contextmanager
    def container(self) -> Iterator[Container]:
        """A working container of the image (removed afterwards), with its root filesystem mounted."""
        name = self._ok("from", "--pull=never", self.name).strip()
        try:
            yield Container(self, name, Path(self._ok("mount", name).strip()))
        finally:
            self.buildah("rm", name)


@dataclass(frozen=True)
class Container:
    image: Image
    name: str
    rootfs: Path

    def run(self, *command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`command` in the container as the image's user (chroot isolation, the host's network)."""
        return self.image.buildah("run", "--isolation", "chroot", self.name, "--", *command, timeout=timeout)

    def size(self) -> int:
        """Bytes of the uncompressed root filesystem: regular files, each hard link counted once."""
        seen: set[tuple[int, int]] = set()
        total = 0
        for folder, _, files in os.walk(self.rootfs):
            for file in files:
                stat = os.lstat(os.path.join(folder, file))
                if (stat.st_mode & 0o170000) == 0o100000 and (stat.st_dev, stat.st_ino) not in seen:
                    seen.add((stat.st_dev, stat.st_ino))
                    total += stat.st_size
        return total


def build(image: str) -> Image:
    """Builds one image with tests/images/build.sh (the Debian base is cached; the image is rebuilt from the
    working tree each time) and returns it."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), image], capture_output=True, text=True, check=False, timeout=3600
    )
    assert result.returncode == 0, f"building the {image} image failed:\n{result.stderr[-20000:]}"
    version = labels(DOCKERFILES[image])["org.opencontainers.image.version"]
    return Image(f"localhost/finetune-{image}:{version}", Path(result.stdout.strip().splitlines()[-1]))
