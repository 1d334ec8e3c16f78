"""One cache folder for everything sparseprune measures: convert's choices and latency tables."""

import os

from sparseprune import _cache, choose
from sparseprune.structured import latency


def test_both_caches_live_in_one_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSEPRUNE_CACHE_DIR", str(tmp_path))
    assert os.path.dirname(choose.cache_path()) == str(tmp_path)
    assert latency._cache_path().parent == tmp_path


def test_precedence(monkeypatch, tmp_path):
    for var in ("SPARSEPRUNE_CACHE_DIR", "SPARSEPRUNE_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _cache.cache_dir() == str(tmp_path / "home" / ".cache" / "sparseprune")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _cache.cache_dir() == str(tmp_path / "xdg" / "sparseprune")
    # the older variable the latency tables read still works, below the shared one
    monkeypatch.setenv("SPARSEPRUNE_CACHE", str(tmp_path / "old"))
    assert _cache.cache_dir() == str(tmp_path / "old")
    monkeypatch.setenv("SPARSEPRUNE_CACHE_DIR", str(tmp_path / "new"))
    assert _cache.cache_dir() == str(tmp_path / "new")
