"""Exercise "rope" (EXERCISES.md): rotary position embeddings instead of a learned position table.
Enable with EXERCISE=rope."""

import os

import pytest
import torch

pytestmark = pytest.mark.skipif(os.environ.get("EXERCISE") not in ("rope", "all"),
                                reason="exercise 'rope' not enabled: run with EXERCISE=rope")


def config(**overrides):
    from model import ModelConfig
    return ModelConfig(vocab_size=300, block_size=16, n_layer=2, n_head=2, n_embd=32, rope=True, **overrides)


def test_there_is_no_learned_position_table():
    from model import GPT, num_params
    gpt = GPT(config())
    assert not any("wpe" in name for name, _ in gpt.named_parameters())
    assert num_params(gpt) == num_params(gpt, include_position=False)


def test_scores_depend_only_on_the_distance_between_positions():
    from model import apply_rope
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 2, 6, 8, generator=g)  # (B=1, nh=2, T=6, hs=8) each
    scores = apply_rope(q, 0) @ apply_rope(k, 0).transpose(-2, -1)
    shifted = apply_rope(q, 7) @ apply_rope(k, 7).transpose(-2, -1)  # every position moved by 7
    torch.testing.assert_close(shifted, scores, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(apply_rope(q, 3).norm(dim=-1), q.norm(dim=-1))  # a rotation: lengths kept
    assert not torch.allclose(apply_rope(q, 0), q)  # and it does rotate


def test_still_causal_and_the_cache_still_agrees():
    import sample
    from model import GPT
    torch.manual_seed(0)
    gpt = GPT(config()).double().eval()
    idx = torch.randint(0, 300, (2, 16))
    changed = idx.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % 300
    torch.testing.assert_close(gpt(changed)[:, :9], gpt(idx)[:, :9])
    prompt = idx[:, :4]
    greedy = sample.Sampling(temperature=0)
    cached, plain = (sample.generate(gpt, prompt, 10, greedy, use_cache=c) for c in (True, False))
    assert torch.equal(cached, plain)
