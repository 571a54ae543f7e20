"""
train.py: the pretraining loop, written out by hand.

One optimizer step, as the loop below runs it:
  1. the learning rate for this step: linear warmup, then cosine or linear decay (`lr_at`);
  2. grad_accum_steps micro-batches: forward under autocast (mixed precision), the loss divided by
     the number of micro-batches, backward through the GradScaler (fp16 only), gradients summing up
     in .grad; with several processes they are averaged across them on the last micro-batch only;
  3. unscale the gradients, measure their global norm and clip it (`train_step`);
  4. the AdamW update (`AdamW`, written out below), skipped by the scaler if fp16 overflowed;
  5. monitoring: loss, learning rate, gradient norm, tokens/s, MFU, skipped steps; a NaN stops the
     run; evaluation on the validation split; an atomic checkpoint that makes resuming exact.

Run:
    python train.py                         GPT on WikiText-2 (fetched on first use), into out/
    python train.py --model bert            BERT with the masked-LM objective
    python train.py --init_from resume      continue out/ckpt.pt exactly where it stopped
    python train.py --init_from gpt2        continue pretraining OpenAI's GPT-2 (124M)
    python train.py --help                  every setting, with its default

Several processes (data parallel, PyTorch's DistributedDataParallel): each process holds the whole
model, reads its own batches, and the gradients are averaged across processes before each update.
    torchrun --standalone --nproc_per_node=4 train.py            4 GPUs (or CPU processes) on one machine
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=10.0.0.1 --master_port=29500 train.py
    torchrun --nnodes=2 --node_rank=1 --nproc_per_node=8 --master_addr=10.0.0.1 --master_port=29500 train.py
             (the same command on each of two machines, node_rank 0 on the one at master_addr)

Read next: sample.py (using what you trained).
"""

import argparse
import ctypes
import inspect
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal, get_args, get_origin
from xml.sax.saxutils import escape

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import data
from clm import clm_loss
from mlm import mask_tokens, mlm_loss
from model import BERT, GPT, ModelConfig, flops_per_token, num_params, param_groups


@dataclass
class TrainConfig:
    model: Literal["gpt", "bert"] = "gpt"  # gpt: causal LM (clm.py); bert: masked LM (mlm.py)
    data_dir: str = "data/wikitext-2"  # corpus and its .bin files (data.py); WikiText-2 is fetched if absent
    text: str = ""  # your own .txt file or folder, instead of WikiText-2
    out_dir: str = "out"  # ckpt.pt, log.jsonl and loss.svg
    init_from: Literal["scratch", "resume", "gpt2"] = "scratch"  # resume: out_dir/ckpt.pt; gpt2: OpenAI's weights
    gpt2_path: str = "data/gpt2/pytorch_model.bin"  # GPT-2's weights for --init_from gpt2 (downloaded if absent)
    max_steps: int = 600  # optimizer steps; the learning-rate schedule ends here
    stop_at: int = 0  # end this session after this step (0: at max_steps); go on with --init_from resume
    batch_size: int = 16  # sequences per micro-batch (per process)
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    lr: float = 2e-3  # peak learning rate
    min_lr: float = 2e-4  # learning rate reached at max_steps (Chinchilla: lr / 10)
    warmup_steps: int = 30  # steps of linear warmup from lr / warmup_steps to lr
    decay: Literal["cosine", "linear"] = "cosine"  # shape of the decay from lr to min_lr
    weight_decay: float = 0.1  # AdamW's decoupled decay on matrices (model.param_groups)
    beta1: float = 0.9  # AdamW: averaging of gradients
    beta2: float = 0.95  # AdamW: averaging of squared gradients (GPT-3's 0.95 reacts faster than 0.999)
    eps: float = 1e-8  # AdamW: keeps the division finite
    grad_clip: float = 1.0  # clip the global gradient norm to this (0: no clipping)
    mask_prob: float = 0.15  # BERT: share of tokens chosen for prediction
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bfloat16 on recent GPUs, float16 on old ones, float32 on CPUs
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto: cuda, then mps, then cpu
    eval_interval: int = 200  # evaluate on the val split every this many steps, and at the end
    eval_iters: int = 0  # batches per evaluation (0: the whole split, the exact perplexity)
    ckpt_interval: int = 200  # write out_dir/ckpt.pt every this many steps, and at the end
    seed: int = 1337  # initial weights, data order, dropout
    compile: bool = False  # torch.compile the model (on an H100: 14% faster at 124M size, after 30 s of compiling)


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message says why and what to do."""


# Configuration: the fields of ModelConfig and TrainConfig become --flags ----------------------------

def field_comments(cls):
    """The comment beside each field in a config dataclass's source: its --help text."""
    return dict(re.findall(r"^\s+(\w+): .*?  # (.*)$", inspect.getsource(cls), re.M))


