"""
mlm.py: the masked language-modelling objective (BERT's), as in Devlin et al. 2019, section 3.1.

A causal LM (clm.py) only ever looks left. BERT looks both ways: its attention has no causal mask,
so every position sees the whole block. Predicting "the next token" would then be trivial (it is in
view), so BERT plays a cloze game instead: hide some tokens and predict them from both sides.

How tokens are chosen and hidden (`mask_tokens`)
  1. Choose 15% of the positions that hold ordinary tokens. Special ids (<|endoftext|> 50256,
     [MASK] 50257) and padding ids (>= 50258) are never chosen: there is nothing to learn there.
     Like BERT's original data code (create_pretraining_data.py), we take exactly
     round(15% of the eligible positions) per sequence, at least one, so a batch never has
     nothing to predict, and the sparse head (model.BERT) sees about the same count every step.
  2. Of the chosen positions, 80% become [MASK], 10% become a random ordinary token, 10% stay as
     they are. Why not 100% [MASK]? [MASK] never appears when the model is later fine-tuned or
     used, so a model that only learned "predict at [MASK]" would be trained on inputs unlike the
     ones it will see (the pretrain/fine-tune mismatch). Random and unchanged tokens make every
     input position a possible target, so the model must keep a good representation of each one,
     including tokens that look perfectly normal.
  3. The label is the original token at the chosen positions and -100 (ignored) elsewhere: the loss
     counts the chosen ~15% only. That is MLM's price: each sequence teaches about 15% as many
     predictions as CLM's.

Try it:    python -m pytest tests/test_clm_mlm.py -k mask
Read next: data.py (where the token blocks come from).
"""

import torch
import torch.nn.functional as F

from model import EOT_ID, MASK_ID


def mask_tokens(idx, generator=None, mask_prob=0.15, mask_frac=0.8, random_frac=0.1):
    """BERT's corruption of a batch. idx (B, T) int64 on the CPU (where `generator` draws).

    Returns (inputs, labels), both (B, T): inputs with the chosen positions replaced (80% [MASK],
    10% random, 10% kept), labels holding the original id at chosen positions and -100 elsewhere.
    idx itself is not modified; the same generator state gives the same result."""
    eligible = idx < EOT_ID  # ordinary tokens only: ids 0..50255
    # Exactly k positions per row: give every eligible position a random score and take the k lowest.
    k = (eligible.sum(dim=1) * mask_prob).round().clamp(min=1)  # (B,)
    scores = torch.rand(idx.shape, generator=generator).masked_fill(~eligible, 2.0)  # ineligible last
    rank = scores.argsort(dim=1).argsort(dim=1)  # (B, T): 0 for the lowest score in its row, ...
    chosen = (rank < k[:, None]) & eligible

    labels = idx.masked_fill(~chosen, -100)
    inputs = idx.clone()
    u = torch.rand(idx.shape, generator=generator)  # one uniform number decides each chosen token's fate
    to_mask = chosen & (u < mask_frac)
    to_random = chosen & (u >= mask_frac) & (u < mask_frac + random_frac)
    inputs[to_mask] = MASK_ID
    random_ids = torch.randint(0, EOT_ID, idx.shape, generator=generator)  # uniform over ordinary ids
    inputs[to_random] = random_ids[to_random]
    return inputs, labels


def mlm_loss(logits, labels):
    """Cross-entropy over the chosen positions only.

    Dense form: logits (B, T, V) with labels (B, T), -100 where nothing was chosen.
    Sparse form: logits (N, V) for the N chosen positions only (model.BERT(..., positions=labels != -100))
    with their labels (N,). Both give the same number."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)
