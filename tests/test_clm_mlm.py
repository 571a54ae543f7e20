"""clm.py and mlm.py: the two objectives, checked against losses written out in the tests and
against statistics over many samples."""

import math
import random

import pytest
import torch
import torch.nn.functional as F

import bpe
from clm import clm_loss, next_token_targets
from mlm import mask_tokens, mlm_loss, word_edges, word_starts
from model import EOT_ID, MASK_ID


def test_clm_loss_is_next_token_cross_entropy_written_out_by_hand():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g)
    idx = torch.randint(0, 11, (3, 7), generator=g)
    idx[1, 4:] = -100  # padding: no target here...
    idx[2, 2] = -100  # ...nor here
    total, count = 0.0, 0
    for b in range(3):
        for t in range(6):  # position t predicts token t + 1
            target = idx[b, t + 1].item()
            if target == -100:
                continue
            log_probs = logits[b, t] - torch.logsumexp(logits[b, t], dim=0)
            total -= log_probs[target].item()
            count += 1
    assert count == 18 - 3 - 1
    assert clm_loss(logits, next_token_targets(idx)).item() == pytest.approx(
        total / count, rel=1e-6
    )


def test_clm_loss_equals_cross_entropy_on_tensors_shifted_by_hand():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 13, generator=g)
    idx = torch.randint(0, 13, (2, 5), generator=g)
    idx[0, -1] = -100
    shifted_logits = torch.stack([logits[:, t] for t in range(4)], dim=1)  # positions 0..3
    shifted_targets = torch.stack([idx[:, t + 1] for t in range(4)], dim=1)  # tokens 1..4
    expected = F.cross_entropy(shifted_logits.reshape(8, 13), shifted_targets.reshape(8),
                               ignore_index=-100)
    torch.testing.assert_close(clm_loss(logits, next_token_targets(idx)), expected)


def test_uniform_guessing_has_perplexity_equal_to_the_vocabulary_size():
    logits = torch.zeros(2, 9, 50)
    idx = torch.randint(0, 50, (2, 9))
    assert math.exp(clm_loss(logits, next_token_targets(idx)).item()) == pytest.approx(50, rel=1e-5)


