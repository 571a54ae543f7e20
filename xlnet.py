"""
xlnet.py: XLNet's permuted language model (Yang et al. 2019), two-stream attention on the same
Transformer block.

A causal LM (clm.py) factors a text's probability left to right and sees one side of each token.
A masked LM (mlm.py) sees both sides but predicts each hidden token on its own, and trains on an
input ([MASK]) that real text never holds. XLNet keeps the autoregressive product and gets both
sides: it factors the text in a random order. For the order 3 -> 2 -> 4 -> 1 of a text x1 x2 x3 x4,

    p(x) = p(x3) · p(x2 | x3) · p(x4 | x3, x2) · p(x1 | x3, x2, x4),

and every token is predicted from the tokens before it in the order, wherever they stand in the
text: over many orders, each token learns from context on both sides. The text itself is never
reordered: each token keeps its position, and the order lives only in the attention masks.

Two streams. To predict the token at position a, the model must know where a is but not what is
there; yet a's token must be visible to the positions after a in the order. One stream cannot do
both, so a predicted position has two, through the same blocks and the same weights:
  * the content stream h (rows 0..T-1): the token's embedding, which sees itself and the positions
    before it in the order, as any Transformer's stream does;
  * the query stream g (P more rows, one per predicted position): starts from a learned vector w
    (XLNet's mask_emb) at that position, and sees the content of the positions before it in the
    order, never its own token. Its output predicts the token there.
Both are rows of one attention: `two_stream_mask` says, from the order's ranks, which row may see
which (docs/objectives.md draws it). One difference from XLNet's code: a query row also sees itself
(its own query row, which holds w and where it stands, no token), so no row has nothing to attend
to, and with the left-to-right order the query stream is exactly a GPT that reads, where it
predicts, a token whose embedding is w (tests/test_xlnet.py).

Partial prediction (section 2.3). Predicting every token of every order made XLNet's training
slow to converge: a token early in the order has next to nothing to be predicted from. So only
the last 1/K of each order is predicted, K = 6 as in the paper: every token before them is
context only (the content stream), and the query stream runs at the predicted positions alone,
about a sixth more rows than the text. (`--mask_prob` is that 1/K.)

Positions by RoPE (model.apply_rope), the project's relative positions, where XLNet used
Transformer-XL's relative encoding. Left out: Transformer-XL's segment recurrence, which keeps the
previous segment's states so that attention reaches past the block. It needs each batch row to
continue the same text from step to step, but our batches are blocks drawn at random (data.py), and
every objective here trains at the same block length, so that they compare.

Using it (sample.py): fill-mask puts the known tokens first, left to right, and the blanks last,
together, so that no blank sees another (`blanks_last`); generation is the identity order with the
next position asked last (`XLNet.next_token_logits`).

Try it:    python -m pytest tests/test_xlnet.py
           python train.py --model xlnet --out_dir out-xlnet
           python sample.py --ckpt out-xlnet/ckpt.pt --prompt "He was born in [MASK] in 1950 ."
Read next: clean.py, the first step from raw text to token blocks (then bpe.py and data.py).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from clm import means
from mlm import mlm_loss, seeded_rows
from model import IGNORE, Transformer, head_loss, init_weights

K = 6  # partial prediction: the last 1/K of each order is predicted (Yang et al. 2019, sec. 2.3)


def random_ranks(B, T, generator=None):
    """(B, T): each position's place in a random factorisation order (0: first), one order per row,
    every order equally likely."""
    order = torch.rand(B, T, generator=generator).argsort(dim=1)  # the positions, first to last
    return order.argsort(dim=1)  # the inverse: where each position stands in the order


def two_stream_mask(ranks, asked):
    """Who sees whom: (B, 1, T + P, T + P) booleans, True where a row may attend to a column.
    ranks (B, T): each position's place in the order; asked (B, P): the positions whose query
    stream runs, rows T..T + P - 1 (rows 0..T - 1: the content stream).
      content row i:  the content of j when rank j <= rank i (itself and what came before it);
      query row of a: the content of j when rank j < rank a (what came before, not a itself),
                      and its own query row, which holds no token;
      no content row sees a query row: the queries are asked, never read."""
    B, T = ranks.shape
    P = asked.size(1)
    column = ranks[:, None, :]  # (B, 1, T): the rank of each content column
    content = column <= ranks[:, :, None]  # (B, T, T)
    query = column < ranks.gather(1, asked)[:, :, None]  # (B, P, T)
    itself = torch.eye(P, dtype=torch.bool, device=ranks.device).expand(B, P, P)
    top = torch.cat([content, itself.new_zeros(B, T, P)], dim=2)  # (B, T, T + P)
    bottom = torch.cat([query, itself], dim=2)  # (B, P, T + P)
    return torch.cat([top, bottom], dim=1)[:, None]  # (B, 1, T + P, T + P)


def blanks_last(blanks):
    """Ranks (B, T) for filling blanks (B, T) (True at a [MASK]): the known tokens first, left to
    right, then every blank, all at one rank, so that no blank sees another, and each is predicted
    from every known token."""
    T = blanks.size(1)
    return torch.where(blanks, T, torch.arange(T, device=blanks.device))


class XLNet(nn.Module):
    """A Transformer run as two streams (see above), with GPT's head: the token embedding, tied."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = Transformer(config, causal=False)  # its masks come from the order
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight
        # w, where the query stream starts: a vector like a token's embedding, of no token
        self.mask_emb = nn.Parameter(torch.zeros(self.transformer.wte.embedding_dim))
        init_weights(self)
        nn.init.normal_(self.mask_emb, mean=0.0, std=0.02)  # as the embeddings (init_weights)

    def forward(self, idx, ranks, positions=None, targets=None):
        """idx (B, T); ranks (B, T): the factorisation order; positions (B, T) booleans: where the
        query stream predicts, as many in every row (or targets (B, T), IGNORE elsewhere).
        Returns the logits (N, V) at the N asked positions, row by row; or, given targets, their
        mean cross-entropy there, through model.HeadLoss."""
        if targets is not None:
            positions = targets != IGNORE
        B, T = idx.shape
        counts = positions.sum(dim=1)
        if (counts != counts[0]).any():
            raise ValueError(f"positions asked per row {counts.tolist()}: as many in every row")
        asked = positions.nonzero()[:, 1].view(B, -1)  # (B, P): each row's asked positions
        queries = self.mask_emb.expand(B, asked.size(1), -1)  # (B, P, E): w at each
        where = torch.cat([torch.arange(T, device=idx.device).expand(B, T), asked], dim=1)
        x = self.transformer(idx, queries=queries, positions=where,
                             mask=two_stream_mask(ranks, asked))  # (B, T + P, C)
        g = x[:, T:].flatten(0, 1)  # (N, C): the query stream's output
        if targets is not None:
            return head_loss(g, self.lm_head.weight, None, targets.gather(1, asked).flatten())
        return self.lm_head(g)  # (N, V)

    def next_token_logits(self, idx):
        """(B, V): what comes after idx (B, T), T < block_size. Left to right is the identity
        order: the new position is asked last, and sees every token before it. Its own token is
        never read, so any id stands there."""
        B, T = idx.shape
        ranks = torch.arange(T + 1, device=idx.device).expand(B, -1)
        last = torch.zeros(B, T + 1, dtype=torch.bool, device=idx.device)
        last[:, T] = True
        return self(F.pad(idx, (0, 1)), ranks, positions=last)

    def to_gpt2(self):
        raise ValueError("this checkpoint is an XLNet, and Hugging Face's GPT-2 format holds a "
                         "GPT: only a GPT exports")


