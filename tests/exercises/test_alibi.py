"""Exercise "alibi" (EXERCISES.md): position as a bias on the attention scores (Press et al. 2022).
Enable with EXERCISE=alibi."""

import os

import pytest
import torch

pytestmark = pytest.mark.skipif(os.environ.get("EXERCISE") not in ("alibi", "all"),
                                reason="exercise 'alibi' not enabled: run with EXERCISE=alibi")


def config(**overrides):
    from model import ModelConfig
    return ModelConfig(vocab_size=300, block_size=16, n_layer=2, n_head=4, n_embd=32,
                       position="alibi", **overrides)


def test_the_bias_is_the_papers_written_out():
    from model import alibi_bias
    bias = alibi_bias(4, 5, 5, "cpu")
    for h in range(4):
        slope = 2 ** (-8 * (h + 1) / 4)  # 1/4, 1/16, 1/64, 1/256
        for i in range(5):
            for j in range(5):
                assert bias[h, i, j].item() == pytest.approx(-slope * abs(i - j))
    # two queries after three cached keys are the last two rows of the full matrix
    torch.testing.assert_close(alibi_bias(4, 2, 5, "cpu"), bias[:, 3:])


def test_there_is_no_position_table():
    from model import BERT, GPT
    assert GPT(config()).transformer.wpe is None and BERT(config()).transformer.wpe is None


def test_fused_and_explicit_attention_agree_with_padding():
    from model import BERT
    torch.manual_seed(0)
    fused, explicit = BERT(config()).eval(), BERT(config(explicit_attention=True)).eval()
    explicit.load_state_dict(fused.state_dict())
    idx = torch.randint(0, 300, (2, 16))
    real = torch.ones(2, 16, dtype=torch.bool)
    real[1, 11:] = False
    torch.testing.assert_close(explicit(idx, real)[real], fused(idx, real)[real], atol=1e-5, rtol=0)


def test_still_causal_and_the_cache_still_agrees():
    import sample
    from model import GPT
    torch.manual_seed(0)
    gpt = GPT(config()).double().eval()
    idx = torch.randint(0, 300, (2, 16))
    changed = idx.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % 300
    torch.testing.assert_close(gpt(changed)[:, :9], gpt(idx)[:, :9])
    greedy = sample.Sampling(temperature=0)
    cached, plain = (
        sample.generate(gpt, idx[:, :4], 10, greedy, use_cache=c) for c in (True, False)
    )
    assert torch.equal(cached, plain)
