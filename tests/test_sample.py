"""sample.py: the sampling filters against distributions computed by hand, the KV cache against
plain generation, fill-mask on a memorised sentence and, for words of several tokens, against
probabilities written out by hand, and perplexity against a loss written out."""

import argparse
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import data
import runtime
import sample
import train
from mlm import mask_tokens, mlm_loss
from model import BERT, GPT, MASK_ID, ModelConfig

REPO = Path(__file__).parents[1]


def frequencies(logits, n=40000, **kwargs):
    """Empirical distribution of next_token over n draws from one row of logits."""
    draws = sample.next_token(
        logits.expand(n, -1), sample.Sampling(**kwargs), torch.Generator().manual_seed(0)
    )
    return torch.bincount(draws.flatten(), minlength=logits.size(-1)).double() / n


# 1. Sampling filters ------------------------------------------------------------------------------

def test_top_k_keeps_exactly_the_k_largest_logits():
    logits = torch.tensor([[1.0, 5.0, 3.0, 3.0, 2.0, -1.0]])
    kept = sample.top_k_filter(logits, 2)
    # 5 and one of the tied 3s, exactly two
    assert torch.isfinite(kept).sum() == 2 and kept[0, 1] == 5.0
    kept = sample.top_k_filter(logits, 3)
    assert torch.equal(
        torch.isfinite(kept)[0], torch.tensor([False, True, True, True, False, False])
    )
    # k beyond the vocabulary: all kept
    assert torch.equal(sample.top_k_filter(logits, 100), logits)


def test_top_k_samples_follow_the_renormalised_distribution():
    logits = torch.tensor([[0.0, 2.0, 1.0, 0.5, -1.0]])
    by_hand = torch.tensor([0.0, math.e ** 2, math.e, math.e ** 0.5, 0.0], dtype=torch.float64)
    by_hand /= by_hand.sum()  # the three largest, softmax among themselves
    torch.testing.assert_close(frequencies(logits, top_k=3), by_hand, atol=0.01, rtol=0)


@pytest.mark.parametrize("p, kept", [(0.3, 1), (0.5, 1), (0.8, 2), (0.81, 3), (0.96, 4), (1.0, 4)])
def test_top_p_keeps_the_smallest_set_reaching_p(p, kept):
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()[None]
    assert torch.isfinite(sample.top_p_filter(logits, p)).sum() == kept
    by_hand = torch.zeros(4, dtype=torch.float64)
    by_hand[:kept] = probs[:kept].double() / probs[:kept].sum()
    torch.testing.assert_close(frequencies(logits, top_p=p), by_hand, atol=0.01, rtol=0)


def test_top_p_always_keeps_the_most_likely_token():
    logits = torch.tensor([[0.0, 9.0, 1.0]])
    assert torch.equal(
        torch.isfinite(sample.top_p_filter(logits, 1e-6))[0], torch.tensor([False, True, False])
    )


def test_temperature_zero_is_argmax_and_temperature_two_flattens():
    logits = torch.randn(64, 30, generator=torch.Generator().manual_seed(0))
    assert torch.equal(
        sample.next_token(logits, sample.Sampling(temperature=0))[:, 0], logits.argmax(-1)
    )
    row = torch.tensor([[0.0, 1.0, 2.0]])
    by_hand = torch.tensor([1.0, math.e ** 0.5, math.e], dtype=torch.float64)
    torch.testing.assert_close(
        frequencies(row, temperature=2.0), by_hand / by_hand.sum(), atol=0.01, rtol=0
    )


def test_bad_sampling_settings_are_refused():
    for kwargs in ({"top_p": 0.0}, {"top_p": 1.5}, {"top_k": 0}, {"temperature": -1}):
        with pytest.raises(ValueError):
            sample.Sampling(**{"temperature": 1.0, "top_k": None, "top_p": None, **kwargs})


# 4. Padded-vocabulary ids ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs", [{}, {"temperature": 0}, {"top_k": 1}, {"top_p": 0.5}, {"temperature": 5.0}]
)
def test_padded_vocabulary_ids_never_come_out_even_when_largest(kwargs):
    logits = torch.randn(200, 50304, generator=torch.Generator().manual_seed(1))
    logits[:, MASK_ID:] += 100.0  # [MASK] and padding win by far
    tokens = sample.next_token(logits, sample.Sampling(**kwargs), torch.Generator().manual_seed(2))
    assert tokens.max() < MASK_ID


# 2. The KV cache ---------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["learned", "rope"])
def tiny_gpt(request):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=200, block_size=16, n_layer=2, n_head=2, n_embd=32,
                         position=request.param)
    gpt = GPT(config).double().eval()
    with torch.no_grad():  # sharper predictions than at init, so greedy decoding is not a coin toss
        for p in gpt.parameters():
            p.mul_(8 if p.dim() == 2 else 1)
    return gpt


