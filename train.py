"""
train.py: the pretraining loop, written out by hand.

One optimizer step, as `loop` runs it:
  1. the learning rate for this step: linear warmup, then cosine or linear decay (`lr_at`);
  2. grad_accum_steps micro-batches: forward under autocast (mixed precision), the loss divided by
     the number of micro-batches, backward through the GradScaler (fp16 only), gradients summing
     up in .grad; with several processes they are averaged across them on the last micro-batch
     only (`train_step`);
  3. unscale the gradients, measure their global norm and clip it;
  4. the update, by AdamW (adamw.py) or Muon (muon.py), skipped by the scaler if fp16 overflowed;
  5. monitoring: loss, learning rate, gradient norm, tokens/s, MFU, skipped steps; a NaN stops
     the run; evaluation on the validation split; a checkpoint that makes resuming exact.
The objective (clm.CLM for GPT, mlm.MLM for BERT) makes the batches and the loss; the loop is the
same for both.

Run:
    python train.py                         GPT on WikiText-2 (fetched on first use), into out/
    python train.py --model bert            BERT with the masked-LM objective
    python train.py --init_from resume      continue out/ckpt.pt exactly where it stopped
    python train.py --init_from gpt2        continue pretraining OpenAI's GPT-2 (124M)
    python train.py --help                  every setting, with its default

Several processes (data parallel, DistributedDataParallel): each process holds the whole model,
reads its own batches, and the gradients are averaged across processes before each update.
With --fsdp each process holds only a slice of the weights, gradients and AdamW's moments
(shard.py), and checkpoints are folders of slices (out/ckpt.dcp).
    torchrun --standalone --nproc_per_node=4 train.py     4 GPUs (or CPU processes), one machine
    torchrun --standalone --nproc_per_node=4 train.py --fsdp          the same, sharded
    (docs/guide.md: several machines; sharding)

Read next: shard.py, what --fsdp changes (then sample.py, using what you trained).
"""

import argparse
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import data
import monitor
import prepared
import runtime
import shard
from adamw import AdamW
from checkpoint import GPT2_PATH, CheckpointError, checkpoint_path, fit_vocabulary
from checkpoint import load_checkpoint, load_gpt2, load_model
from checkpoint import gather_rng, lock, objective_for, save_checkpoint, set_rng_state
from mlm import word_edges
from model import ModelConfig, check, check_choices, flops_per_token, param_groups
from model import setting
from muon import Muon
from runtime import say


