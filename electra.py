"""
electra.py: ELECTRA's replaced-token detection (Clark et al. 2020), on the same Transformer block.

BERT (mlm.py) learns from the 15% (or 30%) of tokens it hides: the other positions of a sequence
are read but teach nothing. ELECTRA makes every position a question. Two models train together:

  * the generator, a small BERT, plays mlm.py's game: some tokens are hidden (here 15%, the
    paper's rate; 85% of them become [MASK] and 15% stay as they are, as ELECTRA's code does) and
    it predicts them (L_MLM);
  * at each hidden position a token is *sampled* from the generator's prediction, and put where
    the original was: a plausible replacement, since the generator learns what fits there;
  * the discriminator, the encoder this lesson is about, reads the result and says of every token
    whether it is the original or a replacement (L_disc, a binary cross-entropy per token). A
    sampled token equal to the original is the original: its label is "original".

    L = L_MLM + λ · L_disc,  λ = 50

λ is the paper's (appendix A): L_disc is a mean over all tokens of a two-way choice, far smaller
than a cross-entropy over the vocabulary, and the weight makes the two pull comparably. No gradient
goes through the sampling (a discrete draw has none), so the discriminator's loss reaches the
generator only through what the two share: the token embeddings (and their LayerNorm, and the
position table if there is one). The paper found sharing the embeddings helps (the generator's
softmax trains every token's embedding, the discriminator's loss only those in the input), and a
generator 1/4 to 1/2 of the discriminator's width works best: a strong generator makes
replacements too hard to tell from the originals. Ours is half the discriminator's width (64, the
width of ELECTRA-Small's generator). After pretraining the generator is dropped; the discriminator
is what one fine-tunes (finetune.py).

The sampling draws one uniform number per hidden position, made with the batch (`train_batch`),
and inverts the generator's cumulative distribution with it (`sample_tokens`). So a batch decides
its replacements: evaluation draws the same every time, and N processes train on what one process
with N times the accumulation trains on, as for BERT.

Evaluation, over the whole val split with the fixed masks of mlm.py's evaluation: the generator's
MLM loss (as mlm.MLM reports it), the discriminator's loss, its accuracy on replaced and on original
tokens, and its AUC: the probability that a replaced token scores above an original one, which no
threshold and no share of replaced tokens can flatter.

Try it:    python -m pytest tests/test_electra.py
           python train.py --model electra
Read next: t5.py, the third family: an encoder-decoder that writes hidden spans back
           (finetune.py, which fine-tunes the discriminator, comes after train.py).
"""

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from clm import means
from mlm import EVAL_MASK_PROB, hidden_token_sums, mask_tokens, mlm_loss, seeded_rows
from model import BERT, EOT_ID, IGNORE, Transformer, init_weights

DISC_WEIGHT = 50.0  # λ (Clark et al. 2020, appendix A)
MASK_FRAC = 0.85  # of the hidden tokens, the share shown as [MASK] (ELECTRA's pretrain_helpers.py)
AUC_BINS, AUC_RANGE = 8192, 16.0  # logits binned in [-16, 16): ties within a 1/256 bin count half


