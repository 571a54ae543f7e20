"""Shared test set-up. Tests never touch the network: tiktoken reads its GPT-2 files from
TIKTOKEN_CACHE_DIR, which .ci/run exports; when it is unset and the offline copy sits beside the
repository (as on the project's machines), point at that copy so a bare `pytest` works too."""

import os
from pathlib import Path

_offline = Path(__file__).resolve().parents[2] / "shared" / "tiktoken"
if "TIKTOKEN_CACHE_DIR" not in os.environ and _offline.is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_offline)