@dataclass
class TrainConfig:
    model: Literal["gpt", "bert"] = setting("gpt", "gpt: causal LM (clm.py); bert: masked LM")
    data_dir: str = setting(data.WIKITEXT_DIR, "the corpus's .bin files (data.py prepares them)")
    tokenizer_size: int = setting(0, "0: GPT-2's tokenizer; N: one of N ids trained on the "
                                  "training text (bpe.py), for a --data_dir not yet prepared")
    text: str = setting("", "your own .txt file or folder, instead of WikiText-2")
    no_clean: bool = setting(False, "--text as it is: no cleaning or deduplication (clean.py)")
    out_dir: str = setting("out", "where ckpt.pt, log.jsonl and loss.svg go")
    init_from: Literal["scratch", "resume", "gpt2"] = setting(
        "scratch", "resume: out_dir/ckpt.pt; gpt2: OpenAI's weights")
    gpt2_path: str = setting(GPT2_PATH, "GPT-2's weights for --init_from gpt2")
    max_steps: int = setting(600, "optimizer steps; the learning-rate schedule ends here")
    stop_at: int = setting(0, "end this session after this step (0: at max_steps)")
    batch_size: int = setting(16, "sequences per micro-batch (per process)")
    grad_accum_steps: int = setting(1, "micro-batches per optimizer step")
    lr: float = setting(2e-3, "peak learning rate")
    min_lr: float = setting(2e-4, "learning rate reached at max_steps (Chinchilla: lr / 10)")
    warmup_steps: int = setting(30, "steps of linear warmup from lr / warmup_steps to lr")
    decay: Literal["cosine", "linear"] = setting("cosine", "shape of the decay to min_lr")
    weight_decay: float = setting(0.1, "AdamW's decoupled decay, on matrices only")
    beta1: float = setting(0.9, "AdamW: averaging of gradients")
    beta2: float = setting(0.95, "AdamW: averaging of squared gradients (GPT-3: 0.95)")
    eps: float = setting(1e-8, "AdamW: keeps the division finite")
    grad_clip: float = setting(1.0, "clip the global gradient norm to this (0: no clipping)")
    optimizer: Literal["adamw", "muon"] = setting(
        "adamw", "adamw: AdamW for every weight; muon: Muon for the Linear layers' weights, AdamW "
        "for the rest (muon.py)")
    mask_prob: float = setting(0.3, "BERT: share of tokens chosen for prediction (BERT's "
                               "paper: 0.15; docs/bert.md)")
    mask_unit: Literal["tokens", "words"] = setting(
        "tokens", "BERT: hide tokens, or whole words (every piece of a word BPE splits)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = setting(
        "auto", "auto: bfloat16 where fast (recent GPUs, some CPUs), else float16 on GPUs, "
        "float32 on CPUs")
    device: Literal["auto", "cpu", "cuda", "mps"] = setting("auto", "auto: cuda, mps, then cpu")
    eval_interval: int = setting(200, "evaluate every this many steps, and at the end")
    eval_iters: int = setting(0, "batches per evaluation (0: the whole val split, exactly)")
    ckpt_interval: int = setting(200, "write ckpt.pt every this many steps, and at the end")
    seed: int = setting(1337, "initial weights, data order, dropout")
    compile: bool = setting(False, "torch.compile the model (pays off on GPUs, big models)")
    fsdp: bool = setting(False, "under torchrun: shard weights, gradients and AdamW's moments "
                         "across the processes (shard.py) instead of copying them (DDP)")

    def __post_init__(self):
        check_choices(self)
        for name in ("max_steps", "batch_size", "grad_accum_steps", "eval_interval",
                     "ckpt_interval"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "must be at least 1")
        for name in ("tokenizer_size", "stop_at", "warmup_steps", "eval_iters", "weight_decay",
                     "grad_clip"):
            check(getattr(self, name) >= 0, name, getattr(self, name), "must not be negative")
        check(self.lr > 0, "lr", self.lr, "must be positive")
        check(0 <= self.min_lr <= self.lr, "min_lr", self.min_lr, f"must be in [0, --lr {self.lr}]")
        check(self.stop_at <= self.max_steps, "stop_at", self.stop_at, f"is past --max_steps "
              f"{self.max_steps}, where the schedule ends: raise --max_steps to train longer")
        check(self.warmup_steps <= self.max_steps, "warmup_steps", self.warmup_steps,
              f"must not exceed --max_steps {self.max_steps}")
        for name in ("beta1", "beta2"):
            check(0 <= getattr(self, name) < 1, name, getattr(self, name), "must be in [0, 1)")
        check(self.eps > 0, "eps", self.eps, "must be positive")
        check(0 < self.mask_prob < 1, "mask_prob", self.mask_prob, "must be between 0 and 1")


MODEL_FIELDS, TRAIN_FIELDS = ModelConfig.__dataclass_fields__, TrainConfig.__dataclass_fields__


@dataclass
class Run:
    """What a training run holds. save_run writes it to the checkpoint; a resume restores it."""
    model: torch.nn.Module  # what is trained: the model, maybe inside DDP and torch.compile
    optimizer: AdamW | Muon
    scaler: torch.amp.GradScaler  # fp16's loss scale (disabled for other dtypes)
    objective: object  # clm.CLM or mlm.MLM: batches, loss, evaluation
    generator: torch.Generator  # this process's training batches (and BERT's masks)
    step: int = 0  # optimizer steps done
    tokens: int = 0  # tokens trained on
    skipped_steps: int = 0  # steps the fp16 loss scaler skipped
    best_val_loss: float = math.inf

    COUNTERS = ("step", "tokens", "skipped_steps", "best_val_loss")  # saved as they are


