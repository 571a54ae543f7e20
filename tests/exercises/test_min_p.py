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
