"""XLNet's permuted LM and its two streams, checked against Yang et al. (2019): the masks of the
paper's Figure 2 written out by hand, a token's own prediction blind to it, and the causal LM that
the identity order makes of it."""

import importlib.util
import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import KING_TEXT, learn_by_heart, train_small

import model
import sample
import xlnet
from model import GPT, IGNORE

REPO = Path(__file__).resolve().parent.parent
V = 128  # a small vocabulary: ordinary ids 0..99, <|endoftext|> 100, [MASK] 101, spare ids after


def config(**changes):
    settings = dict(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=32, position="rope",
                    embedding_layernorm=True)
    return model.ModelConfig(**(settings | changes))


def text(B, T, seed=0):
    return torch.randint(0, 100, (B, T), generator=torch.Generator().manual_seed(seed))


# The masks ---------------------------------------------------------------------------------------

def test_the_masks_of_the_papers_figure():
    """Figure 2 of the paper: the order 3 -> 2 -> 4 -> 1 over x1..x4. Content stream: a position
    sees itself and what comes before it in the order; query stream: what comes before it only.
    (Rows and columns x1..x4; 1: may attend.)"""
    ranks = torch.tensor([[3, 1, 0, 2]])  # x1 is 4th in the order, x2 2nd, x3 1st, x4 3rd
    content = [[1, 1, 1, 1],   # x1, last: sees all
               [0, 1, 1, 0],   # x2: x3 and itself
               [0, 0, 1, 0],   # x3, first: itself only
               [0, 1, 1, 1]]   # x4: x3, x2 and itself
    query = [[0, 1, 1, 1],     # x1: x2, x3, x4
             [0, 0, 1, 0],     # x2: x3
             [0, 0, 0, 0],     # x3: no token
             [0, 1, 1, 0]]     # x4: x3 and x2
    mask = xlnet.two_stream_mask(ranks, torch.tensor([[0, 1, 2, 3]]))[0, 0].int()  # (8, 8)
    assert mask[:4, :4].tolist() == content
    assert mask[4:, :4].tolist() == query
    assert mask[4:, 4:].tolist() == torch.eye(4, dtype=torch.int).tolist()  # its own query row
    assert not mask[:4, 4:].any()  # no content row reads a query row
    # Partial prediction: only x4 and x1 (the last two of the order) asked: their query rows.
    mask = xlnet.two_stream_mask(ranks, torch.tensor([[0, 3]]))[0, 0].int()  # (6, 6)
    assert mask[:4, :4].tolist() == content
    assert mask[4:, :4].tolist() == [query[0], query[3]]
    assert mask[4:, 4:].tolist() == [[1, 0], [0, 1]]


def test_orders_are_uniform_and_the_last_sixth_is_predicted():
    """Every order of 3 positions equally likely (4 sigmas over 6,000 draws); in a block of 24,
    the 4 positions (24 / 6) last in each order are the ones predicted, and nothing else."""
    generator = torch.Generator().manual_seed(0)
    ranks = xlnet.random_ranks(6000, 3, generator)
    counts = [sum(r == list(p) for r in ranks.tolist()) for p in itertools.permutations(range(3))]
    sigma = math.sqrt(6000 * (1 / 6) * (5 / 6))
    assert all(abs(c - 1000) < 4 * sigma for c in counts), counts
    tokens = text(50, 24)
    inputs, ranks, targets = xlnet.PLM().train_batch(tokens, generator)
    assert torch.equal(inputs, tokens)
    predicted = targets != IGNORE
    assert (predicted.sum(1) == 4).all()
    assert torch.equal(predicted, ranks >= 20)
    assert torch.equal(targets[predicted], tokens[predicted])


# The two streams ---------------------------------------------------------------------------------

def test_a_query_never_sees_its_own_token_but_later_ones_in_the_order_do():
    """Change the token at a predicted position: its own prediction stays the same to the last
    bit; the prediction of a position after it in the order changes."""
    torch.manual_seed(0)
    m = xlnet.XLNet(config()).eval()
    idx = text(1, 12)
    ranks = xlnet.random_ranks(1, 12, torch.Generator().manual_seed(3))
    asked = ranks >= 6  # the last half of the order
    a = int((ranks[0] == 11).nonzero())  # the position last in the order...
    b = int((ranks[0] == 6).nonzero())  # ...and the first of those asked
    rows = asked[0].nonzero().flatten().tolist()  # the logits' rows, in position order
    changed = idx.clone()
    changed[0, a] = (idx[0, a] + 1) % 100
    before, after = m(idx, ranks, positions=asked), m(changed, ranks, positions=asked)
    torch.testing.assert_close(after[rows.index(a)], before[rows.index(a)], atol=0, rtol=0)
    changed = idx.clone()
    changed[0, b] = (idx[0, b] + 1) % 100  # b comes before a in the order: a sees it
    after = m(changed, ranks, positions=asked)
    torch.testing.assert_close(after[rows.index(b)], before[rows.index(b)], atol=0, rtol=0)
    assert not torch.allclose(after[rows.index(a)], before[rows.index(a)], atol=1e-4)