# The run ------------------------------------------------------------------------------------------

def main(argv=None):
    given = parse_args(argv)  # {name: value} of the flags on the command line
    out_dir = given.get("out_dir", TRAIN_FIELDS["out_dir"].default)
    checkpoint, path = None, checkpoint_path(out_dir)  # ckpt.pt, or ckpt.dcp (--fsdp)
    if given.get("init_from") == "resume":
        checkpoint = load_checkpoint(path, tensors=False)  # a sharded run loads only its slices
        mcfg, cfg = resume_configs(checkpoint, given, out_dir)
        if checkpoint["step"] >= (cfg.stop_at or cfg.max_steps):
            print(f"{path} is at step {checkpoint['step']} already: nothing to do (raise "
                  f"--max_steps to train further)")
            return
    else:
        mcfg, cfg = make_configs({**objective_for(given.get("model", "gpt")).defaults, **given})
        if path.exists():
            raise CheckpointError(f"{path} exists: continue it with --init_from resume, or train "
                                  f"into another --out_dir (nothing trained is overwritten)")
    check_settings(cfg, given)
    device = runtime.pick_device(cfg.device)
    dtype = runtime.pick_dtype(cfg.dtype, device)
    if cfg.fsdp and dtype == torch.float16:
        raise runtime.ConfigError("--fsdp: float16 would need a sharded loss scaler; use --dtype "
                                  "bfloat16, or float32")
    if device == "cpu":
        runtime.keep_freed_memory()
    with runtime.processes(device) as device:  # one, or torchrun's (data parallel)
        if not runtime.is_main():
            return train(mcfg, cfg, checkpoint, device, dtype, given)
        with lock(runtime.make_folder(cfg.out_dir, "out_dir")):  # rank 0 writes out_dir
            train(mcfg, cfg, checkpoint, device, dtype, given)


def train(mcfg, cfg, checkpoint, device, dtype, given):
    """Set up a run (data, model, optimizer, counters: fresh or from the checkpoint), then loop."""
    rank, world = runtime.rank_and_world()
    if rank == 0:
        data.prepare(cfg.data_dir, cfg.text or None, clean_text=False if cfg.no_clean else None,
                     vocab_size=tokenizer_size(cfg, given))
    if world > 1:
        dist.barrier()  # the others wait until rank 0 has prepared the data
    mcfg, eot_id = fit_vocabulary(mcfg, cfg, checkpoint, given)
    splits = {split: data.open_split(cfg.data_dir, split) for split in ("train", "val")}
    torch.manual_seed(cfg.seed)  # the same initial weights in every process...
    edges = None  # where words begin, for a BERT that hides whole words
    if cfg.mask_unit == "words":
        edges = word_edges(data.tokenizer(data.read_vocab(cfg.data_dir)))
    objective = objective_for(cfg.model, cfg.mask_prob, eot_id, edges)
    if checkpoint is not None and "model" not in checkpoint and not cfg.fsdp:
        checkpoint = load_checkpoint(checkpoint["sharded"])  # a sharded run's slices, made whole
    if checkpoint is not None and "model" in checkpoint:
        raw, *_ = load_model(checkpoint, mcfg)
    elif cfg.init_from == "gpt2":
        raw = load_gpt2(cfg.gpt2_path, mcfg.block_size, mcfg.dropout)
    else:  # (a sharded run that resumes loads its slices once it is sharded: restore_run)
        raw = objective.Model(mcfg)
    raw.to(device)
    if cfg.fsdp:
        shard.wrap(raw, device, dtype)  # its parameters are now slices: the optimizer comes after
    muon = cfg.optimizer == "muon"
    optimizer = (Muon if muon else AdamW)(param_groups(raw, cfg.weight_decay, muon=muon),
                                          lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    # Loss scaling (fp16 only): fp16 flushes gradients below ~6e-8 to zero. Multiplying the loss
    # by a large factor S lifts them into range; unscale_ divides by S before the update.
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    torch.manual_seed(cfg.seed + rank)  # ...but each process its own dropout masks
    generator = torch.Generator().manual_seed(cfg.seed + rank)  # ...and its own batches
    model = torch.compile(raw) if cfg.compile else raw
    if world > 1 and not cfg.fsdp:
        model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                        else None)
    run = Run(model, optimizer, scaler, objective, generator)
    if checkpoint is not None:
        restore_run(run, checkpoint, cfg)
    loop(run, splits, cfg, device, dtype)


