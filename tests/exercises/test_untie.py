"""Exercise "untie" (EXERCISES.md): give GPT an LM head of its own. Enable with EXERCISE=untie."""

import os

import pytest
import torch

from clm import clm_loss, next_token_targets
from model import GPT, ModelConfig, num_params, param_groups

pytestmark = pytest.mark.skipif(os.environ.get("EXERCISE") not in ("untie", "all"),
                                reason="exercise 'untie' not enabled: run with EXERCISE=untie")


def config(**overrides):
    return ModelConfig(vocab_size=512, block_size=16, n_layer=2, n_head=2, n_embd=32, **overrides)


def test_the_default_stays_tied():
    gpt = GPT(config())
    assert gpt.config.tie_weights is True
    assert gpt.lm_head.weight.data_ptr() == gpt.transformer.wte.weight.data_ptr()


def test_an_untied_head_is_a_matrix_of_its_own():
    tied, untied = GPT(config()), GPT(config(tie_weights=False))
    assert untied.lm_head.weight.data_ptr() != untied.transformer.wte.weight.data_ptr()
    assert num_params(untied) == num_params(tied) + 512 * 32
    # initialised like the rest
    assert untied.lm_head.weight.std().item() == pytest.approx(0.02, rel=0.1)
    ids = [id(p) for g in param_groups(untied, 0.1) for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(untied.parameters()))


def test_the_two_matrices_learn_different_things():
    torch.manual_seed(0)
    gpt = GPT(config(tie_weights=False))
    idx = torch.randint(0, 100, (4, 16))  # tokens 100..511 never appear in the input
    clm_loss(gpt(idx), next_token_targets(idx)).backward()
    # unseen tokens: no embedding gradient
    assert gpt.transformer.wte.weight.grad[100:].abs().max() == 0
    assert gpt.lm_head.weight.grad[100:].abs().max() > 0  # but every output row is pushed down
