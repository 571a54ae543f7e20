"""
mlm.py: the masked language-modelling objective (BERT's), as in Devlin et al. 2019, section 3.1.

A causal LM (clm.py) only ever looks left. BERT looks both ways: its attention has no causal mask,
so every position sees the whole block. Predicting "the next token" would then be trivial (it is
in view), so BERT plays a cloze game instead: hide some tokens and predict them from both sides.

How tokens are chosen and hidden (`mask_tokens`)
  1. Choose a share of the positions that hold ordinary tokens: 15% in BERT, 30% by default here
     (MosaicBERT's rate; in a short run, more predictions per step teach more: docs/bert.md).
     Special ids (<|endoftext|>, [MASK]: 50256, 50257 with GPT-2's tokenizer, the last two of a
     trained one) and the padding ids after them are never chosen: there is nothing to learn
     there. Like BERT's original data code (create_pretraining_data.py), we take exactly
     round(share x eligible positions) per sequence, at least one, so a batch never has
     nothing to predict, and the sparse head (model.BERT) sees about the same count every step.
     Or whole words (train.py --mask_unit words; Google's whole-word-masking BERT, 2019): BPE
     splits a rare word into pieces, and a piece hidden next to the others is easy to guess. It
     did not help here (docs/bert.md).
  2. Of the chosen positions, 80% become [MASK], 10% become a random ordinary token, 10% stay as
     they are. Why not 100% [MASK]? [MASK] never appears when the model is later fine-tuned or
     used, so a model that only learned "predict at [MASK]" would be trained on inputs unlike the
     ones it will see (the pretrain/fine-tune mismatch). Random and unchanged tokens make every
     input position a possible target, so the model must keep a good representation of each one,
     including tokens that look perfectly normal.
  3. The target is the original token at the chosen positions and IGNORE elsewhere: the loss
     counts the chosen ones only. That is MLM's price: each sequence teaches 15% (or 30%) as many
     predictions as CLM's.

Honest evaluation. The 10% of chosen tokens left unchanged can simply be copied from the input, so
they flatter the loss over all chosen positions. Evaluation reports it (the classic number, with
fixed 15% masks so that runs compare) and, beside it, the loss at the positions replaced by [MASK]
only, where the model has nothing to copy.

Try it:    python -m pytest tests/test_clm_mlm.py -k mask
Read next: electra.py, an encoder that learns from every token (then clean.py, the first step
           from raw text to token blocks).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clm import means
from model import BERT, EOT_ID, IGNORE

EVAL_MASK_PROB = 0.15  # evaluation always hides 15%, whatever the training rate, so runs compare
EVAL_MASK_SEED = 1234  # ...and the same tokens at every evaluation


def word_edges(enc):
    """Two booleans per ordinary id of the tokenizer enc: (its first byte, its last byte) is part
    of a word: a letter, a digit or a byte of a character beyond ASCII. BPE splits a rare word
    into pieces (" Comm" + "ons"); a piece goes on the word before it when both sides touch."""
    def in_word(byte):  # (a bytes of length 1)
        return byte.isalnum() or byte >= b"\x80"

    pieces = [enc.decode_single_token_bytes(t) for t in range(enc.eot_token)]
    return (torch.tensor([in_word(p[:1]) for p in pieces]),  # (V,): " Comm" no, "ons" yes
            torch.tensor([in_word(p[-1:]) for p in pieces]))  # (V,): both yes


def word_starts(idx, eligible, edges):
    """(B, T) booleans: where a word begins. A token goes on the one before it when its first
    byte and that token's last byte are both part of a word ("ons" after " Comm"); special ids
    and padding stand alone."""
    starts_in_word, ends_in_word = edges
    ordinary = idx.clamp(max=len(starts_in_word) - 1)  # (specials are looked up, then ignored)
    joins = starts_in_word[ordinary[:, 1:]] & ends_in_word[ordinary[:, :-1]]  # (B, T - 1)
    joins &= eligible[:, 1:] & eligible[:, :-1]
    return torch.cat([torch.ones_like(joins[:, :1]), ~joins], dim=1)


def mask_tokens(idx, generator=None, mask_prob=0.15, mask_frac=0.8, random_frac=0.1,
                eot_id=EOT_ID, edges=None):
    """BERT's corruption of a batch. idx (B, T) int64 on the CPU (where `generator` draws).

    Returns (inputs, targets), both (B, T): inputs with the chosen positions replaced (80% [MASK],
    10% random, 10% kept), targets holding the original id at chosen positions and IGNORE
    elsewhere. idx itself is not modified; the same generator state gives the same result.
    eot_id: <|endoftext|>; the ids below it are the ordinary tokens, [MASK] is eot_id + 1.
    edges: None to choose tokens; word_edges(enc) to choose whole words (`word_starts`)."""
    eligible = idx < eot_id  # ordinary tokens only (GPT-2's: ids 0..50255)
    # Exactly k positions per row: give every eligible position a random score, take the k lowest.
    k = (eligible.sum(dim=1) * mask_prob).round().clamp(min=1)  # (B,)
    scores = torch.rand(idx.shape, generator=generator)
    if edges is not None:  # whole words: every token takes the score of its word's first token
        starts = word_starts(idx, eligible, edges)
        first = torch.where(starts, torch.arange(idx.size(1)), 0).cummax(dim=1).values  # (B, T)
        scores = scores.gather(1, first)
    scores = scores.masked_fill(~eligible, 2.0)  # ineligible positions rank last
    # (B, T): 0 for the lowest score in its row, ...; a word's tokens tie, and keep their order
    rank = scores.argsort(dim=1, stable=True).argsort(dim=1)
    chosen = (rank < k[:, None]) & eligible
    if edges is not None:  # the word the k-th token falls in is taken whole: as its first token
        chosen = chosen.gather(1, first)

    targets = idx.masked_fill(~chosen, IGNORE)
    inputs = idx.clone()
    u = torch.rand(idx.shape, generator=generator)  # one uniform number decides each chosen fate
    to_mask = chosen & (u < mask_frac)
    to_random = chosen & (u >= mask_frac) & (u < mask_frac + random_frac)
    inputs[to_mask] = eot_id + 1  # [MASK]
    random_ids = torch.randint(0, eot_id, idx.shape, generator=generator)  # uniform, ordinary ids
    inputs[to_random] = random_ids[to_random]
    return inputs, targets


def mlm_loss(logits, targets):
    """Cross-entropy over the chosen positions only.

    Dense form: logits (B, T, V) with targets (B, T), IGNORE where nothing was chosen.
    Sparse form: logits (N, V) for the N chosen positions only
    (model.BERT(..., positions=targets != IGNORE)) with their targets (N,). Both give the same."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                           ignore_index=IGNORE)


