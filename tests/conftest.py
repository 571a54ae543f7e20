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


KING_TEXT = "The king stood by the river and the queen sat by the sea . "


def train_small(folder, kind, *flags):
    """The checkpoint (its path, a str) of a --model kind trained by train.py on KING_TEXT 200
    times over (a tokenizer of 300 ids), 2 heads 32 wide, in float32 on the CPU; flags: the
    rest."""
    import data
    import train
    (folder / "text.txt").write_text(KING_TEXT * 200, encoding="utf-8")
    data.prepare(folder / "prepared", text=str(folder / "text.txt"), clean_text=False,
                 vocab_size=300)
    train.main(["--model", kind, "--data_dir", str(folder / "prepared"), "--out_dir",
                str(folder / "out"), "--n_head", "2", "--n_embd", "32", "--device", "cpu",
                "--dtype", "float32", "--eval_iters", "1", *flags])
    return str(folder / "out" / "ckpt.pt")


def learn_by_heart(m, objective, text, steps=300):
    """The model m after `steps` AdamW steps of the objective on the same token blocks, text (B,
    T), each step's batch drawn anew from them (its masks, spans or orders); in eval mode."""
    import torch
    optimizer = torch.optim.AdamW(m.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = objective.loss(m, *objective.train_batch(text, generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return m.eval()
