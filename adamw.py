"""
adamw.py: AdamW, written out by hand: the update rule every pretraining run of this codebase uses.

train.py builds it over model.param_groups (weight decay on matrices only) and sets each group's
"lr" from the schedule before every step; tools/bench.py times it against torch.optim.AdamW, and
tests/test_train.py proves the two compute the same.

Try it:    python -m pytest tests/test_train.py -k adamw
Read next: muon.py, BERT's optimizer, which hands every parameter that is not a matrix to
           this one.
"""

import math

import torch


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), as torch.optim.AdamW does it.

    For each parameter p with gradient g, at its t-th update:
        p <- p - lr * weight_decay * p              decay: shrink the weight, independently of g
        m <- beta1 * m + (1 - beta1) * g            running mean of gradients (momentum)
        v <- beta2 * v + (1 - beta2) * g * g        running mean of squared gradients
        m_hat = m / (1 - beta1^t)                   bias correction: m and v start at 0 and
        v_hat = v / (1 - beta2^t)                   would be too small for the first steps
        p <- p - lr * m_hat / (sqrt(v_hat) + eps)   every weight moves about lr, whatever g's scale
    Plain Adam with L2 regularisation adds weight_decay * p to g instead, so the decay is divided
    by sqrt(v_hat) too: weights with large gradients would hardly be regularised. Decoupling
    fixes that.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        params = list(params)
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        self.param_groups = [{**defaults, **g, "params": list(g["params"])} for g in groups]
        self.state = {}  # parameter -> {"step": t, "exp_avg": m, "exp_avg_sq": v}

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            # The _foreach_ ops below take tensors of one kind: plain ones, or DTensors of one
            # mesh (a model split across processes: shard.py, parallel.py).
            kinds = {}
            for p in group["params"]:
                if p.grad is not None:
                    kinds.setdefault(getattr(p, "device_mesh", None), []).append(p)
            for params in kinds.values():
                self.update(params, lr, beta1, beta2, eps, group["weight_decay"])

    def update(self, params, lr, beta1, beta2, eps, weight_decay):
        """The docstring's lines for parameters of one kind (step)."""
        for p in params:
            if p not in self.state:
                self.state[p] = {"step": 0, "exp_avg": torch.zeros_like(p),
                                 "exp_avg_sq": torch.zeros_like(p)}
            self.state[p]["step"] += 1
        grads = [p.grad for p in params]
        m = [self.state[p]["exp_avg"] for p in params]
        v = [self.state[p]["exp_avg_sq"] for p in params]
        t = [self.state[p]["step"] for p in params]
        # The docstring's lines for all of these parameters at once: torch._foreach_op applies
        # op to each tensor of its lists, as torch.optim does. A loop over parameters
        # would launch a small GPU kernel per parameter and operation (docs/performance.md).
        torch._foreach_mul_(params, 1 - lr * weight_decay)
        torch._foreach_lerp_(m, grads, 1 - beta1)  # m + (1 - beta1) * (g - m)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
        denom = torch._foreach_sqrt(v)  # sqrt(v_hat) + eps = sqrt(v) / sqrt(1 - beta2^t) + eps
        torch._foreach_div_(denom, [math.sqrt(1 - beta2 ** k) for k in t])
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, m, denom, [-lr / (1 - beta1 ** k) for k in t])

    def zero_grad(self):
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def state_dict(self):
        """What resuming needs: each parameter's step count and moments, the parameter named by
        its position in the groups. The settings (lr, betas, ...) are not saved: like the model's
        shape, they come from the config, and the learning rate from lr_at(step)."""
        index = {p: i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        return {"state": {index[p]: dict(s) for p, s in self.state.items()},
                "param_groups": [[index[p] for p in g["params"]] for g in self.param_groups]}

    def load_state_dict(self, state_dict):
        params = [p for g in self.param_groups for p in g["params"]]
        sizes = [len(g["params"]) for g in self.param_groups]
        if [len(g) for g in state_dict["param_groups"]] != sizes:
            raise ValueError("the optimizer state was saved for other parameter groups")
        self.state = {params[i]: {"step": s["step"], "exp_avg": s["exp_avg"].to(params[i]),
                                  "exp_avg_sq": s["exp_avg_sq"].to(params[i])}
                      for i, s in state_dict["state"].items()}
