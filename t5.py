"""
t5.py: T5's span corruption (Raffel et al. 2020, section 3.1.4), an encoder-decoder on the same
Transformer block.

BERT (mlm.py) hides single tokens and predicts each from both sides, one position at a time: it
must be told how many tokens are missing. GPT (clm.py) writes text of any length, but sees only
what comes before. T5 joins the two. An encoder reads the text with its gaps, both ways, like BERT;
a decoder writes what is missing, token by token, like GPT, and reads the encoder's output through
cross-attention (model.CrossAttention) in every block.

The game, for the text "Thank you for inviting me to your party last week .":

    encoder reads:   Thank you <s0> me to your party <s1> week .
    decoder writes:  <s0> for inviting <s1> last <s2>

Each hidden span becomes one sentinel in the encoder's input (ids after [MASK]: <s0> is
[MASK] + 1, ...); the decoder writes each sentinel and the tokens it stands for, and a final
sentinel to say it is done. Its loss is the CLM loss (clm.clm_loss) on that target, with teacher
forcing: the decoder reads the target moved one place right, behind a start token
(<|endoftext|>), so position t predicts target t from targets before t and the whole encoder.

How T5 chooses the spans (`noise_mask`, as T5's code draws them): of a text of n tokens,
round(0.15 n) are hidden (the noise density), in round(hidden / 3) spans (mean span length 3).
The hidden tokens are split into that many spans of random lengths, every split equally likely,
the kept tokens likewise, the two interleaved, and the whole turned by a random offset. Our blocks
join documents with <|endoftext|> (data.py); T5 corrupts each document's text on its own, so we do
too: each run of ordinary tokens between two <|endoftext|> is a text, and <|endoftext|> is never
hidden. A span therefore never crosses from one document into the next.

Why spans. A span of three hidden tokens is harder to guess from its neighbours than one token
between two known ones, and one sentinel for a whole span makes the encoder's input shorter and
the target short: 15% of the tokens and a sentinel per span, about a fifth of the block. T5 found
it at least as good as BERT's objective, and cheaper per step for its shorter targets (Raffel et
al. 2020, section 3.3). In a lesson's time it learns slowly, though: docs/log.md ("T5: the
defaults", and the entries above it) has what the default run learned, and two that learn more.

Evaluation, over the whole val split with fixed corruptions (15%, spans of mean 3): the loss per
target token, and at the hidden tokens only (the sentinels, easy to predict, left out; its exp is
val_ppl), and span accuracy: the share of hidden spans that greedy decoding
writes exactly, each span after the true target before it (so one wrong span does not spoil the
rest), ended by the right sentinel. Greedy here is what sample.py writes at --temperature 0.

Try it:    python -m pytest tests/test_t5.py
           python train.py --model t5 --out_dir out-t5
           python sample.py --ckpt out-t5/ckpt.pt --prompt "He was born in [MASK] in 1950 ."
Read next: xlnet.py, XLNet's permuted LM, the last of the objectives (then clean.py).
"""

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from clm import clm_loss, means
from mlm import EVAL_MASK_PROB, EVAL_MASK_SEED
from model import EOT_ID, IGNORE, Transformer, head_loss, init_weights

MEAN_SPAN = 3.0  # T5's mean length of a hidden span (Raffel et al. 2020, section 3.1.4)


def sentinel(i, eot_id):
    """The id of sentinel <s_i> (an int, or a tensor of them): <s0> is the id after [MASK], which
    is the id after <|endoftext|>."""
    return eot_id + 2 + i


def sentinel_count(block_size):
    """Sentinel ids a model of this block_size needs: a block has at most ceil(block_size / 2)
    spans (a kept token between any two), and the target ends with one sentinel more."""
    return (block_size + 1) // 2 + 1