def loop(run, splits, cfg, device, dtype):
    """Optimizer steps until the session ends, with evaluation, the log and checkpoints."""
    raw, (_, world) = runtime.unwrap(run.model), runtime.rank_and_world()
    T, B, accum, stop = raw.config.block_size, cfg.batch_size, cfg.grad_accum_steps, cfg.stop_at
    stop, tokens_per_step = stop or cfg.max_steps, B * T * accum * world
    sharded_gpu = cfg.fsdp and device.type == "cuda"  # FSDP's mixed precision instead (shard.py)
    autocast = runtime.autocast(device, torch.float32 if sharded_gpu else dtype)
    flops = flops_per_token(raw, T, run.objective.head_fraction)
    peak = monitor.peak_flops(device, dtype)
    name = run.objective.Model.__name__  # (type(raw) may be FSDP's subclass of it)
    monitor.print_start(run, splits, cfg, device, dtype, world)
    out_dir, start_time, metrics = Path(cfg.out_dir), time.time(), {}
    records = monitor.start_log(out_dir / "log.jsonl", run.step) if runtime.is_main() else []
    saved = run.step  # the step of the checkpoint on disk (0: none yet)
    bar = tqdm(total=stop, initial=run.step, desc=f"training {cfg.model}", unit="step",
               disable=not runtime.is_main())
    try:
        while run.step < stop:
            t0 = time.perf_counter()
            lr = lr_at(run.step, cfg)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            batches = [next_batch(run, splits["train"], B, T, device) for _ in range(accum)]
            loss, grad_norm, skipped = train_step(run, batches, cfg.grad_clip, autocast)
            run.step, run.tokens = run.step + 1, run.tokens + tokens_per_step
            run.skipped_steps += skipped
            tokens_per_s = tokens_per_step / (time.perf_counter() - t0)
            record = {"step": run.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                      "tokens": run.tokens, "tokens_per_s": round(tokens_per_s),
                      "mfu": flops * tokens_per_s / (peak * world) if peak else None,
                      "skipped_steps": run.skipped_steps}
            if run.step % cfg.eval_interval == 0 or run.step == stop:
                metrics = evaluate(run, splits["val"], cfg, autocast)
                record.update({f"val_{k}": v for k, v in metrics.items() if k != "tokens"},
                              val_ppl=math.exp(metrics["loss"]))
            if runtime.is_main():
                monitor.append(records, record, out_dir, f"{name} on {cfg.data_dir}")
            if run.step % cfg.ckpt_interval == 0 or run.step == stop:
                save_run(out_dir, run, cfg)
                saved = run.step
            bar.update(1)
            bar.set_postfix_str(f"loss {loss:.3f}, lr {lr:.1e}, {tokens_per_s:,.0f} tok/s" + (
                f", {run.skipped_steps} skipped" if run.scaler.is_enabled() else ""))
    except (FloatingPointError, KeyboardInterrupt) as e:
        raise stopped(e, run.step, checkpoint_path(out_dir), saved) from None
    bar.close()
    monitor.print_end(run, cfg, metrics, time.time() - start_time, checkpoint_path(out_dir))


