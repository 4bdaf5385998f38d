"""``bnprops doctor`` and bnprops without MXNet: the build is named, what applies is said, what to install too."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from bnprops.commands import cli, doctor
from bnprops.judging.deviations import ALL
from bnprops.mx import mxversion
from bnprops.mx.runners import ENTRY_POINTS


def test_the_doctor_names_the_build_and_says_what_applies(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["doctor"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith(f"MXNet {mxversion.running()} (") and "oneDNN:" in out and "engine:" in out
    for entry in ENTRY_POINTS:
        assert f"\n  {entry:<14}" in out, entry
    for d in ALL:
        line = next(row for row in out.splitlines() if row.strip().startswith(d.id + " "))
        applies = line.split(d.KIND, 1)[1].strip().startswith("applies")
        assert applies == d.releases.holds(mxversion.running()) or "needs " in line, line


def test_the_doctor_gives_a_reason_for_everything_it_skips() -> None:
    for line in doctor.report():
        if "skipped" in line or "absent" in line:
            assert line.split("skipped:" if "skipped" in line else "absent", 1)[1].strip(), line


def test_without_mxnet_every_command_says_what_to_install() -> None:
    for argv in (["fuzz", "--time", "1"], ["doctor"], ["--help"]):
        code = (
            f"import sys; sys.modules['mxnet'] = None; from bnprops.commands import cli; sys.exit(cli.main({argv!r}))"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == cli.EXIT_USAGE, (argv, done.stderr[-1000:])
        assert "pip install 'bnprops[mxnet]'" in done.stderr and "Traceback" not in done.stderr, argv


def _installed(site: Path, name: str, version: str, files: dict[str, int]) -> importlib.metadata.Distribution:
    """A distribution's metadata as pip writes it (METADATA, RECORD with sizes, top_level.txt) under site."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "RECORD").write_text("".join(f"{path},sha256=x,{size}\n" for path, size in files.items()))
    (info / "top_level.txt").write_text("\n".join(sorted({path.split("/")[0] for path in files})) + "\n")
    return importlib.metadata.PathDistribution(info)


def _mxnet_files(library_size: int) -> dict[str, int]:
    return {"mxnet/__init__.py": 3413, "mxnet/libmxnet.so": library_size}


def test_the_doctor_names_the_distribution_that_installed_mxnet_whatever_its_name(tmp_path: Path) -> None:
    for name, version in (("mxnet-native", "1.8.0.post0"), ("mxnet-cu112", "1.9.1"), ("my-patched-build", "2.0")):
        site = tmp_path / name
        dists = [
            _installed(site, "numpy", "1.23.5", {"numpy/__init__.py": 10}),
            _installed(site, name, version, _mxnet_files(100)),
            _installed(site, "bnprops", "0.1.0", {"bnprops/__init__.py": 10}),
        ]
        got = doctor.distribution(installed=dists, package_dir=str(site / "mxnet"))
        assert got == f"{name} {version}", f"expected {name} {version} among {len(dists)} distributions, got {got!r}"


def test_the_doctor_warns_when_a_second_mxnet_was_installed_over_a_build(tmp_path: Path) -> None:
    dists = [
        _installed(tmp_path, "mxnet-native", "1.8.0.post0", _mxnet_files(113317840)),
        _installed(tmp_path, "mxnet", "1.9.1", _mxnet_files(94000000)),
    ]
    (tmp_path / "mxnet").mkdir()
    (tmp_path / "mxnet" / "libmxnet.so").write_bytes(b"\0" * 1000)
    for size_on_disk, named in ((113317840, "mxnet-native 1.8.0.post0"), (94000000, "mxnet 1.9.1")):
        with open(tmp_path / "mxnet" / "libmxnet.so", "r+b") as library:
            library.truncate(size_on_disk)  # sparse: the size is what tells the builds apart
        got = doctor.distribution(installed=dists, package_dir=str(tmp_path / "mxnet"))
        assert got.startswith(f"{named}; WARNING: 2 distributions install the mxnet package"), (size_on_disk, got)


def test_the_doctor_says_when_no_distribution_installed_mxnet(tmp_path: Path) -> None:
    dists = [_installed(tmp_path, "numpy", "1.23.5", {"numpy/__init__.py": 10})]
    got = doctor.distribution(installed=dists, package_dir=None)
    assert got.startswith("no distribution metadata"), got


def test_the_doctor_lists_the_features_of_the_running_build() -> None:
    features = next(line for line in doctor.report() if line.startswith("features built in: "))
    import mxnet as mx

    enabled = [name for name, feature in mx.runtime.Features().items() if feature.enabled]
    assert features == f"features built in: {', '.join(enabled)}", f"expected {enabled}, got {features!r}"


def test_a_deviation_that_needs_another_engine_is_said_not_to_apply_under_this_one() -> None:
    engine_bound = [d for d in ALL if getattr(d, "engine", None)]
    assert engine_bound, "expected a recorded deviation that needs a threaded engine"
    report = doctor.report()
    for d in engine_bound:
        line = next(row for row in report if row.strip().startswith(d.id + " "))
        running = doctor.os.environ.get("MXNET_ENGINE_TYPE", "ThreadedEnginePerDevice")
        assert (f"needs MXNET_ENGINE_TYPE={d.engine}" in line) == (running != d.engine), (running, line)


def test_batchnorm_with_relu_is_skipped_with_the_reason_on_a_build_without_onednn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bnprops.mx import runners

    monkeypatch.setattr(runners, "ONEDNN_BUILT", False)
    monkeypatch.setattr(runners, "ONEDNN_ENABLED", False)
    line = next(row for row in doctor.report() if row.strip().startswith("nd-relu "))
    assert f"onednn skipped: MXNet {mxversion.running()} was built without oneDNN: BatchNormWithReLU" in line, line
    assert "native skipped:" in line, line


def test_a_deviation_whose_entry_points_this_build_lacks_is_said_to_need_them(monkeypatch: pytest.MonkeyPatch) -> None:
    members = [d for d in ALL if getattr(d, "entries", None) and d.releases.holds(mxversion.running())]
    members = [d for d in members if not set(d.entries) & set(ENTRY_POINTS)]
    assert members, "expected a recorded deviation on family members' entry points only"
    lacking = {e: "planted: this build lacks it" for d in members for e in d.entries}
    monkeypatch.setattr(doctor, "member_reasons", lambda: lacking)
    report = doctor.report()
    for d in members:
        line = next(row for row in report if row.strip().startswith(d.id + " "))
        if "needs the" not in line:  # a backend this build lacks is said first
            assert "needs " in line and "planted: this build lacks it" in line, line