def seeded_rows(tokens, starts, make):
    """make(row (1, T), generator) for each block of an evaluation batch, its generator seeded by
    where the block starts in the split: the same hidden tokens (and draws) at every evaluation,
    whatever the batch size or the number of processes. The rows' tensors joined: each (B, T)."""
    rows = [make(row[None], torch.Generator().manual_seed(EVAL_MASK_SEED + start))
            for row, start in zip(tokens, starts)]
    return tuple(torch.cat(parts) for parts in zip(*rows))


def hidden_token_sums(logits, inputs, targets, mask_id):
    """((sum, count) of the cross-entropy at every chosen position, the same at those replaced by
    [MASK] only): logits (N, V) at the N positions where targets is not IGNORE."""
    chosen = targets != IGNORE
    losses = F.cross_entropy(logits.float(), targets[chosen], reduction="none")  # (N,)
    at_mask = inputs[chosen] == mask_id
    return ((losses.sum().item(), chosen.sum().item()),
            (losses[at_mask].sum().item(), at_mask.sum().item()))


@dataclass
class MLM:
    """Masked LM as the loop sees it: batches from token blocks, the loss, what evaluation
    counts."""

    mask_prob: float = 0.3  # share of the ordinary tokens chosen in training (as train.py's)
    eot_id: int = EOT_ID  # the tokenizer's <|endoftext|>: the ordinary tokens are the ids below
    edges: tuple = None  # word_edges(enc): hide whole words in training (evaluation: tokens)
    fused: bool = False  # the loss by the model's head in one pass (model.HeadLoss)
    Model = BERT  # the model this objective trains (a class attribute, not a field)
    causal = False  # it reads both ways: it fills in [MASK]s instead (sample.py's fill-mask)
    # What a BERT run starts from unless a flag says otherwise (docs/bert.md tells why):
    # rotary positions, so that the model knows from the first step which token is its neighbour;
    # BERT's own LayerNorm on the embeddings; a higher learning rate; half the GPT's width; and a
    # tokenizer of its own, 8,192 ids trained on WikiText-2's training text (data.py, bpe.py), in
    # a folder of its own. Most of a step is the head, whose work grows with the width and with
    # the number of ids: at 128 wide and 8,192 ids, 5,000 AdamW steps (3.8 epochs) fit in the GPT
    # run's time. Muon (muon.py) for the Linear layers' weights learns more per step, each step
    # taking a sixth to a quarter longer: 4,200 steps. Two evaluations to the GPT's three. (The
    # masking rate, a BERT-only flag, has its own default: train.py's mask_prob.)
    defaults = {"position": "rope", "embedding_layernorm": True, "n_embd": 128, "lr": 3e-3,
                "min_lr": 3e-4, "warmup_steps": 100, "optimizer": "muon", "max_steps": 4200,
                "eval_interval": 2100, "data_dir": "data/wikitext-2-bpe8k", "tokenizer_size": 8192}
    eval_overlap = 0  # evaluation blocks do not overlap: every token is in exactly one
    token_loss = "loss"  # the metric that scores tokens of the vocabulary (val_ppl is its exp)
    terms = {}  # parts of the loss to log beside it: none
    sentinels = 0  # ids it needs after [MASK]: none (T5 needs some: t5.py)

    @property
    def head_fraction(self):
        return self.mask_prob  # the sparse head scores only the chosen positions

    @property
    def curves(self):  # what the two lines of loss.svg measure: not the same masks
        return (f"train loss ({self.mask_prob:.0%} of tokens chosen)",
                f"val loss (fixed {EVAL_MASK_PROB:.0%} masks)")

    def train_batch(self, tokens, generator):
        return mask_tokens(tokens, generator, self.mask_prob, eot_id=self.eot_id, edges=self.edges)

    def eval_batch(self, tokens, starts):
        """The evaluation's fixed 15% masks (seeded_rows): (inputs, targets), each (B, T)."""
        return seeded_rows(tokens, starts, lambda row, generator: mask_tokens(
            row, generator, EVAL_MASK_PROB, eot_id=self.eot_id))

    def loss(self, model, inputs, targets):
        """The mean cross-entropy at the chosen positions (targets not IGNORE). Plain: the sparse
        head's logits at those positions only, then mlm_loss. Fused: the same number (and
        gradients) from the head in one pass (model.HeadLoss)."""
        if not self.fused:
            chosen = targets != IGNORE  # (B, T)
            logits = model(inputs, positions=chosen)  # (N, V): the N chosen positions only
            return mlm_loss(logits, targets[chosen])
        return model(inputs, targets=targets)

    def eval_sums(self, model, inputs, targets):
        """{metric: (sum of token losses, number of tokens)}: all chosen positions, and those
        replaced by [MASK] only."""
        logits = model(inputs, positions=targets != IGNORE)  # (N, V)
        loss, at_mask = hidden_token_sums(logits, inputs, targets, self.eot_id + 1)
        return {"loss": loss, "mask_loss": at_mask}

    summarize = staticmethod(means)  # the metrics from the sums over the whole split

    def describe(self, metrics):
        """The evaluation line. Its "pseudo-perplexity" is exp(MLM loss): a perplexity's formula
        on masked-LM losses, which predict hidden tokens from both sides, so it does not compare
        with a GPT's perplexity (nor with Salazar et al.'s, which hides one token at a time)."""
        loss, at_mask = metrics["loss"], metrics["mask_loss"]
        return (f"MLM loss {loss:.4f} (pseudo-perplexity, its exp: {math.exp(loss):.1f}), "
                f"at [MASK] only {at_mask:.4f}")