def stopped(reason, step, path, saved):
    """The one line a run that stops early ends with: why, and what to do next."""
    go_on = f"{path} holds step {saved}: go on from there with --init_from resume" if saved \
        else "no checkpoint was written yet: start again"
    if isinstance(reason, KeyboardInterrupt):
        return runtime.UserError(f"interrupted during step {step + 1}; {go_on}")
    return runtime.UserError(f"{reason} at step {step + 1}: training diverged, and nothing was "
                             f"saved from it; {go_on}, with a lower --lr or a longer "
                             f"--warmup_steps (or --dtype bfloat16 instead of float16)")


def next_batch(run, tokens, B, T, device):
    """One training micro-batch: random token blocks, made into (inputs, targets) by the
    objective (CLM: the next tokens; MLM: masked tokens), moved to the device."""
    inputs, targets = run.objective.train_batch(data.get_batch(tokens, B, T, run.generator),
                                                run.generator)
    return runtime.to_device(inputs, device), runtime.to_device(targets, device)


def tokenizer_size(cfg, given):
    """The tokenizer to prepare data_dir with (None: GPT-2's). A folder already prepared keeps the
    one it was made with, unless --tokenizer_size asks for another size (data.prepare then
    tokenizes it again), so `--model bert --data_dir data/wikitext-2` trains on GPT-2's tokens as
    they are. A trained folder cannot go back to GPT-2's: asking for that is refused."""
    meta = prepared.read_meta(cfg.data_dir)
    if meta is not None and "tokenizer_size" not in given:
        return None
    if meta is not None and not cfg.tokenizer_size and "vocab_size" in meta["source"]:
        raise runtime.ConfigError(f"--tokenizer_size 0: --data_dir {cfg.data_dir} holds the tokens "
                                  f"of a trained tokenizer ({meta['tokenizer']}); prepare GPT-2's "
                                  f"in a folder of its own (another --data_dir)")
    return cfg.tokenizer_size or None


def train_step(run, micro_batches, grad_clip, autocast):
    """One optimizer step over a list of (inputs, targets) micro-batches. Returns (mean loss,
    gradient norm before clipping, whether the scaler skipped the update). Raises
    FloatingPointError on a NaN/inf loss."""
    model, optimizer, scaler, objective = run.model, run.optimizer, run.scaler, run.objective
    ddp = isinstance(model, DistributedDataParallel)
    fsdp = hasattr(model, "set_requires_gradient_sync")  # shard.wrap made it an FSDP module
    total = 0.0
    for i, (inputs, targets) in enumerate(micro_batches):
        # average gradients across processes only once, after the last micro-batch
        if ddp:
            model.require_backward_grad_sync = i == len(micro_batches) - 1
        if fsdp:
            model.set_requires_gradient_sync(i == len(micro_batches) - 1)
        with autocast:
            loss = objective.loss(model, inputs, targets)
        # Dividing by the number of micro-batches makes the summed .grad the mean over all of
        # them: exactly the gradient of one batch len(micro_batches) times bigger.
        scaler.scale(loss / len(micro_batches)).backward()
        total += loss.detach()
    loss = total / len(micro_batches)
    if ddp or fsdp:  # every process reports the loss averaged over all of them
        dist.all_reduce(loss)
        loss /= dist.get_world_size()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    scaler.unscale_(optimizer)  # fp16: divide the loss scale back out: true norms and clipping
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
    loss, grad_norm = loss.item(), shard.local(grad_norm).item()  # FSDP: a norm over all slices
    if not math.isfinite(loss) or (not scaler.is_enabled() and not math.isfinite(grad_norm)):
        optimizer.zero_grad()
        raise FloatingPointError(f"loss {loss}, gradient norm {grad_norm}")
    scale = scaler.get_scale()
    scaler.step(optimizer)  # fp16: skips the update if any gradient overflowed to inf/NaN...
    scaler.update()  # ...and then halves the loss scale (or doubles it after 2000 good steps)
    optimizer.zero_grad()
    return loss, grad_norm, scaler.get_scale() < scale


