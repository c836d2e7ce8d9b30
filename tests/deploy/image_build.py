"""Builds the product image with scripts/build-image, as an operator would; the script itself
skips the build when the image of the current sources exists."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "build-image"
BUILD_TIMEOUT = 900  # a first build: debootstrap, wheels from the index, docker build
_HINT = "install docker.io and debootstrap (apt-get install docker.io debootstrap)"


@dataclass(frozen=True)
class Build:
    image: str
    output: str  # the script's messages (stderr)


def build_image() -> Build:
    if shutil.which("docker") is None:
        pytest.fail(f"the `docker` command is missing; {_HINT}", pytrace=False)
    try:
        result = subprocess.run(
            [str(SCRIPT)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"scripts/build-image took over {BUILD_TIMEOUT}s: {exc}", pytrace=False)
    if result.returncode != 0:
        pytest.fail(
            f"scripts/build-image exited with {result.returncode}:\n"
            f"{result.stderr}\n{result.stdout}",
            pytrace=False,
        )
    return Build(image=result.stdout.strip().splitlines()[-1], output=result.stderr)