@dataclass
class PLM:
    """Permuted LM as the loop sees it: batches from token blocks, the loss, what evaluation
    counts."""

    mask_prob: float = 1 / K  # the share of each order predicted: its last 1/K
    fused: bool = False  # the loss by the model's head in one pass (model.HeadLoss)
    Model = XLNet
    causal = True  # the identity order reads left to right: sample.py can continue a text
    # What an XLNet run starts from unless a flag says otherwise: BERT's defaults (docs/bert.md
    # tells why: rotary positions, the embedding LayerNorm, 128 wide, the 8,192-id tokenizer, Muon
    # and its learning rate), the paper's K = 6, and as many steps as fit in the default GPT's
    # time with a tenth to spare: 3,300 steps took 11.5 minutes where the GPT took 10.3, 2,600
    # took 8.8, on the Zen 4 CPU in bfloat16 (docs/log.md, "XLNet: the defaults").
    defaults = {"position": "rope", "embedding_layernorm": True, "n_embd": 128, "lr": 3e-3,
                "min_lr": 3e-4, "warmup_steps": 100, "optimizer": "muon", "max_steps": 2600,
                "eval_interval": 1300, "data_dir": "data/wikitext-2-bpe8k",
                "tokenizer_size": 8192, "mask_prob": round(1 / K, 4)}
    eval_overlap = 0  # evaluation blocks do not overlap: every token is in exactly one
    token_loss = "loss"  # the metric that scores tokens of the vocabulary (val_ppl is its exp)
    terms = {}  # parts of the loss to log beside it: none
    sentinels = 0  # ids it needs after [MASK]: none

    @property
    def head_fraction(self):
        return self.mask_prob  # the head scores the query stream's rows only

    @property
    def curves(self):  # what the two lines of loss.svg measure: not the same orders
        return (f"train loss (the last {self.mask_prob:.0%} of random orders)",
                f"val loss (fixed orders, the last 1/{K})")

    def batch(self, tokens, generator, share):
        """(tokens, ranks, targets): a random order per row, and its last `share` predicted."""
        B, T = tokens.shape
        ranks = random_ranks(B, T, generator)
        predicted = ranks >= T - max(1, round(T * share))  # the last of each order
        return tokens, ranks, tokens.masked_fill(~predicted, IGNORE)

    def train_batch(self, tokens, generator):
        return self.batch(tokens, generator, self.mask_prob)

    def eval_batch(self, tokens, starts):
        """Fixed orders (the last 1/K predicted, whatever the training share): each row's drawn by
        a generator seeded by where the block starts in the split, so the same at every
        evaluation, whatever the batch size or the number of processes (mlm.seeded_rows)."""
        return seeded_rows(tokens, starts, lambda row, generator: self.batch(row, generator, 1 / K))

    def loss(self, model, inputs, ranks, targets):
        """The mean cross-entropy of the query stream at the predicted positions. Plain: its
        logits there, then the masked LM's loss (mlm.mlm_loss): the same sum over chosen
        positions. Fused: the same number (and gradients) from the head in one pass."""
        if not self.fused:
            predicted = targets != IGNORE  # (B, T)
            return mlm_loss(model(inputs, ranks, positions=predicted), targets[predicted])
        return model(inputs, ranks, targets=targets)

    def eval_sums(self, model, inputs, ranks, targets):
        predicted = targets != IGNORE
        logits = model(inputs, ranks, positions=predicted).float()  # (N, V)
        losses = F.cross_entropy(logits, targets[predicted], reduction="none")
        return {"loss": (losses.sum(), predicted.sum())}

    summarize = staticmethod(means)  # the metrics from the sums over the whole split

    def describe(self, metrics):
        loss = metrics["loss"]
        return (f"loss {loss:.4f} at the predicted positions (the last 1/{K} of fixed orders; "
                f"its exp: {math.exp(loss):.1f})")
