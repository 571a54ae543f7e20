"""
parallel.py: model parallelism, tensor (--tp) and pipeline (--pp); one job out of train.py.

Data parallelism (DDP, and FSDP in shard.py) splits the batch: every process runs the whole model
on rows of its own. Model parallelism splits the model: the processes of a group run ONE copy of
it, on the same rows, each computing a part.

Tensor parallelism (--tp N; Megatron-LM, Shoeybi et al. 2019) splits every Block's matmuls:
  * the attention's q/k/v projection (c_attn) and the MLP's first layer (c_fc) by output columns:
    process r computes its share of the heads (n_head / N of them) and of the hidden units
    (4C / N); attention works per head and GELU per unit, so nothing is sent in between;
  * the two output projections (attn.c_proj, mlp.c_proj) by input rows: each process multiplies
    its share of the inputs by its rows, a partial sum of the output; one all-reduce adds the N
    partial sums, and every process holds the whole (B, T, C) stream again.
  A Block sends two all-reduces of its activations forward, two backward (the gradient of its
  input), and each process holds 1/N of the Blocks' weights, gradients and moments. The
  embeddings, LayerNorms and head stay whole in every process (replicated): the head is tied to
  the token embedding, and splitting it by vocabulary (Megatron's vocab-parallel embedding) would
  need the loss's softmax summed across processes, which clm_loss and HeadLoss do not do; so each
  process computes the same head on the same rows, N times the work and memory of that layer.
  `torch.distributed.tensor.parallel` does the splitting: ColwiseParallel and RowwiseParallel
  make a Linear's weight a DTensor sharded on the right dimension and add the all-reduces.
  One detail is ours: c_attn is fused, its rows q | k | v. Cut into N contiguous pieces, process 0
  would get all of q and half of k. So its rows are reordered first (`qkv_rows`): [q, k, v of
  process 0's heads | those of process 1's | ...]. Checkpoints keep GPT-2's order (`whole_state`
  undoes it), so every layout reads them.

2-D, --fsdp with --tp: a (data, tensor) mesh, process d * tp + t: the tp processes of a row split
the model by tensor parallelism; each column shards its share with FSDP and splits the batch
(torchtitan's composition).

Pipeline parallelism (--pp N; GPipe, Huang et al. 2019): the Blocks in N consecutive stages, one
per process; the first also holds the embeddings, the last the final LayerNorm and the head. A
step's micro-batches (--grad_accum_steps, M of them) flow through: stage s sends its (B, T, C)
output to s + 1, and receives its gradient back. Each stage idles (N - 1) / (M + N - 1) of a step,
the bubble: the first stage waits for the last to finish the first backward, the last stage waits
for the first forward to reach it. The schedule is 1F1B (PipeDream, Narayanan et al. 2019): the
same bubble as GPipe's all-forwards-then-all-backwards, but each stage runs a backward as soon as
it can, so it holds the activations of at most N micro-batches in flight, not M.
`torch.distributed.pipelining` runs it (PipelineStage, Schedule1F1B); with its default
scale_grads it divides the gradients by M, the accumulation of train.py. The tied matrix (token
embedding on the first stage, head on the last) is kept by both; their gradients are added (one
all-reduce) before each update, so the two copies stay equal (Megatron's way).

Checkpoints of --tp and --pp runs are a ckpt.pt as one process writes it: whole tensors, gathered
to rank 0 (`whole_state`); sample.py reads it, and a run resumes on any layout (`moments_for`).
At a size that does not fit one process, one would write slices instead, as shard.py does.

Run:       torchrun --standalone --nproc_per_node=2 train.py --tp 2
           torchrun --standalone --nproc_per_node=2 train.py --pp 2
Read next: finetune.py, what a pretrained encoder is for (then sample.py). (What each layout
           holds and sends, and when to pick which: docs/parallelism.md.)
"""

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

import runtime
import shard
from model import param_groups

MODELS = ("gpt", "bert")  # one Transformer of Blocks, one head: what --tp and --pp split


