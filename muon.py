"""
muon.py: Muon, written out by hand: BERT's optimizer. The weight matrices of the Linear layers
move by their momentum made orthogonal; every other parameter (the token embedding, biases,
LayerNorms) moves by AdamW (adamw.py), as before.

AdamW gives each weight a step of about lr, whatever the others do. A weight matrix W is a linear
map, and its gradient is usually dominated by a few directions (a few large singular values), so
AdamW's steps go mostly along those few. Muon (Jordan et al. 2024) writes the momentum M of W as
U S V^T (its singular value decomposition) and steps along U V^T instead: the same directions,
every one of them taken at the same size. Rare directions then learn as fast as common ones. It
reached a given loss in fewer steps than AdamW in nanoGPT speedruns and at scale (Liu et al. 2025,
"Muon is Scalable for LLM Training"), and here it made the default BERT learn more in its twenty
minutes (docs/bert.md).

U V^T needs no SVD: orthogonalize() gets close to it with a few matrix products (Newton-Schulz).
torch.optim.Muon does the same; tests/test_train.py compares the two, and checks orthogonalize()
against an SVD.

Try it:    python -m pytest tests/test_train.py -k muon
Read next: train.py, which builds it for --optimizer muon (BERT's default).
"""

import math

import torch

from adamw import AdamW

# Jordan et al. 2024: a quintic whose slope at 0 is large, so that small singular values grow fast
COEFFICIENTS = (3.4445, -4.7750, 2.0315)
MOMENTUM = 0.95  # (Jordan et al. 2024; Liu et al. 2025)
# Each matrix's step is scaled to an RMS of UPDATE_RMS * lr. Liu et al. (2025) use 0.2, about
# AdamW's own, so that one learning rate and one schedule serve both; twice that learned faster in
# our BERT (docs/log.md, "BERT: Muon").
UPDATE_RMS = 0.4


def orthogonalize(m, steps=5):
    """About U V^T for m = U S V^T (r, c): five Newton-Schulz steps.

    Each step is X <- a X + b (X X^T) X + c (X X^T)^2 X. With X = U S V^T, X X^T = U S^2 U^T, so
    the step is U (a S + b S^3 + c S^5) V^T: U and V stay, and each singular value s goes to
    a s + b s^3 + c s^5. Divided by its Frobenius norm first, every s is at most 1; the
    coefficients then push each one above a few thousandths to between about 0.7 and 1.2 in five
    steps (not exactly 1: that would take more steps, and Jordan et al. found no loss from it)."""
    a, b, c = COEFFICIENTS
    x = m / (m.norm() + 1e-7)
    wide = x.shape[0] <= x.shape[1]
    x = x if wide else x.T  # (r, c) with r <= c: X X^T is the smaller of the two products
    for _ in range(steps):
        gram = x @ x.T  # (r, r)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


class Muon:
    """Muon for the parameter groups marked "muon" (model.param_groups(..., muon=True)), the
    AdamW it holds for the others. For each matrix W with gradient g:
        B <- MOMENTUM * B + g                       momentum
        O = orthogonalize(g + MOMENTUM * B)         Nesterov's look-ahead, made orthogonal
        W <- W - lr * weight_decay * W              decoupled decay, as in AdamW
        W <- W - lr * UPDATE_RMS * sqrt(max(r, c)) * O
    O's singular values are about 1, so its RMS is about 1 / sqrt(max(r, c)); the factor makes the
    step's RMS UPDATE_RMS * lr for every shape. The train loop sets every group's "lr" from the
    schedule, these as AdamW's."""

    def __init__(self, groups, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        self.adamw = AdamW([g for g in groups if not g.get("muon")], lr, betas, eps, weight_decay)
        self.matrices = [{"lr": lr, "weight_decay": weight_decay, **g, "params": list(g["params"])}
                         for g in groups if g.get("muon")]
        self.param_groups = self.adamw.param_groups + self.matrices
        self.state = {}  # matrix -> its momentum B

    @torch.no_grad()
    def step(self):
        self.adamw.step()
        for group in self.matrices:
            lr = group["lr"]
            for w in (w for w in group["params"] if w.grad is not None):
                momentum = self.state.setdefault(w, torch.zeros_like(w))
                momentum.mul_(MOMENTUM).add_(w.grad)
                direction = orthogonalize(w.grad + MOMENTUM * momentum)
                w.mul_(1 - lr * group["weight_decay"])
                w.add_(direction, alpha=-lr * UPDATE_RMS * math.sqrt(max(w.shape)))

    def zero_grad(self):
        for group in self.param_groups:  # AdamW's groups and the matrices
            for p in group["params"]:
                p.grad = None

    def state_dict(self):
        """AdamW's state, and each matrix's momentum named by its position in the groups."""
        index = {w: i for i, w in enumerate(w for g in self.matrices for w in g["params"])}
        return {"adamw": self.adamw.state_dict(),
                "momentum": {index[w]: b for w, b in self.state.items()},
                "param_groups": [[index[w] for w in g["params"]] for g in self.matrices]}

    def load_state_dict(self, state_dict):
        matrices = [w for g in self.matrices for w in g["params"]]
        sizes = [len(g["params"]) for g in self.matrices]
        if "momentum" not in state_dict or [len(g) for g in state_dict["param_groups"]] != sizes:
            raise ValueError("the optimizer state was saved for other parameter groups")
        self.adamw.load_state_dict(state_dict["adamw"])
        self.state = {matrices[i]: b.to(matrices[i]) for i, b in state_dict["momentum"].items()}
