"""
shard.py: fully sharded data parallel (FSDP), one job out of train.py, which runs it with --fsdp.

Data parallel (DDP) keeps the whole model in every process: in fp32 training, 4 bytes per
parameter of weights, 4 of gradients and 8 of AdamW's two moments, 16 bytes per parameter before
any activation: GPT-2's 124M parameters need 2 GB in each process, a 1.5B model 24 GB. Fully
sharded data parallel (ZeRO stage 3, Rajbhandari et al. 2020; FSDP, Zhao et al. 2023) gives each
of N processes one slice (1/N) of every weight, gradient and moment:
  * forward: just before a Block runs, its weights are gathered from all processes (all-gather);
    just after, the gathered copy is freed. Only one Block is ever whole at a time.
  * backward: the Block is gathered again; its gradients, once computed, are summed across the
    processes and each keeps the slice of the sum that belongs to it (reduce-scatter).
  * the optimizer step: each process updates its own slices. AdamW needs nothing else: it is
    elementwise, so the slices of its update are the update of the slices.
Memory per process: 16 bytes per parameter / N, plus one gathered Block. The price: two
all-gathers and one reduce-scatter of the weights per step, against DDP's one all-reduce.

PyTorch provides the machinery (`torch.distributed.fsdp.fully_shard`, "FSDP2"): it turns each
parameter into a DTensor, a tensor that knows it is one slice (along dim 0) of a bigger tensor
spread over a mesh of processes, and hooks the gathering and freeing around each sharded
module's forward and backward (`wrap`).

Checkpoints (`save`, `load`, `read_checkpoint`): torch.distributed.checkpoint (DCP) writes every
process's slices into one folder, each process its own; no process ever holds the whole model.
The rest of the checkpoint (counters, configs, RNG states, tokenizer) is small: rank 0 writes it
as meta.pt beside them. DCP can read the slices back for any number of processes, or as whole
tensors for one process: sample.py and a resume without --fsdp read an FSDP run's checkpoint.

Run:       torchrun --standalone --nproc_per_node=2 train.py --fsdp
Read next: parallel.py, splitting the model itself: tensor and pipeline parallelism. (Memory
           per process, measured: docs/parallelism.md.)
"""

import shutil
import tempfile

import torch
import torch.distributed as dist

from model import Block
from runtime import UserError

# torch.distributed's FSDP and checkpoint modules take over a second to import, which every run
# of train.py and sample.py would pay; the functions below import what they use when called.


def wrap(model, device, dtype, mesh=None):
    """Shard model in place across the processes: each Block, then the root (embeddings, final
    LayerNorm, head: what no Block holds). A Block is gathered for its own forward and backward,
    the root for the rest, so at most a Block and the root are whole at a time. The mesh is named
    with the device type: on CPUs it must say "cpu", or parameters could move to a GPU that
    happens to exist. On a GPU, FSDP's mixed precision replaces autocast: weights are gathered in
    bfloat16 and gradients reduced in float32 (train.py then turns autocast off). mesh: the
    processes to shard across (all, unless --tp splits them too: parallel.py)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mesh = mesh or init_device_mesh(device.type, (dist.get_world_size(),))
    low = device.type == "cuda" and dtype == torch.bfloat16
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if low \
        else MixedPrecisionPolicy()
    blocks = [m for m in model.modules() if isinstance(m, Block)]  # of every stack: ELECTRA's
    for block in blocks:  # generator, T5's decoder; activation checkpointing runs inside each
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def local(tensor):
    """This process's slice of a sharded tensor (a DTensor); a plain tensor is all local."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def bytes_held(model, optimizer):
    """{"parameters", "gradients", "optimizer"}: the bytes this process holds of each."""
    params = list(model.parameters())
    moments = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    return {"parameters": sum(local(p).nbytes for p in params),
            "gradients": sum(local(p.grad).nbytes for p in params if p.grad is not None),
            "optimizer": sum(local(t).nbytes for t in moments)}


# Checkpoints --------------------------------------------------------------------------------------

def save(path, model, optimizer, meta, write):
    """Write a checkpoint folder: every process its slices of the weights and moments (DCP), rank
    0 the rest as meta.pt, with write (checkpoint.save_checkpoint, passed in by train.py:
    checkpoint.py imports this file). All of it goes into path.tmp first, which replaces path once
    complete: a crash leaves the old checkpoint, or (between two renames) path.old, which `find`
    takes."""
    import torch.distributed.checkpoint as dcp
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    dcp.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint_id=tmp)
    if dist.get_rank() == 0:
        write(tmp / "meta.pt", meta)
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)  # (one a crash left behind)
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def find(path):
    """path, or the path.old that a crash between save's two renames left."""
    old = path.with_name(path.name + ".old")
    return old if not path.exists() and old.exists() else path


def load(path, model, optimizer):
    """Read a checkpoint folder's slices into a sharded model and its optimizer, in place, for
    however many processes there are now (DCP reslices)."""
    import torch.distributed.checkpoint as dcp
    names = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    opt = {"state": {}, "param_groups": optimizer.state_dict()["param_groups"]}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):  # moments to load into, for each parameter that has them
        if f"optimizer.state.{i}.exp_avg" in names:  # (DCP names the parameters' numbers as text)
            opt["state"][str(i)] = {"step": 0, "exp_avg": torch.zeros_like(p),
                                    "exp_avg_sq": torch.zeros_like(p)}
    state = {"model": model.state_dict(), "optimizer": opt}
    dcp.load(state, checkpoint_id=path)
    opt = state["optimizer"]
    optimizer.load_state_dict({**opt, "state": {int(i): s for i, s in opt["state"].items()}})


def read_checkpoint(path, tensors=True):
    """A checkpoint folder as a checkpoint dict (train.py's keys). tensors=False: meta.pt only
    (a sharded run then loads its slices with `load`); True: with the whole tensors, for one
    process. "sharded" names the folder."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    path = find(path)
    try:
        checkpoint = torch.load(path / "meta.pt", map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:
        raise UserError(f"{path} is not a readable sharded checkpoint ({type(e).__name__}): "
                        f"use another one or train again") from None
    if tensors:
        with tempfile.TemporaryDirectory() as folder:  # DCP's public converter writes a file
            dcp_to_torch_save(path, f"{folder}/whole.pt")
            whole = torch.load(f"{folder}/whole.pt", map_location="cpu", weights_only=True)
        moments = whole["optimizer"]["state"]  # DCP writes the parameters' numbers as text
        whole["optimizer"]["state"] = {int(i): s for i, s in moments.items()}
        checkpoint |= whole
    return {**checkpoint, "sharded": str(path)}