class T5(nn.Module):
    """An encoder (BERT's stack) and a decoder (GPT's, with cross-attention in each block) that
    share one token embedding, which is also the output layer (T5 ties all three)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = Transformer(config, causal=False)  # the encoder
        self.decoder = Transformer(config, causal=True, embeddings=self.transformer, cross=True)
        init_weights(self)

    def encode(self, idx, key_mask=None):
        """The encoder's output (B, S, C) for the corrupted text idx (B, S)."""
        return self.transformer(idx, key_mask=key_mask)

    def decode(self, idx, memory, memory_mask=None, cache=None):
        """The decoder's logits (B, T, V) for what it has written, idx (B, T), reading the
        encoder's output memory (B, S, C). cache: as GPT's KV cache (sample.py)."""
        x = self.decoder(idx, cache=cache, memory=memory, memory_mask=memory_mask)  # (B, T, C)
        return F.linear(x, self.transformer.wte.weight)  # tied: (B, T, V)

    def forward(self, idx, key_mask, written, targets=None):
        """Logits (B, T, V) of the decoder reading `written` (B, T) and the encoder's output for
        idx (B, S) (key_mask (B, S): True at real tokens); or, given targets (B, T), their mean
        cross-entropy, through model.HeadLoss."""
        memory = self.encode(idx, key_mask)
        if targets is None:
            return self.decode(written, memory, key_mask)
        x = self.decoder(written, memory=memory, memory_mask=key_mask)  # (B, T, C)
        return head_loss(x.flatten(0, 1), self.transformer.wte.weight, None, targets.flatten())

    def to_gpt2(self):
        raise ValueError("this checkpoint is a T5, and Hugging Face's GPT-2 format holds a GPT: "
                         "only a GPT exports")


# Span corruption ---------------------------------------------------------------------------------

def random_segmentation(n_items, n_segments, generator):
    """Lengths (n_segments,) of n_items split into n_segments parts of at least one, every such
    split equally likely: n_segments - 1 cuts, chosen among the n_items - 1 gaps."""
    cuts = torch.randperm(n_items - 1, generator=generator)[: n_segments - 1].sort().values + 1
    return torch.cat([torch.tensor([0]), cuts, torch.tensor([n_items])]).diff()


def noise_mask(length, density, mean_span, generator):
    """T5's random_spans_noise_mask: (length,) booleans, True at the hidden tokens of a text of
    `length` tokens. round(length x density) of them (at least one, and one kept), in
    round(hidden / mean_span) spans (at least one); the lengths of the spans and of the kept runs
    before them from random_segmentation, kept first: kept, hidden, kept, hidden, ... That order
    always ends a text with a hidden span; T5's option random_roll turns the mask by a random
    offset, so that spans fall anywhere, and so do we: a blank in the middle of a sentence
    (sample.py) is then what training showed. (A span the turn wraps round is two spans.)"""
    if length < 2:
        return torch.zeros(length, dtype=torch.bool)  # nothing to hide and something to keep
    hidden = min(max(round(length * density), 1), length - 1)
    spans = min(max(round(hidden / mean_span), 1), hidden, length - hidden)
    kept_runs = random_segmentation(length - hidden, spans, generator)
    hidden_runs = random_segmentation(hidden, spans, generator)
    runs = torch.stack([kept_runs, hidden_runs], dim=1).flatten()  # (2 spans,): kept, hidden, ...
    mask = torch.arange(2 * spans).repeat_interleave(runs) % 2 == 1  # (length,)
    return mask.roll(int(torch.randint(length, (1,), generator=generator)))


def corrupt_row(row, hidden, eot_id):
    """(encoder input, target) of one block row (T,) with hidden (T,) True at hidden tokens: each
    span replaced by its sentinel in the input; the target, each sentinel followed by its span,
    and the final sentinel."""
    first = hidden & ~F.pad(hidden[:-1], (1, 0))  # (T,): the first token of each span
    sentinels = sentinel(first.cumsum(0) - 1, eot_id)  # (T,): <s0> from the first span on
    inputs = torch.where(first, sentinels, row)[~hidden | first]  # a span's other tokens go
    pairs = torch.stack([sentinels, row], dim=1)  # (T, 2): a sentinel, then the token
    before = torch.stack([first, hidden], dim=1)  # (T, 2): the sentinel only before a first token
    final = torch.tensor([sentinel(int(first.sum()), eot_id)])
    return inputs, torch.cat([pairs[before], final])


