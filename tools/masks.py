"""
tools/masks.py: what each position sees under the three objectives that read a text for itself,
drawn from the masks the code builds. Not a lesson: docs/objectives.md shows its pictures (a test
checks that they are this program's output), and reads them.

  CLM (clm.py, GPT): model.attention_mask, causal;
  MLM (mlm.py, BERT): model.attention_mask, no causal mask, the hidden words replaced by [MASK];
  PLM (xlnet.py, XLNet): xlnet.two_stream_mask for one factorisation order, the content stream
  and the query stream of the positions predicted (the last third of the order, for a picture:
  XLNet's own is the last sixth).

A row is a position, a column a position it may attend to: "x" it may, "." it may not.

Run:  python tools/masks.py
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the lessons' folder: model.py, ...

import model  # noqa: E402
import xlnet  # noqa: E402

WORDS = "the cat sat on my mat".split()
HIDDEN = [1, 5]  # MLM's: " cat" and " mat"
ORDER = [2, 0, 4, 3, 5, 1]  # PLM's factorisation order: sat, the, my, on, mat, cat
PREDICTED = 2  # the last two of the order are predicted: mat and cat


def draw(mask, rows, columns):
    """Lines of a picture: mask (len(rows), len(columns)) booleans, a row's label and an x where
    it may attend to a column."""
    width = max(len(label) for label in rows + columns) + 1
    lines = [" " * width + "".join(label.rjust(width) for label in columns)]
    for label, row in zip(rows, mask.tolist()):
        lines.append(label.ljust(width) + "".join(("x" if seen else ".").rjust(width)
                                                   for seen in row))
    return lines


def pictures():
    """The three pictures, as lines of text."""
    T = len(WORDS)
    clm = model.attention_mask(T, T, True, None, "cpu")  # (T, T)
    mlm = torch.ones(T, T, dtype=torch.bool)  # no mask: every position sees every other
    masked = ["[MASK]" if i in HIDDEN else w for i, w in enumerate(WORDS)]
    ranks = torch.tensor(ORDER).argsort()[None]  # (1, T): each position's place in the order
    asked = (ranks[0] >= T - PREDICTED).nonzero().T  # (1, P), in position order
    both = xlnet.two_stream_mask(ranks, asked)[0, 0]  # (T + P, T + P)
    queries = [f"g:{WORDS[a]}" for a in asked[0].tolist()]
    lines = ["CLM (GPT): each position sees itself and the ones before; it predicts the next "
             "word.", ""]
    lines += draw(clm, WORDS, WORDS)
    lines += ["", "MLM (BERT): every position sees every other; [MASK] stands where "
              f"{' and '.join(WORDS[i] for i in HIDDEN)} were,", "and the model predicts them "
              "there.", ""]
    lines += draw(mlm, masked, masked)
    order = " -> ".join(WORDS[i] for i in ORDER)
    lines += ["", f"PLM (XLNet), the order {order}; the last {PREDICTED} predicted.",
              "Content stream: each position sees itself and what comes before it in the order.",
              ""]
    lines += draw(both[:T, :T], WORDS, WORDS)
    lines += ["", "Query stream (g): a predicted position sees what comes before it in the "
              "order,", "not its own word; and its own row (g), which holds no word.", ""]
    lines += draw(both[T:], queries, WORDS + queries)
    return lines


if __name__ == "__main__":
    print("\n".join(pictures()))