def check(cfg, mcfg, given):
    """Refuse a layout that cannot work, in one line that says what to run instead (given: the
    flags on the command line; a resumed run's layout comes from its checkpoint otherwise)."""
    tp, pp = cfg.tp, cfg.pp
    if tp == 1 and pp == 1:
        return
    name = "tp" if tp > 1 else "pp"
    flag = f"--{name} {max(tp, pp)}"
    error = runtime.ConfigError
    if "RANK" not in os.environ:
        whole = f", or resume it in one process with --{name} 1" if name not in given else ""
        raise error(f"{flag} splits the model across the processes torchrun starts: run "
                    f"train.py under torchrun, {max(tp, pp)} processes (docs/parallelism.md)"
                    f"{whole}")
    world = int(os.environ["WORLD_SIZE"])
    if cfg.model not in MODELS:
        raise error(f"{flag} splits the Blocks of a GPT or a BERT; --model {cfg.model} has more "
                    f"than one stack or stream: train it data parallel (torchrun, --fsdp)")
    if tp > 1 and pp > 1:
        raise error("--tp with --pp needs a 3-D mesh, not built here: choose one of the two")
    if pp > 1 and cfg.fsdp:
        raise error("--pp with --fsdp is not built here: choose one of the two")
    if cfg.compile:
        raise error(f"--compile with {flag} is not built here: leave --compile out")
    if cfg.optimizer == "muon":
        raise error(f"{flag} with Muon: its state is not gathered into checkpoints, and under "
                    f"--tp it would orthogonalise shares of matrices, not whole ones: add "
                    f"--optimizer adamw (Muon serves one process and DDP)")
    if tp > 1:
        if mcfg.n_head % tp:
            raise error(f"--tp {tp} must divide --n_head {mcfg.n_head}: each process computes "
                        f"whole heads")
        if world % tp:
            raise error(f"--tp {tp} must divide the {world} processes")
        if world != tp and not cfg.fsdp:
            raise error(f"--tp {tp} on {world} processes: the {world // tp} groups would split "
                        f"the data, which needs --fsdp (a (data, tensor) mesh); or run {tp} "
                        f"processes")
        if mcfg.dropout > 0:
            raise error("--tp with --dropout: the processes of a group would need one dropout "
                        "on the stream they share and another in their own heads (Megatron's "
                        "RNG tracker), not built here: use --dropout 0")
    if pp > 1:
        if world != pp:
            raise error(f"--pp {pp} needs {pp} processes, one per stage, not {world}: start "
                        f"{pp} with torchrun")
        if pp > mcfg.n_layer:
            raise error(f"--pp {pp}: more stages than the {mcfg.n_layer} Blocks (--n_layer): "
                        f"use at most {mcfg.n_layer}")
        if cfg.grad_accum_steps < pp:
            raise error(f"--grad_accum_steps {cfg.grad_accum_steps}: a pipeline of {pp} stages "
                        f"needs at least {pp} micro-batches per step (1F1B): raise it (4 x --pp "
                        f"keeps the bubble small)")


@dataclass
class Layout:
    """How a model is split across the processes, and the whole model's parameter names, by
    optimizer group in its order (param_groups): what turns an optimizer's state into a whole
    checkpoint's and back."""
    names: list  # [[name, ...] of each group]
    tp: int = 1
    rows: torch.Tensor | None = None  # c_attn's row order under --tp (qkv_rows)
    stages: int = 1


