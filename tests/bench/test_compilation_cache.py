"""experiment.enable_compilation_cache: the benchmark commands' on-disk XLA cache."""

import jax

from specjax.bench import experiment


def _restore(old):
    jax.config.update("jax_compilation_cache_dir", old)


def test_cache_dir_from_argument_env_and_off(tmp_path, monkeypatch):
    old = jax.config.jax_compilation_cache_dir
    try:
        got = experiment.enable_compilation_cache(tmp_path / "xla")
        assert got == tmp_path / "xla" and got.is_dir()
        assert jax.config.jax_compilation_cache_dir == str(got)

        monkeypatch.setenv("SPECJAX_XLA_CACHE", str(tmp_path / "env"))
        assert experiment.enable_compilation_cache() == tmp_path / "env"

        monkeypatch.delenv("SPECJAX_XLA_CACHE")
        monkeypatch.setenv("SPECJAX_CACHE", str(tmp_path / "root"))
        assert experiment.enable_compilation_cache() == tmp_path / "root" / "xla"

        jax.config.update("jax_compilation_cache_dir", old)
        for off in ("", "off"):
            monkeypatch.setenv("SPECJAX_XLA_CACHE", off)
            assert experiment.enable_compilation_cache() is None
            assert jax.config.jax_compilation_cache_dir == old  # untouched
    finally:
        _restore(old)