def corrupt_spans(idx, generators, density=0.15, mean_span=MEAN_SPAN, eot_id=EOT_ID):
    """T5's span corruption of token blocks idx (B, T) on the CPU, row b drawn by generators[b].
    Returns, padded to the longest row of the batch:
      inputs (B, S): the text with each span replaced by a sentinel (padding: <|endoftext|>);
      key_mask (B, S): True at the real tokens of inputs;
      written (B, L): what the decoder reads, the targets moved one place right behind a start
                      token, <|endoftext|> (teacher forcing; after the end, <|endoftext|>);
      targets (B, L): <s0> span 0 <s1> span 1 ... final sentinel (padding: IGNORE)."""
    inputs, targets = [], []
    for row, generator in zip(idx, generators):
        hidden = torch.zeros_like(row, dtype=torch.bool)
        edges = F.pad((row < eot_id).int(), (1, 1)).diff()  # each document's part of the block...
        starts = (edges == 1).nonzero().flatten().tolist()  # (+1 where a run of ordinary tokens
        ends = (edges == -1).nonzero().flatten().tolist()  # begins, -1 just past its end)
        for start, end in zip(starts, ends):  # ...is a text of its own, as T5 corrupts them
            hidden[start:end] = noise_mask(end - start, density, mean_span, generator)
        row_inputs, row_targets = corrupt_row(row, hidden, eot_id)
        inputs.append(row_inputs)
        targets.append(row_targets)
    key_mask = pad_sequence([torch.ones_like(x, dtype=torch.bool) for x in inputs],
                            batch_first=True, padding_value=False)
    targets = pad_sequence(targets, batch_first=True, padding_value=IGNORE)
    written = F.pad(targets[:, :-1], (1, 0), value=eot_id)  # (B, L): the shift, rightwards
    return (pad_sequence(inputs, batch_first=True, padding_value=eot_id), key_mask,
            written.masked_fill(written == IGNORE, eot_id), targets)


def greedy_spans(logits, targets, eot_id):
    """(spans written exactly, spans) for the decoder's logits (B, L, V) under teacher forcing:
    span i counts when, at each of its tokens and at the sentinel that ends it, the most likely
    id is the target. Greedy decoding from the true text before span i writes exactly that span
    then, and stops there. Like sample.py's decoder, it may write ordinary tokens or the sentinel
    that ends the span, nothing else."""
    real = targets != IGNORE
    is_sentinel = real & (targets >= sentinel(0, eot_id))  # (B, L)
    span = is_sentinel.cumsum(1) - is_sentinel.long() - 1  # the span a position writes; <s0>: -1
    closing = sentinel(span + 1, eot_id).clamp(max=logits.size(-1) - 1)  # its sentinel, (B, L)
    best_text, best_id = logits[..., :eot_id].max(dim=-1)  # (B, L) each
    guess = torch.where(logits.gather(-1, closing[..., None])[..., 0] > best_text, closing, best_id)
    wrong = (guess != targets) & real & (span >= 0)
    key = torch.arange(len(targets), device=targets.device)[:, None] * targets.size(1) + span
    spans = is_sentinel.sum() - len(targets)  # each row: a sentinel per span, and the final one
    return spans - key[wrong].unique().numel(), spans