# mask_tokens ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus():
    """204,800 token ids: ordinary ones, with <|endoftext|>, [MASK] and padding ids sprinkled in."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, EOT_ID, (1600, 128), generator=g)
    special = torch.rand(idx.shape, generator=g)
    idx[special < 0.02] = EOT_ID
    idx[(special >= 0.02) & (special < 0.03)] = MASK_ID
    idx[(special >= 0.03) & (special < 0.05)] = torch.randint(
        MASK_ID + 1, 50304, idx.shape, generator=g
    )[(special >= 0.03) & (special < 0.05)]
    return idx


def test_mask_tokens_selection_and_80_10_10_split(corpus):
    original = corpus.clone()
    inputs, labels = mask_tokens(corpus, torch.Generator().manual_seed(1))
    assert torch.equal(corpus, original)  # the input was not modified
    chosen = labels != -100
    eligible = corpus < EOT_ID
    assert chosen.sum() / eligible.sum() == pytest.approx(0.15, abs=0.005)
    assert not chosen[~eligible].any()  # special and padding positions are never chosen
    assert torch.equal(labels[chosen], corpus[chosen])  # labels: the original token where chosen...
    assert torch.equal(inputs[~chosen], corpus[~chosen])  # ...and nothing changes where not chosen
    n = chosen.sum().item()
    masked = (inputs[chosen] == MASK_ID).sum().item() / n
    kept = (inputs[chosen] == corpus[chosen]).sum().item() / n
    randomised = 1 - masked - kept
    assert (masked, randomised, kept) == pytest.approx((0.8, 0.1, 0.1), abs=0.015)
    replaced = chosen & (inputs != MASK_ID) & (inputs != corpus)
    assert (inputs[replaced] < EOT_ID).all()  # random replacements are ordinary tokens


def test_random_replacements_are_uniform_over_the_ordinary_vocabulary(corpus):
    inputs, labels = mask_tokens(
        corpus, torch.Generator().manual_seed(2), mask_frac=0.0, random_frac=1.0
    )
    replaced = inputs[labels != -100]
    # Uniform over 0..50255: mean 25127.5, and each quarter of the range gets a quarter of the
    # draws.
    assert replaced.double().mean().item() == pytest.approx(25127.5, rel=0.02)
    quarters = torch.bincount(replaced * 4 // EOT_ID, minlength=4) / replaced.numel()
    torch.testing.assert_close(
        quarters, torch.full((4,), 0.25, dtype=quarters.dtype), atol=0.01, rtol=0
    )


def test_mask_tokens_is_reproducible_from_the_generator_state():
    idx = torch.randint(0, EOT_ID, (4, 64))
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    first = mask_tokens(idx, g)
    g.set_state(state)
    second = mask_tokens(idx, g)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(mask_tokens(idx, g)[1], first[1])  # the generator moved on


def test_every_row_gets_at_least_one_prediction():
    idx = torch.randint(0, EOT_ID, (500, 4))  # 15% of 4 rounds to 1: never 0
    _, labels = mask_tokens(idx, torch.Generator().manual_seed(4))
    assert ((labels != -100).sum(dim=1) == 1).all()


WORDS = ("the house of commons met in hong kong , and the 19th century saw a café ( 1998 ) "
         "where seven quiet wizards jumped over lazy dogs").split()


@pytest.fixture(scope="module")
def words():
    """A tokenizer of 300 ids, too few to hold most words whole, and 40,000 words drawn from WORDS
    with <|endoftext|> between documents: (the text's ids, the pieces of each word, the tokenizer).
    The pieces come from encoding each word on its own, as BPE's pattern splits the text."""
    enc = bpe.encoding(bpe.train(bpe.count_chunks([" ".join(WORDS)]), 300))
    rng = random.Random(0)
    ids, lengths = [], []
    for i in range(40_000):
        if i % 500 == 0:
            ids.append(enc.eot_token)
            lengths.append(0)
        word = enc.encode_ordinary(" " + rng.choice(WORDS))
        ids += word
        lengths.append(len(word))
    return torch.tensor(ids), lengths, enc


def test_a_word_begins_at_its_first_piece_and_nowhere_else(words):
    ids, lengths, enc = words
    assert max(lengths) >= 3 and sum(lengths) > 1.5 * len(lengths)  # most words are in pieces
    expected = []
    for n in lengths:  # <|endoftext|> (0 pieces) stands alone: True, like a word's first piece
        expected += [True] + [False] * (n - 1) if n else [True]
    starts = word_starts(ids[None], ids[None] < enc.eot_token, word_edges(enc))[0]
    assert starts.tolist() == expected


def test_whole_word_masking_hides_every_piece_of_a_chosen_word_and_picks_words_evenly(words):
    ids, lengths, enc = words
    T = 128
    rows = ids[: len(ids) // T * T].view(-1, T)  # (B, 128): words cut at row ends start anew
    edges = word_edges(enc)
    _, labels = mask_tokens(rows, torch.Generator().manual_seed(5), 0.3, eot_id=enc.eot_token,
                            edges=edges)
    chosen = (labels != -100).flatten()
    starts = word_starts(rows, rows < enc.eot_token, edges).flatten()
    word = starts.cumsum(0) - 1  # (B·T,): which word each token belongs to
    size = torch.bincount(word)
    hidden = torch.bincount(word, weights=chosen.double())
    assert ((hidden == 0) | (hidden == size)).all()  # all of a word's pieces, or none
    eligible = (rows < enc.eot_token).sum(1)
    per_row = (labels != -100).sum(1)
    assert (per_row >= (0.3 * eligible).round()).all()  # at least the share of tokens...
    assert (per_row < (0.3 * eligible).round() + max(lengths)).all()  # ...and one word more
    # A word is chosen as a whole, so a word of three pieces is as likely to be hidden as a word
    # of one (hiding tokens, a three-piece word would lose some piece 1 - 0.7³ = 66% of the time)
    first = starts & (rows.flatten() < enc.eot_token)
    rate = {n: (hidden[word[first]] > 0)[size[word[first]] == n].double().mean().item()
            for n in (1, 3)}
    assert rate[1] == pytest.approx(rate[3], abs=0.03)
    assert 0.25 < rate[1] < 0.35  # words drawn evenly: 30% of the words hold 30% of the tokens


def test_sparse_mlm_loss_equals_dense_mlm_loss():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 10, 17, generator=g)
    labels = torch.full((3, 10), -100)
    labels[0, 2], labels[1, 7], labels[2, 0], labels[2, 9] = 4, 16, 0, 3
    chosen = labels != -100
    dense = mlm_loss(logits, labels)
    sparse = mlm_loss(logits[chosen], labels[chosen])
    by_hand = -torch.stack(
        [F.log_softmax(logits[b, t], -1)[labels[b, t]] for b, t in chosen.nonzero()]
    ).mean()
    torch.testing.assert_close(dense, by_hand)
    torch.testing.assert_close(sparse, by_hand)


def test_evaluation_reports_the_loss_at_mask_positions_apart_from_the_copyable_ones():
    """A model that copies its input and knows nothing else: at the 10% of chosen tokens left
    unchanged it is right for free, so the classic MLM loss flatters it; at [MASK] it can only
    guess, and the loss there is log V, exactly."""
    from mlm import MLM
    V, eot = 128, 64  # ids 0..63 are text, <|endoftext|> 64, [MASK] 65

    def copier(idx, positions):
        seen = idx[positions]  # (N,): the input token at each scored position
        logits = torch.zeros(len(seen), V)
        text = seen < eot
        logits[text.nonzero().flatten(), seen[text]] = 50.0  # certain it is what it sees
        return logits  # at [MASK]: all zeros, a uniform guess

    objective = MLM(eot_id=eot)
    tokens = torch.randint(0, eot, (400, 32), generator=torch.Generator().manual_seed(0))
    inputs, targets = objective.eval_batch(tokens, starts=range(0, 400 * 32, 32))
    sums = objective.eval_sums(copier, inputs, targets)
    (loss, n), (at_mask, n_mask) = sums["loss"], sums["mask_loss"]
    assert at_mask / n_mask == pytest.approx(math.log(V), abs=1e-5)
    assert n_mask / n == pytest.approx(0.8, abs=0.03)  # the [MASK] share of the chosen tokens
    # The classic number: [MASK] log V, kept tokens ~0, random ones about 50 nats (sure of the
    # wrong token): about 0.8 log V + 0.1 * 50 = 8.9, whatever the model knows about text.
    assert loss / n == pytest.approx(0.8 * math.log(V) + 0.1 * 50, abs=0.8)