def names_of(model, groups):
    """The names of the parameters in groups (param_groups', an optimizer's), group by group."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in groups]


# Tensor parallelism ------------------------------------------------------------------------------

def qkv_rows(C, tp):
    """The order of c_attn's 3C rows (GPT-2's: every head's q, then k, then v) in which process r
    of tp finds the q, k and v of its own heads as its contiguous share: [q_0 k_0 v_0 | q_1 ...],
    with q_r the rows r * C / tp ... (r + 1) * C / tp - 1 of q (heads are C / n_head rows each)."""
    share = C // tp
    return torch.cat([torch.arange(part * C + r * share, part * C + (r + 1) * share)
                      for r in range(tp) for part in range(3)])


def tensor_parallel(model, mesh):
    """Split every Block of model in place across the processes of the 1-D mesh (Megatron's
    columns then rows, in the attention and in the MLP)."""
    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                   parallelize_module)
    rows = qkv_rows(model.config.n_embd, mesh.size())
    for block in model.transformer.h:
        with torch.no_grad():
            for p in block.attn.c_attn.parameters():
                p.copy_(p[rows])  # each process's heads together (qkv_rows)
        parallelize_module(block, mesh, {"attn.c_attn": ColwiseParallel(),
                                         "attn.c_proj": RowwiseParallel(),
                                         "mlp.c_fc": ColwiseParallel(),
                                         "mlp.c_proj": RowwiseParallel()})
    return rows


def setup(raw, cfg, device, dtype, objective):
    """raw split as cfg says, across torchrun's processes (--pp, --tp, --fsdp, or --tp with
    --fsdp): (the model as train_step calls it, its Layout). Says which processes split the data
    (runtime.share_data)."""
    groups = param_groups(raw, 0.0)  # (AdamW's groups: Muon is refused in check)
    layout = Layout(names_of(raw, groups), tp=cfg.tp, stages=cfg.pp)
    if cfg.pp > 1:
        runtime.share_data(None)  # every stage reads the same rows: no data parallelism
        return Pipeline(raw, cfg.grad_accum_steps, device, objective), layout
    if cfg.tp > 1:
        from torch.distributed.device_mesh import init_device_mesh
        # (DTensor warns at every 2-D gather that a flattened mesh would gather in one call)
        logging.getLogger("torch.distributed.tensor._redistribute").setLevel(logging.ERROR)
        world = dist.get_world_size()
        mesh = init_device_mesh(device.type, (world // cfg.tp, cfg.tp),
                                mesh_dim_names=("dp", "tp"))  # process d * tp + t
        runtime.share_data(mesh["dp"].get_group() if world > cfg.tp else None)
        layout.rows = tensor_parallel(raw, mesh["tp"])
        if cfg.fsdp:
            shard.wrap(raw, device, dtype, mesh["dp"])
    elif cfg.fsdp:
        shard.wrap(raw, device, dtype)
    return raw, layout


# Pipeline parallelism ----------------------------------------------------------------------------

class Pipeline(nn.Module):
    """This process's stage of a pipeline: its Blocks (and the embeddings on the first stage, the
    final LayerNorm and head on the last), and the schedule that runs all stages together."""

    def __init__(self, model, micro_batches, device, objective):
        super().__init__()
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B
        rank, n = dist.get_rank(), dist.get_world_size()
        L = model.config.n_layer
        start = rank * (L // n) + min(rank, L % n)  # the first L % n stages take one more Block
        self.blocks = range(start, start + L // n + (rank < L % n))
        self.first, self.last, self.n = rank == 0, rank == n - 1, n
        self.model = keep_stage(model, self.blocks, self.first, self.last)
        self.config, self.objective = model.config, objective
        self.tied = dist.new_group([0, n - 1])  # (every process must make every group)
        self.device = device
        stage = PipelineStage(self, rank, n, device)
        self.schedule = Schedule1F1B(stage, micro_batches, loss_fn=self.loss)
        self.evaluations = {}  # {input shape: a forward-only schedule of one micro-batch}

    def forward(self, x):
        """The stage's computation: token ids (B, T), or the stream (B, T, C) from the stage
        before, in; the stream (B, T, C) out, after the final LayerNorm on the last stage."""
        t = self.model.transformer
        positions = torch.arange(x.size(1), device=x.device)  # (T,)
        if self.first:
            x = t.embed(x, positions)  # (B, T) -> (B, T, C)
        for i in self.blocks:
            x = t.block(i, x, positions)
        return t.ln_f(x) if self.last else x

    def loss(self, features, targets):
        """The objective's loss on the last stage's output (what the schedule calls loss_fn)."""
        return self.objective.loss(Head(self.model, features), None, targets)

    def train_step(self, micro_batches, autocast):
        """Forward and backward of a step's micro-batches through every stage (1F1B): the
        gradients summed, divided by their number; the mean loss, known to every stage."""
        inputs, targets = (torch.cat(x) for x in zip(*micro_batches))  # (M * B, T) each
        losses = []
        with autocast:  # the schedule cuts the M micro-batches apart again
            self.schedule.step(*[inputs] if self.first else [],
                               **{"target": targets, "losses": losses} if self.last else {})
        mean = torch.stack(losses).float().mean().reshape(1) if self.last else torch.zeros(1)
        dist.broadcast(mean, src=self.n - 1)
        if self.first or self.last:  # the tied matrix's two gradients, added in both copies
            dist.all_reduce(self.model.transformer.wte.weight.grad, group=self.tied)
        return mean

    def copy(self, p):
        """Whether p is the last stage's copy of the tied matrix (the first stage's counts)."""
        return self.last and not self.first and p is self.model.transformer.wte.weight

    def eval_sums(self, objective, inputs, targets):
        """The objective's sums for one evaluation batch (data.evaluate): every stage runs its
        part forward, the last one scores it, and every stage gets the sums."""
        from torch.distributed.pipelining import PipelineStage, ScheduleGPipe
        shape = tuple(inputs.shape)
        if shape not in self.evaluations:  # (a stage learns the shapes it receives once)
            stage = PipelineStage(self, dist.get_rank(), self.n, self.device)
            self.evaluations[shape] = ScheduleGPipe(stage, 1)
        features = self.evaluations[shape].eval(*[inputs] if self.first else [])
        sums = [objective.eval_sums(Head(self.model, features), inputs, targets)
                if self.last else None]
        dist.broadcast_object_list(sums, src=self.n - 1)
        return sums[0]


def held(model):
    """The model this process holds: a pipeline stage's part of it, or the model itself."""
    return model.model if isinstance(model, Pipeline) else model


class Head:
    """A model whose trunk has run (the last stage's features): called as an objective calls its
    model, it runs the head only."""

    def __init__(self, model, features):
        self.model, self.features = model, features

    def __call__(self, idx, targets=None, **kwargs):
        return self.model.head(self.features, targets=targets, **kwargs)


