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
The objective (clm.CLM for GPT, mlm.MLM for BERT, electra.RTD for ELECTRA, t5.SpanCorruption for
T5, xlnet.PLM for XLNet) makes the batches and the loss; the loop is the same for all. The loss
is the objective's lesson, the logits and then clm_loss or mlm_loss; --fused_head computes the
same number in the model's head, with less memory (model.HeadLoss).

Before the loop, `train` sets a run up in this order: the data, the model, the processes it runs in
(one, or torchrun's), the optimizer, and a resumed run's state. The settings are the fields of
config.py's TrainConfig and model.py's ModelConfig; a run prints those that differ from the
defaults of `--help`, and ends saying where its loss stands.

Run:
    python train.py                         GPT on WikiText-2 (fetched on first use), into out/
    python train.py --model bert            BERT with the masked-LM objective
    python train.py --model electra         ELECTRA: replaced-token detection (electra.py)
    python train.py --model t5              T5: span corruption, an encoder-decoder (t5.py)
    python train.py --model xlnet           XLNet: permuted LM, two streams (xlnet.py)
    python train.py --init_from resume      continue out/ckpt.pt exactly where it stopped
    python train.py --init_from gpt2        continue pretraining OpenAI's GPT-2 (124M)
    python train.py --help                  every setting, with its default

Several processes (data parallel, DistributedDataParallel): each process holds the whole model,
reads its own batches, and the gradients are averaged across processes before each update.
With --fsdp each process holds only a slice of the weights, gradients and AdamW's moments
(shard.py), and checkpoints are folders of slices (out/ckpt.dcp).
    torchrun --standalone --nproc_per_node=4 train.py     4 GPUs (or CPU processes), one machine
    torchrun --standalone --nproc_per_node=4 train.py --fsdp          the same, sharded
    torchrun --standalone --nproc_per_node=2 train.py --tp 2          each Block split in two
    torchrun --standalone --nproc_per_node=2 train.py --pp 2          the Blocks in two stages
    (docs/guide.md: several machines; sharding. docs/parallelism.md: --tp and --pp, parallel.py)

Read next: shard.py, what --fsdp changes (then sample.py, using what you trained).
"""

import functools
import math
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __name__ == "__main__":  # Ctrl-C while torch loads ends quietly too (then: run_program)
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import record_function
from tqdm import tqdm

import data
import monitor
import parallel
import prepared
import runtime
import shard
from adamw import AdamW
from checkpoint import CheckpointError, checkpoint_path, fit_vocabulary
from checkpoint import load_checkpoint, load_gpt2, load_model
from checkpoint import gather_rng, lock, objective_for, save_checkpoint, set_rng_state
from config import TrainConfig, check_settings, fresh_configs, parse_args, resume_configs
from mlm import word_edges
from model import flops_per_token, param_groups
from muon import Muon
from runtime import say


@dataclass
class Run:
    """What a training run holds. save_run writes it to the checkpoint; a resume restores it."""
    model: torch.nn.Module  # what is trained: the model, maybe inside DDP and torch.compile
    optimizer: AdamW | Muon
    scaler: torch.amp.GradScaler  # fp16's loss scale (disabled for other dtypes)
    objective: object  # clm.CLM, mlm.MLM, electra.RTD, ...: batches, loss, evaluation
    generator: torch.Generator  # this process's training batches (and BERT's masks)
    layout: parallel.Layout | None = None  # how the model is split across processes, if it is
    flops: float = 0.0  # training FLOPs per token of the whole model (for MFU)
    step: int = 0  # optimizer steps done
    tokens: int = 0  # tokens trained on
    skipped_steps: int = 0  # steps the fp16 loss scaler skipped
    best_val_loss: float = math.inf

    COUNTERS = ("step", "tokens", "skipped_steps", "best_val_loss")  # saved as they are


# The run ------------------------------------------------------------------------------------------

def main(argv=None):
    given = parse_args(argv)  # {name: value} of the flags on the command line
    out_dir = given.get("out_dir", TrainConfig.out_dir)
    checkpoint, path = None, checkpoint_path(out_dir)  # ckpt.pt, or ckpt.dcp (--fsdp)
    if given.get("init_from") == "resume":
        checkpoint = load_checkpoint(path, tensors=False)  # a sharded run loads only its slices
        mcfg, cfg = resume_configs(checkpoint, given, out_dir)
        if "model" not in checkpoint and not sharded_only(cfg):  # a sharded run's, read whole
            checkpoint = load_checkpoint(path)
        if checkpoint["step"] >= (cfg.stop_at or cfg.max_steps):
            flag = "--stop_at" if cfg.stop_at else "--max_steps"
            print(f"{path} is at step {checkpoint['step']} already, {flag} "
                  f"{cfg.stop_at or cfg.max_steps}: nothing to do (raise {flag} to train further)")
            return
    else:
        mcfg, cfg = fresh_configs(given)  # the defaults, a --model's own, the flags
        if path.exists():
            raise CheckpointError(f"{path} exists: continue it with --init_from resume, or train "
                                  f"into another --out_dir (nothing trained is overwritten)")
    check_settings(cfg, given)
    parallel.check(cfg, mcfg, given)
    device = runtime.pick_device(cfg.device)
    dtype = runtime.pick_dtype(cfg.dtype, device)
    layouts = (("fsdp", cfg.fsdp), ("tp", cfg.tp > 1), ("pp", cfg.pp > 1))
    split = [flag for flag, on in layouts if on]  # across processes: no float16
    if split and dtype == torch.float16:
        raise runtime.ConfigError(f"--{split[0]}: float16 would need a loss scaler across the "
                                  f"processes; use --dtype bfloat16, or float32")
    if device == "cpu":
        runtime.keep_freed_memory()
    with runtime.processes(device) as device:  # one, or torchrun's (data parallel)
        if not runtime.is_main():
            return train(mcfg, cfg, checkpoint, device, dtype, given)
        with lock(runtime.make_folder(cfg.out_dir, "out_dir")):  # rank 0 writes out_dir
            train(mcfg, cfg, checkpoint, device, dtype, given)


def sharded_only(cfg):
    """Whether the run is FSDP alone, which writes and reads checkpoints as folders of slices
    (shard.py); every other layout writes the whole model into ckpt.pt."""
    return cfg.fsdp and cfg.tp == 1


def train(mcfg, cfg, checkpoint, device, dtype, given):
    """Set up a run, then loop: the data, the model, the processes it runs in, the optimizer, and
    a resumed run's state."""
    resumed = checkpoint is not None
    if resumed:  # what the settings not given come from, and the values they bring
        source, brought = "the checkpoint", {**checkpoint["model_config"],
                                             **checkpoint["train_config"]}
    else:
        source, brought = f"--model {cfg.model}", objective_for(cfg.model).defaults
    monitor.print_settings((mcfg, cfg), given, source, brought)
    splits, objective, mcfg = open_data(mcfg, cfg, checkpoint, given)
    torch.manual_seed(cfg.seed)  # the same initial weights in every process
    raw = new_model(objective, mcfg, cfg, checkpoint).to(device)
    monitor.print_start(raw, objective, splits, cfg, device, dtype)
    flops = flops_per_token(raw, raw.config.block_size, objective.head_fraction)  # the whole's
    model, layout = distribute(raw, cfg, device, dtype, objective)  # as each process trains it
    raw = parallel.held(runtime.unwrap(model))  # (a pipeline's stage holds a part)
    muon = cfg.optimizer == "muon"
    optimizer = (Muon if muon else AdamW)(param_groups(raw, cfg.weight_decay, muon=muon),
                                          lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    # Loss scaling (fp16 only): fp16 flushes gradients below ~6e-8 to zero. Multiplying the loss
    # by a large factor S lifts them into range; unscale_ divides by S before the update.
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    torch.manual_seed(cfg.seed + runtime.rank_and_world()[0])  # each process its own dropout
    generator = torch.Generator().manual_seed(cfg.seed)  # one data order for all: next_batches
    run = Run(model, optimizer, scaler, objective, generator, layout, flops)
    if resumed:
        restore_run(run, checkpoint, cfg)
    loop(run, splits, cfg, device, dtype)


def open_data(mcfg, cfg, checkpoint, given):
    """(the train and val splits as memory maps, the objective, the model config): the data
    prepared by one process while the others wait, and what its tokenizer asks of the model (its
    vocabulary) and of the objective (where <|endoftext|> is, where words begin)."""
    prepare_data(cfg, given)
    splits = {split: data.open_split(cfg.data_dir, split) for split in ("train", "val")}
    edges = None  # where words begin, for a BERT that hides whole words
    if cfg.mask_unit == "words":
        edges = word_edges(data.tokenizer(data.read_vocab(cfg.data_dir)))
    objective = objective_for(cfg.model, mask_prob=cfg.mask_prob, edges=edges,
                              eot_id=prepared.read_meta(cfg.data_dir)["eot_id"],
                              fused=cfg.fused_head, disc_weight=cfg.disc_weight,
                              mean_span=cfg.mean_span, block_size=mcfg.block_size)
    mcfg = fit_vocabulary(mcfg, cfg, checkpoint, given, objective.sentinels)
    return splits, objective, mcfg


def prepare_data(cfg, given):
    """data.prepare in the first process while the others wait. What it refuses (a text that
    cleaning empties, a full disk, ...) reaches every process, and each says it in one line, where
    the others would otherwise see only their connection to the first one break."""
    rank, world = runtime.rank_and_world()
    refusal = None
    if rank == 0:
        try:
            data.prepare(cfg.data_dir, cfg.text or None,
                         clean_text=False if cfg.no_clean else None,
                         vocab_size=prepared.tokenizer_size(cfg, given))
        except (runtime.UserError, OSError) as e:
            refusal = e
    if world > 1:
        shared = [refusal]
        dist.broadcast_object_list(shared, src=0)  # the first process's refusal, or None
        refusal = shared[0]
    if refusal is not None:
        raise refusal


def new_model(objective, mcfg, cfg, checkpoint):
    """The model to train, on the CPU: the checkpoint's weights, GPT-2's, or fresh ones. (A
    sharded run that resumes loads its slices once it is sharded: restore_run.)"""
    if checkpoint is not None and "model" in checkpoint:
        return load_model(checkpoint, mcfg)[0]
    if cfg.init_from == "gpt2":
        return load_gpt2(cfg.gpt2_path, mcfg.block_size, mcfg.dropout)
    return objective.Model(mcfg)


def distribute(raw, cfg, device, dtype, objective):
    """(the model as train_step calls it, how it is split). One process: the model itself
    (compiled with --compile). Under torchrun, data parallel: a whole copy in every process, whose
    gradients DDP averages; or with --fsdp a slice of every weight in each (shard.py). Model
    parallel, --tp or --pp: a share of every Block in each process, or a stage of the Blocks
    (parallel.py). Sharding and tensor parallelism happen in place: the optimizer, made after
    this, then holds this process's slices."""
    layout = None
    if cfg.fsdp or cfg.tp > 1 or cfg.pp > 1:
        raw, layout = parallel.setup(raw, cfg, device, dtype, objective)
    model = torch.compile(raw) if cfg.compile else raw
    if runtime.rank_and_world()[1] > 1 and layout is None:
        model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                        else None)
    return model, layout


def loop(run, splits, cfg, device, dtype):
    """Optimizer steps until the session ends, with evaluation, the log and checkpoints."""
    raw, (_, world) = runtime.unwrap(run.model), runtime.rank_and_world()
    T, B, accum, stop = raw.config.block_size, cfg.batch_size, cfg.grad_accum_steps, cfg.stop_at
    stop = stop or cfg.max_steps
    tokens_per_step = B * T * accum * runtime.data_rank_and_world()[1]  # (model parallel: once)
    sharded_gpu = cfg.fsdp and device.type == "cuda"  # FSDP's mixed precision instead (shard.py)
    autocast = runtime.autocast(device, torch.float32 if sharded_gpu else dtype)
    flops, peak = run.flops, monitor.peak_flops(device, dtype)
    name = run.objective.Model.__name__  # (type(raw) may be FSDP's subclass of it)
    out_dir, start_time, metrics = Path(cfg.out_dir), time.time(), {}
    records = monitor.start_log(out_dir / "log.jsonl", run.step) if runtime.is_main() else []
    saved = run.step  # the step of the checkpoint on disk (0: none yet)
    bar = tqdm(total=stop, initial=run.step, desc=f"training {cfg.model}", unit="step",
               disable=None if runtime.is_main() else True)  # None: no bar in a log file
    profiler = monitor.profile(cfg.profile and runtime.is_main(), out_dir, device,
                               stop - run.step)  # None, unless --profile
    try:
        while run.step < stop:
            t0 = time.perf_counter()
            lr = lr_at(run.step, cfg)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            with record_function("batches"):  # a name in --profile's table and trace
                batches = next_batches(run, splits["train"], B, T, accum, device)
            losses, grad_norm, skipped = train_step(run, batches, cfg.grad_clip, autocast)
            loss = losses["loss"]
            run.step, run.tokens = run.step + 1, run.tokens + tokens_per_step
            run.skipped_steps += skipped
            tokens_per_s = tokens_per_step / (time.perf_counter() - t0)
            record = {"step": run.step, **losses, "lr": lr, "grad_norm": grad_norm,
                      "tokens": run.tokens, "tokens_per_s": round(tokens_per_s),
                      "mfu": flops * tokens_per_s / (peak * world) if peak else None,
                      "skipped_steps": run.skipped_steps}
            if run.step % cfg.eval_interval == 0 or run.step == stop:
                metrics = evaluate(run, splits["val"], cfg, autocast)
                record.update({f"val_{k}": v for k, v in metrics.items() if k != "tokens"},
                              val_ppl=math.exp(metrics[run.objective.token_loss]))
            if runtime.is_main():
                monitor.append(records, record, out_dir, f"{name} on {cfg.data_dir}",
                               run.objective.curves)
            if run.step % cfg.ckpt_interval == 0 or run.step == stop:
                save_run(out_dir, run, cfg)
                saved = run.step
            if profiler:
                profiler.step()
            bar.update(1)
            bar.set_postfix_str(f"loss {loss:.3f}, lr {lr:.1e}, {tokens_per_s:,.0f} tok/s" + (
                f", {run.skipped_steps} skipped" if run.scaler.is_enabled() else ""))
    except (FloatingPointError, KeyboardInterrupt) as e:
        raise monitor.stopped(e, run.step, checkpoint_path(out_dir), saved) from None
    bar.close()
    if profiler:
        profiler.stop()
    monitor.print_end(run, cfg, metrics, time.time() - start_time, checkpoint_path(out_dir),
                      data.unigram_entropy(splits["train"]))


def next_batches(run, tokens, B, T, accum, device):
    """This process's accum micro-batches of one step, each a tuple of tensors of B rows on the
    device: random token blocks, made into (inputs, targets) by the objective (CLM: the next
    tokens; MLM: masked tokens; ELECTRA adds the noise its sampling draws with). The generator,
    the same in every process, draws the whole step: the blocks of every process, and BERT's
    masks; each process takes its share. So N processes train on what one process with N times
    the accumulation trains on, and a run resumes on another number of processes. (Dropout stays
    each process's own: train seeds it by rank.)"""
    rank, world = runtime.data_rank_and_world()  # (model parallel: a group shares its rows)
    blocks = data.get_batch(tokens, B * accum * world, T, run.generator)  # the step's, all of it
    batch = run.objective.train_batch(blocks, run.generator)  # (inputs, targets, ...)
    mine = slice(rank * B * accum, (rank + 1) * B * accum)
    return list(zip(*(runtime.to_device(x[mine], device).split(B) for x in batch)))


def train_step(run, micro_batches, grad_clip, autocast):
    """One optimizer step over a list of micro-batches, each the objective's (inputs, targets,
    ...). Returns ({"loss": mean loss, and the parts the objective logs beside it}, gradient norm
    before clipping, whether the scaler skipped the update). Raises FloatingPointError on a
    NaN/inf loss."""
    model, optimizer, scaler, objective = run.model, run.optimizer, run.scaler, run.objective
    if isinstance(model, parallel.Pipeline):  # the micro-batches flow through the stages
        return step_update(run, model.train_step(micro_batches, autocast), grad_clip,
                           functools.partial(parallel.clip_grad_norm_, pipeline=model))
    ddp = isinstance(model, DistributedDataParallel)
    fsdp = hasattr(model, "set_requires_gradient_sync")  # shard.wrap made it an FSDP module
    total = 0.0  # the loss and its parts (ELECTRA's two), summed over the micro-batches
    for i, batch in enumerate(micro_batches):
        # average gradients across processes only once, after the last micro-batch
        if ddp:
            model.require_backward_grad_sync = i == len(micro_batches) - 1
        if fsdp:
            model.set_requires_gradient_sync(i == len(micro_batches) - 1)
        with autocast, record_function("forward and loss"):
            loss = objective.loss(model, *batch)
        # Dividing by the number of micro-batches makes the summed .grad the mean over all of
        # them: exactly the gradient of one batch len(micro_batches) times bigger.
        with record_function("backward"):
            scaler.scale(loss / len(micro_batches)).backward()
        total += torch.stack([loss.detach(), *objective.terms.values()]).float()
    averaged = total / len(micro_batches)
    if dist.is_initialized():  # every process reports the losses averaged over all of them
        dist.all_reduce(averaged)
        averaged /= dist.get_world_size()
    split = run.layout is not None and run.layout.tp > 1  # split and whole parameters
    clip = parallel.clip_grad_norm_ if split else torch.nn.utils.clip_grad_norm_
    return step_update(run, averaged, grad_clip, clip)


def step_update(run, averaged, grad_clip, clip_grad_norm_):
    """The end of train_step: the losses averaged (a tensor: the loss, then the objective's
    terms), the gradients clipped by clip_grad_norm_, and the update."""
    optimizer, scaler, objective = run.optimizer, run.scaler, run.objective
    params = [p for g in optimizer.param_groups for p in g["params"]]
    scaler.unscale_(optimizer)  # fp16: divide the loss scale back out: true norms and clipping
    grad_norm = clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
    losses = dict(zip(["loss", *objective.terms], averaged.tolist()))
    loss, grad_norm = losses["loss"], shard.local(grad_norm).item()  # FSDP: a norm over all slices
    if not math.isfinite(loss) or (not scaler.is_enabled() and not math.isfinite(grad_norm)):
        optimizer.zero_grad()
        raise FloatingPointError(f"loss {loss}, gradient norm {grad_norm}")
    scale = scaler.get_scale()
    with record_function("optimizer"):
        scaler.step(optimizer)  # fp16: skips the update if any gradient overflowed to inf/NaN...
    scaler.update()  # ...and then halves the loss scale (or doubles it after 2000 good steps)
    optimizer.zero_grad()
    return losses, grad_norm, scaler.get_scale() < scale


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
    sharded = sharded_only(cfg)
    raw, path = runtime.unwrap(run.model), out_dir / ("ckpt.dcp" if sharded else "ckpt.pt")
    meta = {"scaler": run.scaler.state_dict(), **{k: getattr(run, k) for k in Run.COUNTERS},
            "model_config": asdict(raw.config), "train_config": asdict(cfg),
            "rng": gather_rng(run.generator), "tokenizer": data.read_vocab(cfg.data_dir)}
    if sharded:
        shard.save(path, raw, run.optimizer, meta, save_checkpoint)
    elif run.layout is not None:  # --tp, --pp: the whole model, gathered to rank 0
        weights, moments = parallel.whole_state(raw, run.optimizer, run.layout)
        if runtime.is_main():
            save_checkpoint(path, {"model": weights, "optimizer": moments, **meta})
    elif runtime.is_main():
        save_checkpoint(path, {"model": raw.state_dict(), "optimizer": run.optimizer.state_dict(),
                               **meta})
    other = out_dir / ("ckpt.pt" if sharded else "ckpt.dcp")  # from before a switch of --fsdp
    if runtime.is_main() and other.is_dir():
        shutil.rmtree(other)
    elif runtime.is_main():
        other.unlink(missing_ok=True)


def restore_run(run, checkpoint, cfg):
    """Put a checkpoint's optimizer moments, loss scale, counters and RNG states into the run.
    A sharded run reads its slices of the weights and moments here (shard.py)."""
    if "model" not in checkpoint:  # a sharded checkpoint, and a sharded run to read it
        shard.load(checkpoint["sharded"], runtime.unwrap(run.model), run.optimizer)
    elif run.layout is not None:  # whole moments, cut for this process (parallel.py)
        run.optimizer.load_state_dict(parallel.moments_for(
            checkpoint["optimizer"], runtime.unwrap(run.model), run.optimizer, run.layout))
    else:
        run.optimizer.load_state_dict(checkpoint["optimizer"])
    if run.scaler.is_enabled() and checkpoint["scaler"]:
        run.scaler.load_state_dict(checkpoint["scaler"])
    for key in Run.COUNTERS:
        setattr(run, key, checkpoint[key])
    rank, world = runtime.rank_and_world()
    if len(checkpoint["rng"]) == world:
        set_rng_state(checkpoint["rng"][rank], run.generator)
    else:  # the data order goes on as it would have; each process's dropout is drawn afresh
        say(f"note: the checkpoint was written by {len(checkpoint['rng'])} processes, now "
            f"{world}: the data goes on as before, dropout is drawn afresh")
        torch.manual_seed(hash((cfg.seed, rank, run.step)) % 2**63)
    run.generator.set_state(checkpoint["rng"][0]["data"])  # one data order, the same in all


if __name__ == "__main__":
    runtime.run_program(main)
