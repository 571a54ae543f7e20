"""Shared test set-up. Tests never touch the network: tiktoken reads its GPT-2 files from
TIKTOKEN_CACHE_DIR, which .ci/run exports; when it is unset and the offline copy sits beside the
repository (as on the project's machines), point at that copy so a bare `pytest` works too. A
relative TIKTOKEN_CACHE_DIR (`export TIKTOKEN_CACHE_DIR=../shared/tiktoken`) is made absolute:
some tests run pytest again in a temporary folder, where it would lead nowhere."""

import os
from pathlib import Path

import pytest

_offline = Path(__file__).resolve().parents[2] / "shared" / "tiktoken"
if "TIKTOKEN_CACHE_DIR" in os.environ:
    os.environ["TIKTOKEN_CACHE_DIR"] = os.path.abspath(os.environ["TIKTOKEN_CACHE_DIR"])
elif _offline.is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_offline)


@pytest.fixture(autouse=True)
def no_default_wikitext(monkeypatch, tmp_path_factory):
    """A test's folders never copy WikiText-2 from the repository's data/wikitext-2 (data.py):
    they hold what the test wrote, whatever this checkout has prepared."""
    import data
    monkeypatch.setattr(data, "WIKITEXT_DIR", str(tmp_path_factory.getbasetemp() / "none"))
