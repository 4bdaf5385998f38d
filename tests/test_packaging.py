"""bnprops installs beside any MXNet build: no dependency pulls the ``mxnet`` distribution but its extra."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
#: Every distribution that installs the mxnet package; any of them in a dependency list replaces a user's build.
_MXNET = re.compile(r"^\s*mxnet([-_.][a-z0-9]+)*\s*($|[\[<>=!~;(@ ])", re.IGNORECASE)


def _requirements() -> dict[str, list[str]]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    return {"dependencies": project["dependencies"], **project.get("optional-dependencies", {})}


def test_no_requirement_but_the_mxnet_extra_names_an_mxnet_distribution() -> None:
    for group, requirements in _requirements().items():
        if group == "mxnet":
            continue
        pulled = [r for r in requirements if _MXNET.match(r)]
        assert not pulled, f"expected no mxnet distribution in {group}, got {pulled}: it would replace the user's build"


def test_the_mxnet_extra_installs_the_cpu_wheel_the_suite_is_measured_on() -> None:
    assert _requirements()["mxnet"] == ["mxnet==1.9.1"], _requirements()["mxnet"]


def test_the_mxnet_pattern_recognises_every_build_and_nothing_else() -> None:
    for requirement in ("mxnet==1.9.1", "mxnet-native", "mxnet_cu112>=1.8", "MXNet-MKL==1.6.0", "mxnet[extra]"):
        assert _MXNET.match(requirement), requirement
    for requirement in ("numpy>=1.21,<1.24", "mxnetbench", "hypothesis>=6.100", "gluoncv"):
        assert not _MXNET.match(requirement), requirement