def parse_args(argv=None):
    """(ModelConfig, TrainConfig, the names of the flags given). Defaults live in the dataclasses."""
    parser = argparse.ArgumentParser(description="Pretrain a GPT or a BERT.", argument_default=argparse.SUPPRESS)
    for cls in (ModelConfig, TrainConfig):
        group, comments = parser.add_argument_group(cls.__name__), field_comments(cls)
        for f in fields(cls):
            help_text = comments.get(f.name, "").replace("%", "%%")  # argparse reads % as a format
            kwargs = {"help": f"{help_text} (default: {f.default})"}
            if f.type is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            elif get_origin(f.type) is Literal:
                kwargs["choices"] = get_args(f.type)
            else:
                kwargs["type"] = f.type
            group.add_argument(f"--{f.name}", **kwargs)
    given = vars(parser.parse_args(argv))  # only the flags on the command line
    try:
        mcfg = ModelConfig(**{k: v for k, v in given.items() if k in ModelConfig.__dataclass_fields__})
    except ValueError as e:
        parser.error(str(e))
    cfg = TrainConfig(**{k: v for k, v in given.items() if k in TrainConfig.__dataclass_fields__})
    return mcfg, cfg, set(given)


# The learning-rate schedule -----------------------------------------------------------------------

def lr_at(step, cfg):
    """Learning rate of optimizer step `step` (0, 1, ...), a pure function of the step: nothing to save.

    Warmup: the first steps move weights that are still random, with Adam's second-moment estimates
    built from a handful of gradients; a small, growing learning rate keeps those first updates from
    throwing the model somewhere it cannot recover from. Then decay: large steps early to make
    progress, small steps late to settle into a minimum instead of bouncing around it."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps  # lr / warmup_steps, 2 lr / warmup_steps, ..., lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)  # 0 -> 1 at max_steps
    if cfg.decay == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * progress))  # 1 -> 0 along half a cosine wave
    else:
        factor = 1 - progress
    return cfg.min_lr + factor * (cfg.lr - cfg.min_lr)


# The optimizer ------------------------------------------------------------------------------------

class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), as torch.optim.AdamW computes it.

    For each parameter p with gradient g, at its t-th update:
        p <- p - lr * weight_decay * p              decay: shrink the weight, independently of g
        m <- beta1 * m + (1 - beta1) * g            running mean of gradients (momentum)
        v <- beta2 * v + (1 - beta2) * g * g        running mean of squared gradients
        m_hat = m / (1 - beta1^t)                   bias correction: m and v start at 0 and would
        v_hat = v / (1 - beta2^t)                   otherwise be too small for the first steps
        p <- p - lr * m_hat / (sqrt(v_hat) + eps)   every weight moves about lr, whatever its g's scale
    Plain Adam with L2 regularisation adds weight_decay * p to g instead, so the decay is divided by
    sqrt(v_hat) too: weights with large gradients would hardly be regularised. Decoupling fixes that.
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
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:  # the _foreach_ ops below refuse empty lists
                continue
            for p in params:
                if p not in self.state:
                    self.state[p] = {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
                self.state[p]["step"] += 1
            grads = [p.grad for p in params]
            m, v = [self.state[p]["exp_avg"] for p in params], [self.state[p]["exp_avg_sq"] for p in params]
            t = [self.state[p]["step"] for p in params]
            # The docstring's lines, for all the group's parameters at once: torch._foreach_op(lists, ...)
            # applies op to each tensor of the lists, as torch.optim does. A Python loop over parameters
            # launches a small GPU kernel per parameter and operation: at GPT-2-124M size on an H100 that
            # took 14.7 ms per step, this 3.9 ms (torch.optim.AdamW: 4.1 ms; README, "On a GPU").
            # On a CPU both take the same time.
            torch._foreach_mul_(params, 1 - lr * wd)
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
        """What resuming needs: each parameter's step count and moments, the parameter named by its
        position in the groups. The settings (lr, betas, ...) are not saved: like the model's shape,
        they come from the config, and the learning rate from lr_at(step)."""
        index = {p: i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        return {"state": {index[p]: dict(s) for p, s in self.state.items()},
                "param_groups": [[index[p] for p in g["params"]] for g in self.param_groups]}

    def load_state_dict(self, state_dict):
        params = [p for g in self.param_groups for p in g["params"]]
        if [len(g) for g in state_dict["param_groups"]] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("the optimizer state was saved for other parameter groups than this model's")
        self.state = {params[i]: {"step": s["step"], "exp_avg": s["exp_avg"].to(params[i]),
                                  "exp_avg_sq": s["exp_avg_sq"].to(params[i])}
                      for i, s in state_dict["state"].items()}


# One optimizer step -------------------------------------------------------------------------------

def gpt_loss(model, idx):
    return clm_loss(model(idx), idx)


def bert_loss(model, batch):
    inputs, labels = batch
    chosen = labels != -100
    return mlm_loss(model(inputs, positions=chosen), labels[chosen])  # the sparse head: chosen positions only


def train_step(model, optimizer, scaler, micro_batches, loss_fn, grad_clip, autocast):
    """One optimizer step over a list of micro-batches. Returns (mean loss, gradient norm before
    clipping, whether the scaler skipped the update). Raises FloatingPointError on a NaN/inf loss."""
    ddp = isinstance(model, DistributedDataParallel)
    total = 0.0
    for i, batch in enumerate(micro_batches):
        if ddp:  # average gradients across processes only once, after the last micro-batch
            model.require_backward_grad_sync = i == len(micro_batches) - 1
        with autocast:
            loss = loss_fn(model, batch)
        # Dividing by the number of micro-batches makes the summed .grad the mean over all of them:
        # exactly the gradient of one batch len(micro_batches) times bigger.
        scaler.scale(loss / len(micro_batches)).backward()
        total += loss.detach()
    loss = total / len(micro_batches)
    if ddp:  # every process reports the loss averaged over all of them
        dist.all_reduce(loss)
        loss /= dist.get_world_size()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    scaler.unscale_(optimizer)  # fp16: divide the loss scale back out, so norms and clipping are true
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    loss, grad_norm = loss.item(), grad_norm.item()
    if not math.isfinite(loss) or (not scaler.is_enabled() and not math.isfinite(grad_norm)):
        optimizer.zero_grad()
        raise FloatingPointError(f"loss {loss}, gradient norm {grad_norm}")
    scale = scaler.get_scale()
    scaler.step(optimizer)  # fp16: skips the update if any gradient overflowed to inf/NaN...
    scaler.update()  # ...and then halves the loss scale (or doubles it after 2000 good steps)
    optimizer.zero_grad()
    return loss, grad_norm, scaler.get_scale() < scale


# Evaluation ---------------------------------------------------------------------------------------

EVAL_MASK_SEED = 1234  # BERT: the same tokens are hidden at every evaluation, so numbers compare


@torch.no_grad()
def evaluate(model, split, kind, block_size, batch_size, device, autocast, max_batches=0, mask_prob=0.15,
             progress=False):
    """(mean loss per predicted token, number of predicted tokens) over a split, read in order
    (data.eval_batches): for a GPT the exact next-token loss of every token, for a BERT the MLM loss
    with fixed masks. max_batches > 0 stops early. With several processes, each takes every
    world_size-th batch and the sums are added up across them."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    stride = block_size - 1 if kind == "gpt" else block_size
    plan = data.eval_batches(len(split), block_size, batch_size, stride)[: max_batches or None]
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of token losses, number of tokens)
    for i in tqdm(range(rank, len(plan), world), desc="evaluating", leave=False, disable=not progress):
        x = data.read_blocks(split, *plan[i])
        if kind == "gpt":
            batch, n = data.to_device(x, device), x.numel() - x.size(0)  # T - 1 targets per block
        else:  # masks seeded by the batch's index: the same whatever the number of processes
            inputs, labels = mask_tokens(x, torch.Generator().manual_seed(EVAL_MASK_SEED + i), mask_prob)
            batch, n = (data.to_device(inputs, device), data.to_device(labels, device)), int((labels != -100).sum())
            if n == 0:  # a block of special tokens only: nothing to predict
                continue
        with autocast:
            loss = (gpt_loss if kind == "gpt" else bert_loss)(model, batch)
        total += torch.tensor([loss.item() * n, n], dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(total)
    model.train(was_training)
    return (total[0] / total[1]).item(), int(total[1])


# Checkpoints --------------------------------------------------------------------------------------

def rng_state(data_generator):
    """Every source of randomness of this process: data order, dropout, anything else."""
    np_state = np.random.get_state()
    return {"python": random.getstate(), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "data": data_generator.get_state()}


def set_rng_state(state, data_generator):
    random.setstate(state["python"])
    np.random.set_state((state["numpy"][0], np.array(state["numpy"][1], dtype=np.uint32), *state["numpy"][2:]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    data_generator.set_state(state["data"])


def save_checkpoint(path, checkpoint):
    """Write atomically: into a temporary file, flushed to disk, then renamed over the old one. A crash
    at any moment leaves either the old checkpoint or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


CHECKPOINT_KEYS = {"model", "optimizer", "scaler", "step", "model_config", "train_config", "best_val_loss",
                   "rng", "skipped_steps", "tokens"}


def load_checkpoint(path):
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: train a model first (python train.py), or check --out_dir")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only
    except Exception as e:  # truncated zip, not a torch file, ...: torch raises many kinds
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}): it is truncated or "
                              f"corrupt; use another one or train again") from None
    if not isinstance(checkpoint, dict) or not CHECKPOINT_KEYS <= checkpoint.keys():
        raise CheckpointError(f"{path} is not a checkpoint written by train.py")
    return checkpoint


def resume_configs(checkpoint, mcfg, cfg, given):
    """The configs of a resumed run: the checkpoint's, with the flags given on the command line on top.
    A model flag that would change the trained model is refused, with every difference listed."""
    saved_model = checkpoint["model_config"]
    switches = ("explicit_attention", "grad_checkpointing")  # how to compute, not what: free to change
    diffs = [f"--{k} {getattr(mcfg, k)} (checkpoint: {v})" for k, v in saved_model.items()
             if k in given and k not in switches and getattr(mcfg, k) != v]
    if "model" in given and cfg.model != checkpoint["train_config"]["model"]:
        diffs.append(f"--model {cfg.model} (checkpoint: {checkpoint['train_config']['model']})")
    if diffs:
        raise CheckpointError(f"cannot resume: the checkpoint's model differs from the flags: {'; '.join(diffs)}")
    mcfg = ModelConfig(**{**saved_model, **{k: getattr(mcfg, k) for k in switches if k in given}})
    session = {"init_from": "resume", "out_dir": cfg.out_dir, "stop_at": cfg.stop_at}  # never inherited
    cfg = TrainConfig(**{**checkpoint["train_config"], **{k: getattr(cfg, k) for k in given if hasattr(cfg, k)},
                         **session})
    return mcfg, cfg


GPT2_URL = "https://huggingface.co/openai-community/gpt2/resolve/main/pytorch_model.bin"


def fetch_gpt2(path):
    """Download GPT-2's pytorch_model.bin (500 MB) to path, unless it is there already."""
    path = Path(path)
    if not path.exists():
        try:
            data.download_file(GPT2_URL, path)
        except data.DataError as e:
            raise data.DataError(f"GPT-2's weights are not at {path} and could not be downloaded ({e}); put "
                                 f"openai-community/gpt2's pytorch_model.bin there or name it with --gpt2_path") from None


def load_gpt2(path, block_size, dropout):
    """OpenAI's GPT-2 (124M) from Hugging Face's pytorch_model.bin, downloaded once if absent. Its
    position table (1024) is cut to block_size when that is smaller."""
    fetch_gpt2(path)
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable pytorch_model.bin ({type(e).__name__})") from None
    n_embd = state_dict["wte.weight" if "wte.weight" in state_dict else "transformer.wte.weight"].size(1)
    model = GPT.from_gpt2(state_dict, n_head=n_embd // 64, dropout=dropout)
    if block_size < model.config.block_size:
        model.transformer.wpe.weight = torch.nn.Parameter(model.transformer.wpe.weight[:block_size].clone())
        model.config.block_size = block_size
    return model


# Monitoring ---------------------------------------------------------------------------------------

PEAK_FLOPS = {  # dense bf16/fp16 tensor-core FLOP/s from NVIDIA's data sheets, matched in device names
    "H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12,
}


def read_log(path, upto):
    """The log's records up to step `upto`: what came after the checkpoint will be done again. A line
    cut short by a crash ends the reading."""
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if record["step"] > upto:
            break
        records.append(record)
    return records


def peak_flops(device, dtype):
    """The device's peak FLOP/s for this dtype where we know it (MFU is reported only then), else None."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


def write_svg(records, path, title):
    """The loss curve as an SVG picture, drawn with the standard library: train loss at every step,
    val loss at each evaluation. Open it in a browser."""
    W, H, left, right, top, bottom = 720, 420, 64, 24, 40, 48
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    x_max = max(s for s, _ in train + val)
    y_lo, y_hi = min(v for _, v in train + val), max(v for _, v in train + val)
    y_lo, y_hi = (y_lo - 0.5, y_hi + 0.5) if y_hi - y_lo < 1e-9 else (y_lo, y_hi)

    def xy(step, loss):
        return (f"{left + (W - left - right) * step / x_max:.1f},"
                f"{top + (H - top - bottom) * (y_hi - loss) / (y_hi - y_lo):.1f}")

    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
           f'font-size="12"><rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="14">{escape(title)}</text>']
    for i in range(6):  # grid lines with their values
        loss, step = y_lo + (y_hi - y_lo) * i / 5, round(x_max * i / 5)
        x0, y0 = xy(0, loss).split(",")
        x1, _ = xy(x_max, loss).split(",")
        xs, ys = xy(step, y_lo).split(",")
        svg += [f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#ddd"/>',
                f'<text x="{float(x0) - 6}" y="{float(y0) + 4}" text-anchor="end">{loss:.2f}</text>',
                f'<text x="{xs}" y="{float(ys) + 18}" text-anchor="middle">{step}</text>']
    svg += [f'<text x="{W / 2}" y="{H - 8}" text-anchor="middle">step</text>',
            f'<text x="16" y="{H / 2}" transform="rotate(-90 16 {H / 2})" text-anchor="middle">loss (nats/token)</text>',
            f'<polyline fill="none" stroke="#4477aa" stroke-width="1" points="{" ".join(xy(*p) for p in train)}"/>',
            f'<polyline fill="none" stroke="#ee6677" stroke-width="2" points="{" ".join(xy(*p) for p in val)}"/>']
    svg += [f'<circle cx="{xy(*p).split(",")[0]}" cy="{xy(*p).split(",")[1]}" r="3" fill="#ee6677"/>' for p in val]
    svg += [f'<text x="{W - right - 150}" y="{top + 16}" fill="#4477aa">train loss</text>',
            f'<text x="{W - right - 150}" y="{top + 32}" fill="#ee6677">val loss</text>', "</svg>"]
    path.write_text("\n".join(svg))


# The run ------------------------------------------------------------------------------------------

def keep_freed_memory():
    """CPU speed-up on Linux: let the C allocator keep freed memory for reuse.

    glibc's malloc gives each large block fresh pages from the kernel (mmap) and hands them back when
    the block is freed. A training step allocates and frees hundreds of MB of logits and gradients,
    so the kernel zeroes new pages over and over: in a short default run on our 2-core machine that
    was 58 s of system time out of 68 s. Serving large blocks from the heap, and never trimming it,
    made training steps 1.6x and evaluation 2.5x faster there (bench.py). Memory use stays at its peak."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # another C library (musl, ...): leave it as it is
        return
    libc.mallopt(-4, 0)  # M_MMAP_MAX = 0: no block gets a mapping of its own
    libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD: never give the heap's free top back to the OS


def pick_device(name):
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def pick_dtype(name, device):
    """For "auto" on `device` (cpu, cuda or mps): bfloat16 on GPUs that support it (float32's range, so no
    loss scaling is needed), float16 on older GPUs (with the GradScaler), float32 on CPUs and Apple GPUs."""
    if name == "auto":
        name = "float32" if device != "cuda" else "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return getattr(torch, name)


def build(mcfg, cfg, checkpoint, device, dtype):
    """The model (unwrapped), the optimizer and the GradScaler, from scratch, GPT-2 or a checkpoint."""
    if cfg.init_from == "gpt2":
        raw = load_gpt2(cfg.gpt2_path, mcfg.block_size, mcfg.dropout)
    else:
        raw = (GPT if cfg.model == "gpt" else BERT)(mcfg)
    if checkpoint is not None:
        raw.load_state_dict(checkpoint["model"])
    raw.to(device)
    optimizer = AdamW(param_groups(raw, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    # Loss scaling (fp16 only): fp16 flushes gradients below ~6e-8 to zero. Multiplying the loss by a
    # large factor S lifts them into range; unscale_ divides by S before the update.
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scaler.is_enabled() and checkpoint["scaler"]:
            scaler.load_state_dict(checkpoint["scaler"])
    return raw, optimizer, scaler


def gather_rng(data_generator):
    """Every process's RNG states, gathered to all (rank 0 saves them)."""
    state = rng_state(data_generator)
    if not dist.is_initialized():
        return [state]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def main(argv=None):
    mcfg, cfg, given = parse_args(argv)
    checkpoint = None
    if cfg.init_from == "resume":
        checkpoint = load_checkpoint(Path(cfg.out_dir) / "ckpt.pt")
        mcfg, cfg = resume_configs(checkpoint, mcfg, cfg, given)
        if checkpoint["step"] >= (cfg.stop_at or cfg.max_steps):
            print(f"{cfg.out_dir}/ckpt.pt is at step {checkpoint['step']} already: nothing to do (raise --max_steps "
                  f"to train further)")
            return
    elif (Path(cfg.out_dir) / "ckpt.pt").exists():
        raise CheckpointError(f"{cfg.out_dir}/ckpt.pt exists: continue it with --init_from resume, or train into "
                              f"another --out_dir (nothing trained is overwritten)")
    if cfg.init_from == "gpt2" and (cfg.model != "gpt" or given & {"vocab_size", "n_layer", "n_head", "n_embd", "bias"}):
        raise CheckpointError("--init_from gpt2 takes its architecture from GPT-2's weights: use --model gpt and "
                              "no --vocab_size/--n_layer/--n_head/--n_embd/--bias (--block_size may shorten it)")
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    if device == "cpu":
        keep_freed_memory()
    distributed = "RANK" in os.environ  # set by torchrun
    if distributed:  # NCCL between GPUs, gloo between CPU processes
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        if device == "cuda":
            device = f"cuda:{os.environ['LOCAL_RANK']}"
            torch.cuda.set_device(device)
    try:
        train(mcfg, cfg, checkpoint, torch.device(device), dtype)
    finally:  # also on errors and Ctrl-C, so no process waits forever for the others
        if distributed:
            dist.destroy_process_group()


def train(mcfg, cfg, checkpoint, device, dtype):
    """Set up a run (data, model, optimizer, the run's counters, fresh or from the checkpoint), then loop."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    torch.manual_seed(cfg.seed)  # the same initial weights in every process...
    if rank == 0:
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        data.prepare(cfg.data_dir, cfg.text or None)
        if cfg.init_from == "gpt2":
            fetch_gpt2(cfg.gpt2_path)
    if world > 1:
        dist.barrier()  # the others wait until rank 0 has prepared the data (and fetched GPT-2)
    splits = {split: data.open_split(cfg.data_dir, split) for split in ("train", "val")}
    raw, optimizer, scaler = build(mcfg, cfg, checkpoint, device, dtype)
    torch.manual_seed(cfg.seed + rank)  # ...but each process its own dropout masks
    data_generator = torch.Generator().manual_seed(cfg.seed + rank)  # ...and its own batches
    state = {"step": 0, "best_val_loss": float("inf"), "skipped_steps": 0, "tokens": 0}  # saved in checkpoints
    if checkpoint is not None:
        state = {key: checkpoint[key] for key in state}
        if len(checkpoint["rng"]) == world:
            set_rng_state(checkpoint["rng"][rank], data_generator)
        else:
            say(f"note: the checkpoint was written by {len(checkpoint['rng'])} processes, now {world}: "
                f"the data order is drawn afresh")
            data_generator.manual_seed(hash((cfg.seed, rank, state["step"])))
    compiled = torch.compile(raw) if cfg.compile else raw
    model = DistributedDataParallel(compiled, device_ids=[device] if device.type == "cuda" else None) \
        if world > 1 else compiled
    loop(model, optimizer, scaler, splits, data_generator, state, cfg, device, dtype)


def loop(model, optimizer, scaler, splits, data_generator, state, cfg, device, dtype):
    """Optimizer steps until the session ends, with evaluation, the log and checkpoints."""
    raw, world = unwrap(model), dist.get_world_size() if dist.is_initialized() else 1
    T, B, accum, stop = raw.config.block_size, cfg.batch_size, cfg.grad_accum_steps, cfg.stop_at or cfg.max_steps
    tokens_per_step = B * T * accum * world
    loss_fn = gpt_loss if cfg.model == "gpt" else bert_loss
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    flops, peak = flops_per_token(raw, T, 1.0 if cfg.model == "gpt" else cfg.mask_prob), peak_flops(device, dtype)
    say(f"{type(raw).__name__}: {num_params(raw) / 1e6:.2f}M parameters ({num_params(raw, False) / 1e6:.2f}M "
        f"without positions) on {device}, {str(dtype).removeprefix('torch.')}\n"
        f"data: {cfg.data_dir}: {len(splits['train']):,} train and {len(splits['val']):,} val tokens\n"
        f"tokens per step: {B} sequences x {T} tokens x {accum} micro-steps x {world} processes = {tokens_per_step:,}")

    def next_batch():
        if cfg.model == "gpt":
            return data.to_device(data.get_batch(splits["train"], B, T, data_generator), device)
        inputs, labels = data.get_mlm_batch(splits["train"], B, T, data_generator, cfg.mask_prob)
        return data.to_device(inputs, device), data.to_device(labels, device)

    out_dir, start_time = Path(cfg.out_dir), time.time()
    records = start_log(out_dir / "log.jsonl", state["step"])
    last_saved = f"{out_dir / 'ckpt.pt'} (step {state['step']})" if state["step"] else "none written yet"
    bar = tqdm(total=stop, initial=state["step"], desc=f"training {cfg.model}", unit="step", disable=not is_main())
    while state["step"] < stop:
        t0 = time.perf_counter()
        lr = lr_at(state["step"], cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        try:
            loss, grad_norm, skipped = train_step(model, optimizer, scaler, [next_batch() for _ in range(accum)],
                                                  loss_fn, cfg.grad_clip, autocast)
        except FloatingPointError as e:
            raise FloatingPointError(f"{e} at step {state['step'] + 1}: training diverged and nothing was saved "
                                     f"from it. Last good checkpoint: {last_saved}. Try a lower --lr, --dtype "
                                     f"bfloat16 instead of float16, or --grad_clip 1") from None
        state["step"], state["skipped_steps"] = state["step"] + 1, state["skipped_steps"] + skipped
        state["tokens"] += tokens_per_step
        tokens_per_s = tokens_per_step / (time.perf_counter() - t0)
        record = {"step": state["step"], "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": state["tokens"],
                  "tokens_per_s": round(tokens_per_s), "mfu": flops * tokens_per_s / (peak * world) if peak else None,
                  "skipped_steps": state["skipped_steps"]}
        if state["step"] % cfg.eval_interval == 0 or state["step"] == stop:
            val_loss, _ = evaluate(raw, splits["val"], cfg.model, T, B, device, autocast, cfg.eval_iters,
                                   cfg.mask_prob, progress=is_main())
            state["best_val_loss"] = min(state["best_val_loss"], val_loss)
            record.update(val_loss=val_loss, val_ppl=math.exp(val_loss))
            say(f"step {state['step']}: val loss {val_loss:.4f}, perplexity {math.exp(val_loss):.2f}")
        if is_main():
            add_to_log(records, record, out_dir, f"{type(raw).__name__} on {cfg.data_dir}")
        if state["step"] % cfg.ckpt_interval == 0 or state["step"] == stop:
            save_run(out_dir / "ckpt.pt", raw, optimizer, scaler, state, cfg, data_generator)
            last_saved = f"{out_dir / 'ckpt.pt'} (step {state['step']})"
        bar.update(1)
        bar.set_postfix_str(f"loss {loss:.3f}, lr {lr:.1e}, {tokens_per_s:,.0f} tok/s" + (
            f", {state['skipped_steps']} skipped" if scaler.is_enabled() else ""))
    bar.close()
    say(f"done: step {state['step']}, {state['tokens']:,} tokens seen, {time.time() - start_time:.0f} s in this "
        f"session\nval loss {val_loss:.4f}, perplexity {math.exp(val_loss):.2f} (over "
        + ("the whole val split)" if cfg.eval_iters == 0 else f"the first {cfg.eval_iters} val batches)")
        + (f"; {state['skipped_steps']} steps skipped by the fp16 loss scaler" if scaler.is_enabled() else "")
        + f"\ncheckpoint: {out_dir / 'ckpt.pt'}\nlog: {out_dir / 'log.jsonl'}\nloss curve: {out_dir / 'loss.svg'}")


def is_main():
    """Only the first process (rank 0) prints, logs and saves."""
    return not dist.is_initialized() or dist.get_rank() == 0


def say(text):
    if is_main():
        tqdm.write(text)  # above the progress bar, not through it


def unwrap(model):
    """The model itself, under DistributedDataParallel's wrapper and torch.compile's."""
    model = model.module if isinstance(model, DistributedDataParallel) else model
    return getattr(model, "_orig_mod", model)


def start_log(path, step):
    """The records of the log up to `step` (none for a fresh run), with the file cut back to them (rank 0)."""
    records = read_log(path, upto=step) if step > 0 else []
    if is_main():
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def add_to_log(records, record, out_dir, title):
    records.append(record)
    with open(out_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    if "val_loss" in record:
        write_svg(records, out_dir / "loss.svg", title)


def save_run(path, raw, optimizer, scaler, state, cfg, data_generator):
    """Everything needed to continue exactly: weights, optimizer moments, loss scale, the run's counters
    (the schedule is lr_at(step): the step is all of its state), both configs and every RNG state."""
    rng = gather_rng(data_generator)  # every process takes part
    if is_main():
        save_checkpoint(path, {"model": raw.state_dict(), "optimizer": optimizer.state_dict(),
                               "scaler": scaler.state_dict(), **state, "model_config": asdict(raw.config),
                               "train_config": asdict(cfg), "rng": rng})


if __name__ == "__main__":
    try:
        main()
    except (data.DataError, CheckpointError, FloatingPointError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted: continue from the last checkpoint with --init_from resume")
