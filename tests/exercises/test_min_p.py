"""Exercise "min_p" (EXERCISES.md): min-p sampling. Enable with EXERCISE=min_p."""

import os

import pytest
import torch

pytestmark = pytest.mark.skipif(os.environ.get("EXERCISE") not in ("min_p", "all"),
                                reason="exercise 'min_p' not enabled: run with EXERCISE=min_p")

PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])


@pytest.mark.parametrize("min_p, kept", [(0.05, 4), (0.2, 3), (0.5, 2), (0.7, 1), (1.0, 1)])
def test_keeps_the_tokens_at_least_min_p_times_as_likely_as_the_top_one(min_p, kept):
    from sample import min_p_filter
    out = min_p_filter(PROBS.log()[None], min_p)
    assert torch.equal(torch.isfinite(out)[0], torch.arange(4) < kept)
    torch.testing.assert_close(out[0, :kept], PROBS.log()[:kept])  # the kept logits are unchanged


def test_next_token_samples_from_the_renormalised_set():
    from sample import Sampling, next_token
    logits = PROBS.log()[None].expand(40000, -1)
    draws = next_token(logits, Sampling(min_p=0.5), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws.flatten(), minlength=4).double() / 40000
    torch.testing.assert_close(
        freq, torch.tensor([0.625, 0.375, 0.0, 0.0], dtype=torch.float64), atol=0.01, rtol=0
    )


def test_min_p_cuts_the_tempered_distribution():
    """Temperature first, then the cut: at temperature 2 the probabilities become proportional to
    sqrt(p), so min_p 0.5 keeps three tokens (sqrt(0.15 / 0.5) = 0.55), not two."""
    from sample import Sampling, next_token
    logits = PROBS.log()[None].expand(40000, -1)
    draws = next_token(logits, Sampling(temperature=2.0, min_p=0.5),
                       torch.Generator().manual_seed(0))
    freq = torch.bincount(draws.flatten(), minlength=4).double() / 40000
    kept = PROBS[:3].double().sqrt()
    expected = torch.cat([kept / kept.sum(), torch.zeros(1, dtype=torch.float64)])
    torch.testing.assert_close(freq, expected, atol=0.01, rtol=0)


@pytest.mark.parametrize("min_p", [-0.1, 1.5])
def test_a_min_p_outside_0_1_is_refused_naming_the_flag(min_p):
    import runtime
    from sample import Sampling
    with pytest.raises(runtime.ConfigError, match="--min_p"):
        Sampling(min_p=min_p)


def test_the_min_p_flag_reaches_the_sampler(monkeypatch, capsys):
    """sample.py --min_p 1 keeps only the most likely token: the text of --temperature 0, even at
    a temperature that would otherwise scatter the draws over 50,000 ids."""
    import data
    import sample
    from checkpoint import objective_for
    from model import GPT, ModelConfig
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16)).eval()
    monkeypatch.setattr(sample, "load", lambda args, device: (model, objective_for("gpt"),
                                                             data.tokenizer(), None))
    texts = []
    for flags in (["--temperature", "0"], ["--temperature", "1.5", "--top_p", "1", "--min_p", "1"]):
        sample.main(["--prompt", "Once upon", "--max_new_tokens", "12", "--no_stop", "--device",
                     "cpu", *flags])
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1]
