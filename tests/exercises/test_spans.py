"""Exercise "spans" (EXERCISES.md): mask whole spans of tokens (SpanBERT, T5's span corruption).
Enable with EXERCISE=spans."""

import os

import pytest
import torch

from model import EOT_ID, MASK_ID

pytestmark = pytest.mark.skipif(os.environ.get("EXERCISE") not in ("spans", "all"),
                                reason="exercise 'spans' not enabled: run with EXERCISE=spans")


def runs(row):
    """Lengths of the runs of True in a 1-D bool tensor."""
    lengths, n = [], 0
    for value in row.tolist() + [False]:
        if value:
            n += 1
        elif n:
            lengths.append(n)
            n = 0
    return lengths


def test_spans_cover_15_percent_in_runs_of_about_mean_span():
    from mlm import mask_spans
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, EOT_ID, (800, 256), generator=g)
    idx[:, 100] = EOT_ID  # a document boundary in every row
    inputs, labels = mask_spans(idx, g, mask_prob=0.15, mean_span=3.0)
    chosen = labels != -100
    assert chosen.float().mean().item() == pytest.approx(0.15 * 255 / 256, abs=0.01)
    assert not chosen[:, 100].any()  # never a special token
    lengths = [n for row in chosen for n in runs(row)]
    assert 2.5 < sum(lengths) / len(lengths) < 4.5  # whole spans, not scattered single tokens
    assert torch.equal(labels[chosen], idx[chosen]) and torch.equal(inputs[~chosen], idx[~chosen])
    assert (inputs[chosen] == MASK_ID).float().mean().item() == pytest.approx(0.8, abs=0.03)