@pytest.mark.parametrize("position", ["rope", "learned"])
def test_in_the_identity_order_the_query_stream_is_the_gpt_it_contains(position):
    """Left to right, every position asked: the query stream at t sees x_<t (the content stream,
    causal now) and its own row, w at t. A GPT with the same weights (XLNet's keys are GPT's, and
    w), w the embedding of a spare id q, reads x_<t, then q at position t: its last position sees
    the same, so its prediction there is the query stream's, and its loss over every t the
    XLNet's."""
    torch.manual_seed(0)
    m = xlnet.XLNet(config(position=position)).double().eval()
    gpt = GPT(config(position=position)).double().eval()
    q = V - 1  # an id the text never holds: its row (tied: also its score) becomes w in both
    with torch.no_grad():
        m.transformer.wte.weight[q] = m.mask_emb
    gpt.load_state_dict({k: v for k, v in m.state_dict().items() if k != "mask_emb"})
    idx = text(3, 10)
    ranks = torch.arange(10).expand(3, 10)
    xlnet_loss = m(idx, ranks, targets=idx)  # every position predicted
    gpt_losses = []
    for t in range(10):
        read = torch.cat([idx[:, :t], torch.full((3, 1), q)], dim=1)  # x_<t, then q at t
        gpt_losses.append(F.cross_entropy(gpt(read)[:, -1], idx[:, t], reduction="none"))
    torch.testing.assert_close(xlnet_loss, torch.cat(gpt_losses).mean(), atol=1e-10, rtol=0)
    # and the GPT's own next-token prediction is not that (the check can fail)
    assert not torch.allclose(gpt(idx)[:, 2], m(idx, ranks, positions=ranks == 3), atol=1e-3)


def test_blanks_last_puts_the_known_tokens_first_and_no_blank_sees_another():
    blanks = torch.tensor([[False, True, False, True, False]])
    ranks = xlnet.blanks_last(blanks)
    assert ranks.tolist() == [[0, 5, 2, 5, 4]]
    torch.manual_seed(0)
    m = xlnet.XLNet(config()).eval()
    idx = torch.tensor([[5, 101, 7, 101, 9]])
    second = torch.tensor([[False, False, False, True, False]])  # ask the second blank
    other = idx.clone()
    other[0, 1] = 42  # whatever stands in the first: the second, after it, does not see it
    torch.testing.assert_close(m(other, ranks, positions=second), m(idx, ranks, positions=second),
                               atol=0, rtol=0)
    left_to_right = torch.arange(5)[None]  # (the blanks in an order: the second sees the first)
    assert not torch.allclose(m(other, left_to_right, positions=second),
                              m(idx, left_to_right, positions=second), atol=1e-4)


def test_the_chapters_pictures_are_what_the_code_draws():
    """docs/objectives.md shows tools/masks.py's output; and its PLM picture is the paper's rule,
    checked here for each cell from the order it names."""
    spec = importlib.util.spec_from_file_location("masks", REPO / "tools" / "masks.py")
    masks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(masks)
    lines = masks.pictures()
    assert "\n".join(lines) in (REPO / "docs" / "objectives.md").read_text()
    rank = {position: r for r, position in enumerate(masks.ORDER)}
    start = lines.index("Content stream: each position sees itself and what comes before it in "
                        "the order.") + 3  # the first row, after a blank line and the header
    for i, line in enumerate(lines[start:start + len(masks.WORDS)]):
        cells = line.split()[1:]
        assert cells == ["x" if rank[j] <= rank[i] else "." for j in range(len(masks.WORDS))]


# Trained -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained():
    """An XLNet that learned one short text it sees over and over, in random orders."""
    torch.manual_seed(0)
    line = (torch.arange(24) * 7 % 100)[None].repeat(8, 1)  # (8, 24)
    return learn_by_heart(xlnet.XLNet(config()), xlnet.PLM(), line), line[0]


def test_a_trained_xlnet_fills_blanks_and_continues_the_text(trained):
    m, line = trained
    idx = line.clone()[None]
    blanks = torch.zeros_like(idx, dtype=torch.bool)
    blanks[0, [4, 5, 13]] = True  # three blanks, two of them side by side
    idx[blanks] = 101
    logits = m(idx, xlnet.blanks_last(blanks), positions=blanks)  # (3, V)
    assert logits.argmax(-1).tolist() == line[[4, 5, 13]].tolist()
    # left to right, greedily, from its first 8 tokens
    written = sample.generate(m, line[None, :8], 10, sample.Sampling(temperature=0))
    assert written[0].tolist() == line[:18].tolist()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An XLNet trained by train.py for a few steps on a small text (a tokenizer of 300 ids)."""
    return train_small(tmp_path_factory.mktemp("xlnet"), "xlnet", "--n_layer", "2",
                       "--block_size", "32", "--batch_size", "8", "--max_steps", "400",
                       "--mask_prob", "0.3", "--optimizer", "adamw")


def test_sample_fills_a_mask_or_continues_a_text(checkpoint, capsys):
    capsys.readouterr()
    line = KING_TEXT.strip()
    sample.main(["--ckpt", checkpoint, "--prompt", line.replace(" river", " [MASK]")])
    shown = capsys.readouterr().out.splitlines()
    assert shown[0].startswith("[MASK] 1: ' river' "), shown  # its first word
    # Left to right, from a prompt as long as the context it was trained with (the window):
    prompt = f"{line} {line} The king stood by"
    sample.main(["--ckpt", checkpoint, "--prompt", prompt, "--temperature", "0",
                 "--max_new_tokens", "6"])
    assert capsys.readouterr().out.splitlines()[1] == f"{prompt} the river and the queen sat"