def evaluate(run, tokens, cfg, autocast):
    """The val metrics of the model as it is now (data.evaluate); prints them."""
    metrics = data.evaluate(runtime.unwrap(run.model), run.objective, tokens, cfg.batch_size,
                            autocast, cfg.eval_iters)
    run.best_val_loss = min(run.best_val_loss, metrics["loss"])
    say(f"step {run.step}: val {run.objective.describe(metrics)}")
    return metrics


# The learning-rate schedule -----------------------------------------------------------------------

def lr_at(step, cfg):
    """Learning rate of optimizer step `step` (0, 1, ...): a pure function of the step, so
    nothing about it needs saving.

    Warmup: the first steps move weights that are still random, with Adam's second-moment
    estimates built from a handful of gradients; a small, growing learning rate keeps those first
    updates from throwing the model somewhere it cannot recover from. Then decay: large steps
    early to make progress, small steps late to settle into a minimum instead of bouncing."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps  # lr / warmup_steps, ..., lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)  # 0 -> 1
    if cfg.decay == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * progress))  # 1 -> 0 along half a cosine wave
    else:
        factor = 1 - progress
    return cfg.min_lr + factor * (cfg.lr - cfg.min_lr)


# Checkpoints and exact resume ---------------------------------------------------------------------

def save_run(out_dir, run, cfg):
    """Everything needed to continue exactly: weights, optimizer moments, loss scale, the run's
    counters (the schedule is lr_at(step): the step is all of its state), both configs and every
    process's RNG states; and the tokens of a trained tokenizer, for sample.py. Into ckpt.pt, or
    for a sharded run into the folder ckpt.dcp, every process writing its slices (shard.save)."""
    raw, path = runtime.unwrap(run.model), out_dir / ("ckpt.dcp" if cfg.fsdp else "ckpt.pt")
    meta = {"scaler": run.scaler.state_dict(), **{k: getattr(run, k) for k in Run.COUNTERS},
            "model_config": asdict(raw.config), "train_config": asdict(cfg),
            "rng": gather_rng(run.generator), "tokenizer": data.read_vocab(cfg.data_dir)}
    if cfg.fsdp:
        shard.save(path, raw, run.optimizer, meta, save_checkpoint)
    elif runtime.is_main():
        save_checkpoint(path, {"model": raw.state_dict(), "optimizer": run.optimizer.state_dict(),
                               **meta})
    other = out_dir / ("ckpt.pt" if cfg.fsdp else "ckpt.dcp")  # from before a switch of --fsdp
    if runtime.is_main() and other.is_dir():
        shutil.rmtree(other)
    elif runtime.is_main():
        other.unlink(missing_ok=True)


def restore_run(run, checkpoint, cfg):
    """Put a checkpoint's optimizer moments, loss scale, counters and RNG states into the run.
    A sharded run reads its slices of the weights and moments here (shard.py)."""
    if "model" not in checkpoint:  # a sharded checkpoint, and a sharded run to read it
        shard.load(checkpoint["sharded"], runtime.unwrap(run.model), run.optimizer)
    else:
        moments = checkpoint["optimizer"]
        run.optimizer.load_state_dict(shard.slice_like(moments, run.optimizer) if cfg.fsdp
                                      else moments)
    if run.scaler.is_enabled() and checkpoint["scaler"]:
        run.scaler.load_state_dict(checkpoint["scaler"])
    for key in Run.COUNTERS:
        setattr(run, key, checkpoint[key])
    rank, world = runtime.rank_and_world()
    if len(checkpoint["rng"]) == world:
        set_rng_state(checkpoint["rng"][rank], run.generator)
    else:
        say(f"note: the checkpoint was written by {len(checkpoint['rng'])} processes, now "
            f"{world}: the data order is drawn afresh")
        run.generator.manual_seed(hash((cfg.seed, rank, run.step)))


def resume_configs(checkpoint, given, out_dir):
    """The configs of a resumed run: the checkpoint's, with the flags given on top (and checked
    only then: --max_steps 20 is fine for a run that warms up for 10 steps). A model flag that
    would change the trained model is refused, with every difference listed; so is another
    --optimizer, whose saved state would not fit."""
    saved_model, saved_train = checkpoint["model_config"], checkpoint["train_config"]
    switches = ("explicit_attention", "grad_checkpointing")  # how to compute, not what: free
    diffs = [f"--{k} {given[k]} (checkpoint: {v})" for k, v in saved_model.items()
             if k in given and k not in switches and given[k] != v]
    # (a checkpoint from before --optimizer gets TrainConfig's default, AdamW, as make_configs does)
    for key, saved in (("model", saved_train["model"]),
                       ("optimizer", saved_train.get("optimizer",
                                                     TRAIN_FIELDS["optimizer"].default))):
        if given.get(key, saved) != saved:
            diffs.append(f"--{key} {given[key]} (checkpoint: {saved})")
    if diffs:
        raise CheckpointError(f"cannot resume: the checkpoint's run differs from the flags: "
                              f"{'; '.join(diffs)}")
    session = {"stop_at": 0, "out_dir": out_dir}  # not kept from the last session
    return make_configs({**saved_model, **saved_train, **session, **given})


# The command line: the fields of ModelConfig and TrainConfig become --flags ----------------------

def parse_args(argv=None):
    """{name: value} of the flags given: main makes the configs from them (with the defaults, or
    with a checkpoint's settings). Defaults and help texts live in the dataclasses' fields
    (model.setting); BERT starts from a few defaults of its own (mlm.MLM.defaults)."""
    parser = runtime.Parser(prog="train.py", description="Pretrain a GPT or a BERT.",
                            argument_default=argparse.SUPPRESS)
    bert = {k: f"with --model bert: {v}" for k, v in objective_for("bert").defaults.items()}
    for cls in (ModelConfig, TrainConfig):
        parser.add_config(cls, bert)
    return vars(parser.parse_args(argv))  # only the flags on the command line


def make_configs(settings):
    """(ModelConfig, TrainConfig) from {name: value}; a value they refuse is a ConfigError."""
    try:
        return (ModelConfig(**{k: v for k, v in settings.items() if k in MODEL_FIELDS}),
                TrainConfig(**{k: v for k, v in settings.items() if k in TRAIN_FIELDS}))
    except ValueError as e:
        raise runtime.ConfigError(str(e)) from None


def check_settings(cfg, given):
    """Refuse settings that cannot work together, in one line that names the flags."""
    if cfg.fsdp and cfg.optimizer == "muon":
        raise runtime.ConfigError("--fsdp leaves each process a slice of every matrix, and Muon "
                                  "needs whole ones: add --optimizer adamw")
    if cfg.fsdp and "RANK" not in os.environ:
        raise runtime.ConfigError("--fsdp shards the model across the processes that torchrun "
                                  "starts: run train.py under torchrun (docs/guide.md, Sharding)")
    for name in sorted(given.keys() & {"mask_prob", "mask_unit"}):  # a GPT would ignore them
        if cfg.model == "gpt":
            raise runtime.ConfigError(f"--{name} sets what a BERT hides; a GPT hides nothing: "
                                      f"add --model bert, or leave --{name} out")
    architecture = {"vocab_size", "n_layer", "n_head", "n_embd", "bias"}
    if cfg.init_from == "gpt2" and (cfg.model != "gpt" or given.keys() & architecture):
        raise runtime.ConfigError("--init_from gpt2 takes its architecture from GPT-2's weights: "
                                  "use --model gpt and no --vocab_size/--n_layer/--n_head/--n_embd/"
                                  "--bias (--block_size may shorten it)")


if __name__ == "__main__":
    runtime.run_program(main)
