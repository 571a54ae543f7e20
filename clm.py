"""
clm.py: the causal language-modelling objective (GPT's).

A causal LM factors the probability of a text left to right,

    p(x_1, ..., x_T) = p(x_1) · p(x_2 | x_1) · ... · p(x_T | x_1, ..., x_{T-1}),

and learns each factor: at every position t the model (model.GPT, whose attention is causal so
position t cannot peek at t + 1) outputs a distribution over the vocabulary for the *next* token.
Training minimises the cross-entropy of the true next tokens, i.e. the negative log-likelihood of
the text, averaged over the predicted positions.

The shift by one. The logits at position t are scored against token t + 1, so the targets of a
block are its own tokens moved one place left (`next_token_targets`). The last position has no
next token inside the block: its target is IGNORE, and the first token is never a target. No
label data is needed: the input is its own label, shifted. (The last position's embedding thus
never receives a gradient; docs/guide.md's design notes say why that does not hurt.)

IGNORE (-100, PyTorch's default ignore_index). A target equal to it is left out of the mean. The
masked-LM objective (mlm.py) uses it for every position it did not choose.

Perplexity = exp(mean loss): the number of equally likely tokens the model is, on average,
choosing between. A model that guesses uniformly over V tokens has loss ln(V) and perplexity V; a
perfect model has loss 0 and perplexity 1. train.py and sample.py report it over a whole split.

`CLM` is this objective in the form the training loop and evaluation use; mlm.MLM has the same
methods, so the loop never asks which model it trains. Its `loss` is the computation above: the
logits of every position, then `clm_loss`. The model's head can compute the same number in one pass
instead, a chunk of rows at a time, without ever holding all the logits (model.HeadLoss, train.py's
--fused_head: docs/performance.md says what it saves); the tests prove the two equal.

Try it:    python -m pytest tests/test_clm_mlm.py -k clm
Read next: mlm.py (BERT's objective).
"""

import math
from dataclasses import dataclass

import torch.nn.functional as F

from model import GPT, IGNORE


def next_token_targets(idx):
    """idx (B, T) -> targets (B, T): the token after each position, IGNORE at the last one."""
    return F.pad(idx[:, 1:], (0, 1), value=IGNORE)


def means(totals):
    """{metric: sum / count} from an evaluation's totals {metric: (sum, count)} (data.evaluate)."""
    return {name: (s / n).item() for name, (s, n) in totals.items()}


def clm_loss(logits, targets):
    """Mean cross-entropy of logits (B, T, V) against targets (B, T), IGNORE left out.
    Shifting the targets, not the logits, keeps the (B, T, V) logits as they are: slicing off
    their last position would copy the largest tensor of the step (docs/performance.md)."""
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=IGNORE)


@dataclass
class CLM:
    """Causal LM as the loop sees it: batches from token blocks, the loss, what evaluation
    counts."""

    fused: bool = False  # the loss by the model's head in one pass (model.HeadLoss)
    Model = GPT  # the model this objective trains
    causal = True  # it reads left to right, so it can continue a text (sample.py generates)
    defaults = {}  # settings that differ from the configs' defaults: none (GPT-2's choices)
    eval_overlap = 1  # evaluation blocks share one token: a block's first token is never a target
    head_fraction = 1.0  # the LM head scores every position (model.flops_per_token)
    curves = ("train loss", "val loss")  # what the two lines of loss.svg measure

    token_loss = "loss"  # the metric that scores tokens of the vocabulary (val_ppl is its exp)
    terms = {}  # parts of the loss to log beside it: none
    sentinels = 0  # ids it needs after [MASK]: none (T5 needs some: t5.py)

    def train_batch(self, tokens, generator=None):
        """(inputs, targets) from token blocks (B, T). Nothing is random: no generator is used."""
        return tokens, next_token_targets(tokens)

    def eval_batch(self, tokens, starts):
        return self.train_batch(tokens)

    def loss(self, model, inputs, targets):
        """The mean next-token cross-entropy of the model on inputs (B, T). Plain: the logits of
        every position, then clm_loss. Fused: the same number (and gradients) from the model's
        head, a chunk of rows at a time, without ever holding all the logits (model.HeadLoss)."""
        if not self.fused:
            logits = model(inputs)  # (B, T, V)
            return clm_loss(logits, targets)
        return model(inputs, targets)

    def eval_sums(self, model, inputs, targets):
        """{metric: (sum of token losses, number of tokens)} for one evaluation batch."""
        n = (targets != IGNORE).sum().item()
        return {"loss": (self.loss(model, inputs, targets).item() * n, n)}

    summarize = staticmethod(means)  # the metrics from the sums over the whole split

    def describe(self, metrics):
        return f"loss {metrics['loss']:.4f}, perplexity {math.exp(metrics['loss']):.2f}"