# inside the window, filling it exactly, sliding past it
@pytest.mark.parametrize("new", [5, 11, 40])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_generation_equals_uncached_generation(tiny_gpt, new, temperature):
    prompt = torch.randint(0, 200, (3, 5), generator=torch.Generator().manual_seed(3))
    sampling = sample.Sampling(temperature=temperature, top_k=50)
    outputs = [sample.generate(tiny_gpt, prompt, new, sampling, torch.Generator().manual_seed(4),
                               use_cache=cache) for cache in (True, False)]
    assert outputs[0].shape == (3, 5 + new)
    assert torch.equal(outputs[0], outputs[1])


def test_uncached_generation_runs_the_model_on_the_last_block_size_tokens(tiny_gpt):
    # longer than the window
    prompt = torch.randint(0, 200, (1, 30), generator=torch.Generator().manual_seed(5))
    out = sample.generate(tiny_gpt, prompt, 3, sample.Sampling(temperature=0), use_cache=False)
    context = out[:, :30]
    for i in range(3):  # each new token is the argmax after the last 16 tokens before it
        logits = tiny_gpt(context[:, -16:])[:, -1]
        assert out[0, 30 + i] == logits.argmax()
        context = out[:, : 31 + i]


# 3. Fill-mask ------------------------------------------------------------------------------------

def test_fill_mask_puts_the_memorised_word_first():
    ids = sample.encode_prompt("The quick brown fox jumps over the lazy dog.", data.tokenizer())
    torch.manual_seed(0)
    bert = BERT(ModelConfig(block_size=16, n_layer=2, n_head=2, n_embd=32))
    opt = torch.optim.AdamW(bert.parameters(), lr=3e-3)
    batch = torch.tensor([ids] * 16)
    g = torch.Generator().manual_seed(0)
    for _ in range(120):
        inputs, labels = mask_tokens(batch, g, mask_prob=0.3)
        chosen = labels != -100
        loss = mlm_loss(bert(inputs, positions=chosen), labels[chosen])
        opt.zero_grad()
        loss.backward()
        opt.step()
    bert.eval()
    masked = sample.encode_prompt(
        "The quick brown [MASK] jumps over the lazy dog.", data.tokenizer()
    )
    assert masked.count(MASK_ID) == 1 and len(masked) == len(ids)
    (best, p), *_ = sample.fill_mask(bert, masked, data.tokenizer(), top_k=3)[0]
    assert best == " fox" and p > 0.5


class TableBERT(torch.nn.Module):
    """A stand-in BERT whose probabilities at a [MASK] are written out by hand: they depend on the
    number n of [MASK]s that replaced the one at `where`, the slot and the token before it."""

    def __init__(self, length, where, table):
        super().__init__()
        self.config = ModelConfig(block_size=32)
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # where the model lives: the CPU
        self.length, self.where, self.table = length, where, table

    def forward(self, idx, positions):
        rows = []
        for b, t in positions.nonzero().tolist():
            n, slot = idx.size(1) - self.length + 1, t - self.where
            probs = torch.full((MASK_ID + 1,), 1e-12)  # everything else: next to nothing
            for token, p in self.table.get((n, slot, idx[b, t - 1].item()), {}).items():
                probs[token] = p
            rows.append(probs.log())
        return torch.stack(rows)  # (number of [MASK]s, V)


def test_fill_mask_scores_a_word_of_several_tokens_by_the_chain_rule():
    enc = data.tokenizer()
    wom, bat, cat, s, dog, comma, stop, also = (enc.encode_ordinary(w)[0] for w in
                                                (" wom", "bat", " cat", "s", " dog", " ,", " .",
                                                 " and"))
    assert enc.encode_ordinary(" wombat") == [wom, bat]
    assert enc.encode_ordinary(" cats") != [cat, s]  # " cats" is one token: " cat" + "s" is not
    ids = sample.encode_prompt("I saw a [MASK] in the zoo", enc)
    where, before = ids.index(MASK_ID), ids[ids.index(MASK_ID) - 1]
    table = {
        (1, 0, before): {cat: 0.45, dog: 0.3, s: 0.13, wom: 0.12},  # one [MASK]: one token
        (2, 0, before): {wom: 0.6, cat: 0.3, comma: 0.1},  # two: the first token ...
        (2, 1, wom): {bat: 0.9, stop: 0.1},  # ... and the second after it
        (2, 1, cat): {s: 0.5, also: 0.5},
    }
    words = dict(sample.fill_mask(TableBERT(len(ids), where, table), ids, enc, top_k=4)[0])
    expected = {" wombat": 0.6 * 0.9, " cat": 0.45, " dog": 0.3, " wom": 0.12}
    # not " cat" + "s" (0.15: BPE writes " cats" as one token), nor "s" (0.13: "as", not a new
    # word), nor " wom" + " ." (" ." does not go on a word), nor " ," + anything
    assert words.keys() == expected.keys()
    assert all(math.isclose(words[w], p, rel_tol=1e-5) for w, p in expected.items())