def keep_stage(model, blocks, first, last):
    """model with only what a stage runs: the other Blocks, and the embeddings or the head it
    does not use, removed (their memory freed). The names of what is kept stay the whole model's
    (transformer.h.2...), so checkpoints join the stages by name."""
    t = model.transformer
    for i in range(len(t.h)):
        if i not in blocks:
            t.h[i] = nn.Identity()
    if not first:
        t.wpe, t.ln_emb = None, None
    if not last:
        t.ln_f = None
        for name, _ in list(model.named_children()) + list(model.named_parameters(recurse=False)):
            if name != "transformer":  # the head's layers (GPT's lm_head is tied: only a name)
                setattr(model, name, None)
    if not first and not last:
        t.wte = None
    return model


def clip_grad_norm_(params, max_norm, pipeline=None):
    """torch.nn.utils.clip_grad_norm_ for a model split across processes: the norm of all the
    gradients together, each over all its slices (a DTensor's norm gathers them: --tp, where
    split and whole parameters sit side by side, which torch's function refuses); with a
    pipeline, over every stage's gradients, the tied matrix once. Returns the norm before
    clipping."""
    grads = [p.grad for p in params
             if p.grad is not None and not (pipeline is not None and pipeline.copy(p))]
    norms = [g.norm().full_tensor() if hasattr(g, "full_tensor") else g.norm() for g in grads]
    square = torch.stack(norms).float().square().sum() if norms else torch.zeros(())
    if pipeline is not None:
        dist.all_reduce(square)  # over the stages
    norm = square.sqrt()
    scale = min(1.0, max_norm / (norm.item() + 1e-6))  # (torch's formula)
    for p in params:
        if p.grad is not None:
            p.grad.mul_(scale)
    return norm


# Checkpoints: the whole model, from any layout and back ------------------------------------------

def whole(name, tensor, layout):
    """A parameter's or moment's whole tensor, in GPT-2's row order: a DTensor's slices joined."""
    if hasattr(tensor, "full_tensor"):
        tensor = tensor.full_tensor()
    if layout.rows is not None and ".attn.c_attn." in name:
        tensor = tensor[torch.argsort(layout.rows)]  # qkv_rows undone
    return tensor


def whole_state(model, optimizer, layout):
    """(weights, optimizer state) of the whole model as one process holds them (train.py's
    ckpt.pt), on rank 0; (None, None) in the others. Every process must call it."""
    raw = held(model)
    if hasattr(raw, "reshard"):  # FSDP: the root's weights may be gathered after an evaluation
        raw.reshard()
    mine = [n for names in names_of(raw, optimizer.param_groups) for n in names]
    saved = optimizer.state_dict()
    weights = {k: whole(k, v, layout) for k, v in raw.state_dict().items()}
    moments = {mine[i]: {k: whole(mine[i], v, layout) if torch.is_tensor(v) and v.dim() else v
                         for k, v in s.items()} for i, s in saved["state"].items()}
    if layout.stages > 1:  # every stage's part, joined on rank 0 (by name)
        parts = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object((weights, moments), parts, dst=0)
        if parts is not None:
            weights = {k: v for w, _ in parts for k, v in w.items()}
            moments = {k: v for _, m in parts for k, v in m.items()}
    if dist.get_rank() != 0:
        return None, None
    flat = [n for names in layout.names for n in names]  # the whole model's, numbered
    index = {n: i for i, n in enumerate(flat)}
    groups, first = [], 0
    for names in layout.names:
        groups.append(list(range(first, first + len(names))))
        first += len(names)
    return weights, {"state": {index[n]: moments[n] for n in sorted(moments, key=index.get)},
                     "param_groups": groups}  # (AdamW's state_dict, adamw.py)


def moments_for(whole_optimizer, model, optimizer, layout):
    """A whole checkpoint's optimizer state (one process's, or whole_state's) as this process's
    optimizer holds it: its parameters' moments, reordered and cut into its slices."""
    from torch.distributed.tensor import distribute_tensor
    raw = held(model)
    flat = [n for names in layout.names for n in names]
    by_name = {flat[i]: s for i, s in whole_optimizer["state"].items()}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    mine = [n for names in names_of(raw, optimizer.param_groups) for n in names]
    state = {}
    for i, (name, p) in enumerate(zip(mine, params)):
        if name not in by_name:
            continue
        state[i] = {}
        for key, value in by_name[name].items():
            if torch.is_tensor(value) and value.dim():
                if layout.rows is not None and ".attn.c_attn." in name:
                    value = value[layout.rows]
                if hasattr(p, "device_mesh"):
                    value = distribute_tensor(value.to(p.dtype), p.device_mesh, p.placements)
            state[i][key] = value
    return {"state": state, "param_groups": optimizer.state_dict()["param_groups"]}