def generator_config(config):
    """The generator's config: the discriminator's, at generator_n_embd wide (0: half), with
    heads of the same size where the width allows."""
    width = config.generator_n_embd or config.n_embd // 2
    heads = max(1, width // (config.n_embd // config.n_head))
    while width % heads or width // heads % 2:  # (an even width always stops at one head)
        heads -= 1
    return replace(config, n_embd=width, n_head=heads, generator_n_embd=0)


class ELECTRA(nn.Module):
    """The discriminator (the encoder, and a head of one logit per token) and the generator (a
    small BERT reading the discriminator's embeddings)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        C = config.n_embd
        self.transformer = Transformer(config, causal=False)  # the discriminator's encoder
        # ELECTRA's discriminator head: dense -> GELU -> one logit, > 0 for "replaced".
        self.disc_dense = nn.Linear(C, C, bias=config.bias)
        self.disc_gelu = nn.GELU(approximate="tanh")
        self.disc_out = nn.Linear(C, 1, bias=config.bias)
        self.generator = BERT(generator_config(config), embeddings=self.transformer)
        init_weights(self)

    def forward(self, idx, targets=None, noise=None, eot_id=EOT_ID, attention_mask=None):
        """The discriminator's logits (B, T) for token ids (B, T). Given targets and noise
        (RTD.train_batch's), the whole game in one call, as DistributedDataParallel wants it:
        (the generator's logits at the hidden positions (N, V), the text with its draws in
        place (B, T), the discriminator's logits on that text (B, T))."""
        if targets is None:
            return self.discriminate(idx, attention_mask)
        logits, corrupted = replace_tokens(self.generator, idx, targets, noise, eot_id)
        return logits, corrupted, self.discriminate(corrupted)

    def discriminate(self, idx, attention_mask=None):
        x = self.transformer(idx, key_mask=attention_mask)  # (B, T, C)
        return self.disc_out(self.disc_gelu(self.disc_dense(x))).squeeze(-1)  # (B, T)

    def to_gpt2(self):
        raise ValueError("this checkpoint is an ELECTRA, and Hugging Face's GPT-2 format holds a "
                         "GPT: only a GPT exports")


def sample_tokens(logits, noise, eot_id):
    """One token per row of logits (N, V), drawn from softmax(logits) over the ordinary ids (below
    eot_id: a replacement is never [MASK] or <|endoftext|>), with noise (N,) uniform in [0, 1):
    the first id whose cumulative probability passes noise x total (inverse transform sampling)."""
    probs = F.softmax(logits[:, :eot_id].float(), dim=-1)  # (N, eot_id)
    cumulative = probs.cumsum(dim=-1)
    picked = torch.searchsorted(cumulative, (noise * cumulative[:, -1])[:, None], right=True)
    return picked.squeeze(1).clamp(max=eot_id - 1)  # (N,); (clamp: float rounding at the top)


def replace_tokens(generator, inputs, targets, noise, eot_id):
    """The generator's logits at the hidden positions (N, V), and the discriminator's input
    (B, T): the original tokens with a token drawn from those logits at each hidden position."""
    hidden = targets != IGNORE  # (B, T)
    logits = generator(inputs, positions=hidden)  # (N, V): the hidden positions only
    original = torch.where(hidden, targets, inputs)
    with torch.no_grad():  # no gradient through a draw (L_disc meets the generator in the
        sampled = sample_tokens(logits.detach(), noise[hidden], eot_id)  # shared embeddings only)
    return logits, original.masked_scatter(hidden, sampled)


def auc(replaced, original):
    """The area under the ROC curve from two histograms of scores over the same bins (low scores
    first): the probability that a replaced token scores above an original one, a tie counted as
    half (Mann and Whitney's U divided by the number of pairs)."""
    below = original.cumsum(0) - original  # originals in lower bins than each bin
    pairs = replaced.sum() * original.sum()
    return ((replaced * (below + original / 2)).sum() / pairs).item() if pairs else math.nan


@dataclass
class RTD:
    """Replaced-token detection as the loop sees it: batches from token blocks, the loss, what
    evaluation counts."""

    mask_prob: float = 0.15  # share of the ordinary tokens the generator predicts (the paper's)
    eot_id: int = EOT_ID  # the tokenizer's <|endoftext|>: the ordinary tokens are the ids below
    edges: tuple = None  # mlm.word_edges(enc): hide whole words in training
    disc_weight: float = DISC_WEIGHT  # λ
    Model = ELECTRA
    causal = False  # it reads both ways (sample.py shows which tokens it takes for replaced)
    # What an ELECTRA run starts from unless a flag says otherwise: BERT's defaults (docs/bert.md
    # tells why: rotary positions, the embedding LayerNorm, 128 wide, the 8,192-id tokenizer,
    # Muon and its learning rate), the paper's masking rate, and as many steps as fit in the
    # default GPT's time with a tenth to spare: a step of both models costs 0.25 s where the GPT's
    # costs 0.81 s, on the Zen 4 CPU in bfloat16 (docs/log.md, "ELECTRA: the defaults").
    defaults = {"position": "rope", "embedding_layernorm": True, "n_embd": 128, "lr": 3e-3,
                "min_lr": 3e-4, "warmup_steps": 100, "optimizer": "muon", "max_steps": 2000,
                "eval_interval": 1000, "data_dir": "data/wikitext-2-bpe8k",
                "tokenizer_size": 8192, "mask_prob": 0.15}
    eval_overlap = 0  # evaluation blocks do not overlap: every token is in exactly one
    curves = ("train loss (L_MLM + λ·L_disc)", f"val loss (the same, fixed {EVAL_MASK_PROB:.0%} "
              "masks)")
    token_loss = "mlm_loss"  # the metric that scores tokens of the vocabulary (the plateau's)
    terms = {}  # the last loss's two parts, for the log (loss sets them)
    sentinels = 0  # ids it needs after [MASK]: none

    @property
    def head_fraction(self):
        return self.mask_prob  # the generator's sparse head scores only the hidden positions

    def train_batch(self, tokens, generator):
        """(inputs with tokens hidden, targets: the hidden tokens, noise: one uniform number per
        position for the sampling), each (B, T)."""
        inputs, targets = mask_tokens(tokens, generator, self.mask_prob, MASK_FRAC, 0.0,
                                      self.eot_id, self.edges)
        return inputs, targets, torch.rand(tokens.shape, generator=generator)

    def eval_batch(self, tokens, starts):
        """mlm.MLM's evaluation masks (80% [MASK], 10% random, 10% kept), and the noise of the
        draws after them from the same generator (mlm.seeded_rows): the same replacements at every
        evaluation. (inputs, targets, noise), each (B, T)."""
        return seeded_rows(tokens, starts, lambda row, generator: (
            *mask_tokens(row, generator, EVAL_MASK_PROB, eot_id=self.eot_id),
            torch.rand(row.shape, generator=generator)))

    def play(self, model, inputs, targets, noise):
        """(the generator's logits at the hidden positions (N, V), the discriminator's logits
        (B, T), its labels (B, T): 1 where the token differs from the original, and where it is
        scored (B, T): at the ordinary tokens, never at <|endoftext|> or padding, whose label
        would be trivially "original")."""
        logits, corrupted, scores = model(inputs, targets, noise, self.eot_id)
        original = torch.where(targets != IGNORE, targets, inputs)
        return logits, scores, (corrupted != original).float(), original < self.eot_id

    def loss(self, model, inputs, targets, noise):
        """L_MLM + λ · L_disc, L_disc the mean over the scored tokens."""
        logits, scores, labels, scored = self.play(model, inputs, targets, noise)
        generator_loss = mlm_loss(logits, targets[targets != IGNORE])
        disc_loss = F.binary_cross_entropy_with_logits(scores[scored], labels[scored])
        self.terms = {"mlm_loss": generator_loss.detach(), "disc_loss": disc_loss.detach()}
        return generator_loss + self.disc_weight * disc_loss

    def eval_sums(self, model, inputs, targets, noise):
        """{metric: (sum, count)} and the histograms of the discriminator's logits, replaced
        tokens' and originals'."""
        logits, scores, labels, scored = self.play(model, inputs, targets, noise)
        mlm, at_mask = hidden_token_sums(logits, inputs, targets, self.eot_id + 1)
        scores, labels = scores[scored].float(), labels[scored]  # (M,) each
        right = (scores > 0) == (labels == 1)
        bins = ((scores + AUC_RANGE) * (AUC_BINS / (2 * AUC_RANGE))).long()
        bins = bins.clamp(0, AUC_BINS - 1)  # (M,): each logit's bin, low scores first
        replaced = labels == 1
        return {
            "disc_loss": (F.binary_cross_entropy_with_logits(scores, labels, reduction="sum"),
                          scored.sum()),
            "mlm_loss": mlm, "mask_loss": at_mask,
            "replaced_acc": (right[replaced].sum(), replaced.sum()),
            "original_acc": (right[~replaced].sum(), (~replaced).sum()),
            "histogram": torch.stack([torch.bincount(bins[replaced], minlength=AUC_BINS),
                                      torch.bincount(bins[~replaced], minlength=AUC_BINS)])}

    def summarize(self, totals):
        """The metrics from the evaluation's totals: means, L = L_MLM + λ·L_disc, and the AUC."""
        metrics = means({name: sums for name, sums in totals.items() if name != "histogram"})
        metrics["loss"] = metrics["mlm_loss"] + self.disc_weight * metrics["disc_loss"]
        return {**metrics, "auc": auc(*totals["histogram"])}

    def describe(self, metrics):
        return (f"loss {metrics['loss']:.4f} = MLM {metrics['mlm_loss']:.4f} (at [MASK] only "
                f"{metrics['mask_loss']:.4f}) + {self.disc_weight:g} x discriminator "
                f"{metrics['disc_loss']:.4f}; discriminator AUC {metrics['auc']:.4f}, right on "
                f"{metrics['replaced_acc']:.1%} of replaced and {metrics['original_acc']:.1%} of "
                f"original tokens")
