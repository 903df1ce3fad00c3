"""The device-class catalogue: the shipped files validate, broken files name file and field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.device_classes import CatalogueError, catalogue_dir, detect_device_class, load_catalogue

REQUIRED = {"x86-avx512-vnni", "x86-64-generic", "arm64-cortex-a", "nvidia-jetson", "mcu-class-int8"}


def test_shipped_catalogue_has_the_required_classes():
    cat = load_catalogue()
    assert REQUIRED <= set(cat)
    assert cat["x86-avx512-vnni"].format == "openvino" and cat["x86-avx512-vnni"].precision == "int8"
    assert cat["nvidia-jetson"].precision == "fp16"
    assert "TensorrtExecutionProvider" in cat["nvidia-jetson"].execution_providers
    assert cat["mcu-class-int8"].format == "tflite" and cat["mcu-class-int8"].max_model_bytes <= 2 * 2**20


def _copy(tmp_path: Path) -> Path:
    d = tmp_path / "devices"
    shutil.copytree(catalogue_dir(), d, ignore=shutil.ignore_patterns("__*"))
    return d


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ('format = "onnx"', 'format = "pickle"', "model.format"),
        ("threads = 2", 'threads = "two"', "model.threads"),
        ("ram_mb = 2048\n", "", "memory.ram_mb"),
        ('runtime = "onnxruntime"', 'runtime = "openvino"', "model.runtime"),
        ("[limits]", "[limits]\nmax_power_w = 5", "limits.max_power_w"),
    ],
)
def test_broken_file_names_file_and_field(tmp_path: Path, old: str, new: str, field: str):
    d = _copy(tmp_path)
    f = d / "x86-64-generic.toml"
    f.write_text(f.read_text().replace(old, new, 1))
    with pytest.raises(CatalogueError) as err:
        load_catalogue(d)
    assert "x86-64-generic.toml" in str(err.value) and field in str(err.value)


def test_invalid_toml_is_reported(tmp_path: Path):
    d = _copy(tmp_path)
    (d / "broken.toml").write_text("name = \n")
    with pytest.raises(CatalogueError, match="broken.toml is not valid TOML"):
        load_catalogue(d)


def test_name_must_match_file(tmp_path: Path):
    d = _copy(tmp_path)
    (d / "x86-64-generic.toml").rename(d / "other.toml")
    with pytest.raises(CatalogueError, match="other.toml: field 'name'"):
        load_catalogue(d)


def test_detect_picks_the_most_specific_fit():
    cat = load_catalogue()
    vnni = {"avx2", "avx512f", "avx512_vnni"}
    assert detect_device_class(cat, arch="x86_64", flags=vnni, memory_mb=8000).name == "x86-avx512-vnni"
    assert detect_device_class(cat, arch="x86_64", flags={"avx2"}, memory_mb=8000).name == "x86-64-generic"
    jetson = detect_device_class(cat, arch="aarch64", flags={"asimd"}, memory_mb=8000,
                                 exists=lambda p: p == "/etc/nv_tegra_release")
    assert jetson.name == "nvidia-jetson"
    pi = detect_device_class(cat, arch="aarch64", flags={"asimd"}, memory_mb=4000, exists=lambda p: False)
    assert pi.name == "arm64-cortex-a"
    with pytest.raises(CatalogueError, match="no device class fits"):
        detect_device_class(cat, arch="riscv64", flags=set(), memory_mb=512)
