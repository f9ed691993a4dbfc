"""`make image` (infra/images/build.sh) where no container engine is installed says what to
install, and the tags it prints are the chart's defaults."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
BUILD = ROOT / "infra" / "images" / "build.sh"


def test_without_podman_buildah_or_docker_it_says_what_to_install(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # the tools the script needs, and no container engine
    bin_dir.mkdir()
    for tool in ("bash", "sed", "head", "dirname", "git", "env"):
        found = shutil.which(tool)
        assert found
        (bin_dir / tool).symlink_to(found)
    out = subprocess.run(
        [str(bin_dir / "bash"), str(BUILD)],
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "install podman" in out.stderr and "apt-get install" in out.stderr
    assert out.stdout == ""


def test_the_tags_follow_the_project_version_and_the_chart_defaults() -> None:
    tags = subprocess.run(
        ["bash", str(BUILD), "--print-tags"], capture_output=True, text=True, check=True
    ).stdout.split()
    values = yaml.safe_load((ROOT / "infra" / "helm" / "lanes" / "values.yaml").read_text())
    chart = yaml.safe_load((ROOT / "infra" / "helm" / "lanes" / "Chart.yaml").read_text())
    version = next(
        line.split('"')[1]
        for line in (ROOT / "pyproject.toml").read_text().splitlines()
        if line.startswith("version = ")
    )
    image = values["image"]
    assert chart["appVersion"] == version and image["tag"] == ""  # the tag: appVersion
    assert tags == [
        f"{image['registry']}/{image['cpu']}:{version}",
        f"{image['registry']}/{image['gpu']}:{version}",
    ]