# 5. Perplexity -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A one-step GPT and BERT checkpoint, trained on a small text."""
    folder = tmp_path_factory.mktemp("sample")
    (folder / "text.txt").write_text("Once upon a time there was a model. " * 40, encoding="utf-8")
    flags = [
        "--data_dir", str(folder / "data"), "--text", str(folder / "text.txt"), "--no_clean",
        "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "16", "--batch_size",
        "2", "--max_steps", "1", "--warmup_steps", "1", "--device", "cpu", "--dtype", "float32",
    ]
    for kind in ("gpt", "bert"):
        train.main(flags + ["--model", kind, "--out_dir", str(folder / kind)])
    return folder


def test_perplexity_of_a_text_is_the_exact_mean_next_token_loss(checkpoints, capsys):
    text = "A short text, shorter than one block.\n"
    (checkpoints / "eval.txt").write_text(text * 3, encoding="utf-8")
    sample.main(
        [
            "--ckpt", str(checkpoints / "gpt/ckpt.pt"), "--eval", str(checkpoints / "eval.txt"),
            "--device", "cpu",
        ]
    )
    printed = capsys.readouterr().out
    model, *_ = sample.load(
        argparse.Namespace(init_from="ckpt", ckpt=str(checkpoints / "gpt/ckpt.pt"), data_dir=None),
        torch.device("cpu"),
    )
    ids = torch.tensor(data.tokenizer().encode_ordinary(text * 3))  # 30 tokens: two windows of 16
    losses = []  # window 0 scores tokens 1..15, window 1 (from token 15) the rest: each token once
    for start in range(0, len(ids) - 1, 15):
        window = ids[start : start + 16][None]
        losses += F.cross_entropy(model(window)[0, :-1], window[0, 1:], reduction="none").tolist()
    assert len(losses) == len(ids) - 1
    expected = sum(losses) / len(losses)
    found = re.search(r"(\d+) predicted; loss ([\d.]+), perplexity ([\d.]+)", printed)
    assert int(found[1]) == len(ids) - 1
    # The program scores the windows in one batch (data.evaluate), this test one at a time:
    # equal up to float32 rounding, far below the printed digits' meaning.
    assert float(found[2]) == pytest.approx(expected, abs=2e-4)
    assert float(found[3]) == pytest.approx(math.exp(expected), rel=2e-4)


# 6. Command-line errors --------------------------------------------------------------------------

@pytest.mark.parametrize("ckpt, flags, message", [
    ("gpt", ["--prompt", ""], "the prompt has no tokens"),
    ("gpt", ["--prompt", "Paris is [MASK] ."], "[MASK] in a prompt is for BERT"),
    ("bert", ["--prompt", "no mask here"], "put [MASK] in the prompt"),
    ("gpt", ["--top_p", "0"], "--top_p must be in (0, 1]"),
    ("gpt", ["--top_p", "1.2"], "--top_p must be in (0, 1]"),
    ("gpt", ["--top_k", "0"], "--top_k must be at least 1"),
    ("bert", ["--export_hf", "unused"], "--export_hf: this checkpoint is a BERT"),
])
def test_bad_input_gets_one_clear_line(checkpoints, ckpt, flags, message):
    with pytest.raises(runtime.ConfigError) as error:
        sample.main(["--ckpt", str(checkpoints / ckpt / "ckpt.pt"), "--device", "cpu", *flags])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_missing_or_corrupt_checkpoint_gets_one_clear_line(checkpoints, tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    result = subprocess.run(  # the program itself, as a user runs it
        [sys.executable, "sample.py", "--ckpt", str(tmp_path / "bad.pt")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "not a readable checkpoint" in result.stderr.strip().splitlines()[-1]
    with pytest.raises(SystemExit) as exit:  # the same path in this process (no new interpreter)
        runtime.run_program(sample.main, ["--ckpt", str(tmp_path / "none.pt")])
    assert exit.value.code.startswith(f"error: {tmp_path / 'none.pt'} does not exist: train")


def test_the_cli_streams_a_sample_and_fills_masks(checkpoints, capsys):
    result = subprocess.run(
        [
            sys.executable, "sample.py", "--ckpt", str(checkpoints / "gpt/ckpt.pt"), "--prompt",
            "Once upon", "--max_new_tokens", "5", "--no_stop", "--num_samples", "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Once upon") == 2 and "--- sample 2 ---" in result.stdout
    # the same program on a BERT, in this process (the interpreter's start is the slow part)
    runtime.run_program(sample.main, ["--ckpt", str(checkpoints / "bert/ckpt.pt"), "--prompt",
                                      "Once upon a [MASK] there was a [MASK] ."])
    assert capsys.readouterr().out.count("[MASK] ") == 2