@dataclass
class SpanCorruption:
    """Span corruption as the loop sees it: batches from token blocks, the loss, what evaluation
    counts."""

    mask_prob: float = 0.15  # the noise density: the share of tokens hidden (T5's)
    mean_span: float = MEAN_SPAN
    eot_id: int = EOT_ID  # the tokenizer's <|endoftext|>: the ordinary tokens are the ids below
    block_size: int = 128  # the model's: how many sentinels it needs after [MASK]
    fused: bool = False  # the loss by the model's head in one pass (model.HeadLoss)
    Model = T5
    causal = False  # its encoder reads both ways; sample.py fills blanks with spans
    # What a T5 run starts from unless a flag says otherwise: BERT's defaults (docs/bert.md tells
    # why: rotary positions, the embedding LayerNorm, 128 wide, the 8,192-id tokenizer, Muon and
    # its learning rate), the paper's noise density, and as many steps as fit in the default
    # GPT's time with a tenth to spare: a step costs 0.29 s where the GPT's costs 0.81 s, on the
    # Zen 4 CPU in bfloat16 (docs/log.md, "T5: the defaults").
    defaults = {"position": "rope", "embedding_layernorm": True, "n_embd": 128, "lr": 3e-3,
                "min_lr": 3e-4, "warmup_steps": 100, "optimizer": "muon", "max_steps": 1800,
                "eval_interval": 900, "data_dir": "data/wikitext-2-bpe8k",
                "tokenizer_size": 8192, "mask_prob": 0.15}
    eval_overlap = 0  # evaluation blocks do not overlap: every token is in exactly one
    curves = ("train loss (per target token)", f"val loss (fixed {EVAL_MASK_PROB:.0%} spans)")
    # The metric that scores tokens of the vocabulary (val_ppl is its exp; the run's last line
    # holds it against the unigram plateau): the hidden tokens' loss, without the sentinels, which
    # come in a known order and are easy to predict, and would flatter the comparison.
    token_loss = "hidden_loss"
    terms = {}  # parts of the loss to log beside it: none

    @property
    def sentinels(self):
        return sentinel_count(self.block_size)

    @property
    def head_fraction(self):
        return self.mask_prob * (1 + 1 / self.mean_span)  # targets per token: spans and sentinels

    def train_batch(self, tokens, generator):
        """(inputs, key_mask, written, targets): corrupt_spans, every row drawn by generator."""
        return corrupt_spans(tokens, itertools.repeat(generator), self.mask_prob, self.mean_span,
                             self.eot_id)

    def eval_batch(self, tokens, starts):
        """Fixed corruptions (15%, spans of mean 3, whatever the training settings): each row
        drawn by a generator seeded by where the block starts in the split, so the same spans at
        every evaluation, whatever the batch size or the number of processes."""
        generators = [torch.Generator().manual_seed(EVAL_MASK_SEED + int(s)) for s in starts]
        return corrupt_spans(tokens, generators, EVAL_MASK_PROB, MEAN_SPAN, self.eot_id)

    def loss(self, model, inputs, key_mask, written, targets):
        """The mean cross-entropy of the decoder's target tokens. Plain: the logits, then
        clm_loss (the targets need no shift here: `written` is already the shifted copy). Fused:
        the same number (and gradients) from the head in one pass (model.HeadLoss)."""
        if not self.fused:
            return clm_loss(model(inputs, key_mask, written), targets)
        return model(inputs, key_mask, written, targets)

    def eval_sums(self, model, inputs, key_mask, written, targets):
        """{metric: (sum, count)}: the loss over the target tokens, over the hidden tokens only
        (the sentinels left out), and spans written exactly."""
        logits = model(inputs, key_mask, written).float()  # (B, L, V)
        real = targets != IGNORE
        losses = F.cross_entropy(logits[real], targets[real], reduction="none")  # (N,)
        hidden = targets[real] < self.eot_id  # (N,): text; the rest are sentinels
        return {"loss": (losses.sum(), real.sum()),
                "hidden_loss": (losses[hidden].sum(), hidden.sum()),
                "span_acc": greedy_spans(logits, targets, self.eot_id)}

    summarize = staticmethod(means)  # the metrics from the sums over the whole split

    def describe(self, metrics):
        hidden = metrics["hidden_loss"]
        return (f"loss {metrics['loss']:.4f} per target token, at the hidden tokens only "
                f"{hidden:.4f} (its exp: {math.exp(hidden):.1f}); spans written exactly "
                f"{metrics['span_acc']:.1%}")
