"""Data parallelism: two CPU processes (gloo) compute what one process computes with twice the
gradient accumulation; evaluation split across them gives the single-process number; torchrun runs
train.py with only rank 0 writing, and a distributed run resumes exactly."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import data
import train
from adamw import AdamW
from checkpoint import load_checkpoint, objective_for
from model import ModelConfig, param_groups

REPO = Path(__file__).parents[1]
CONFIG = dict(vocab_size=50304, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
STEPS, ACCUM = 3, 2  # optimizer steps; micro-batches per process and step


def micro_batches(step):
    """The 2 * ACCUM micro-batches of one step: process r takes the r-th half, one process all of them."""
    return list(torch.randint(0, 50256, (2 * ACCUM, 4, 16), generator=torch.Generator().manual_seed(step)))


def evaluation_split():
    return np.random.default_rng(0).integers(0, 50256, size=1000).astype(np.uint16)


def run_steps(model, kind, losses=None):
    """STEPS optimizer steps (their losses appended to `losses`); then (parameters, (eval loss,
    predicted tokens))."""
    objective = objective_for(kind)
    raw = model.module if isinstance(model, DistributedDataParallel) else model
    # A modest lr: the attention's key bias has a true gradient of exactly 0 (it adds the same amount
    # to every score of a query, and softmax ignores that), so its gradient is float noise, which Adam
    # turns into steps of about lr * |noise| / eps that differ between any two ways of summing.
    optimizer = AdamW(param_groups(raw, 0.1), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    off = torch.autocast("cpu", enabled=False)
    for step in range(STEPS):
        everything = micro_batches(step)
        share = len(everything) // world
        batches = everything[rank * share : (rank + 1) * share]
        # the same batches (and BERT's masks) whoever computes them
        batches = [objective.train_batch(b, torch.Generator().manual_seed(100 * step + rank * share + i))
                   for i, b in enumerate(batches)]
        loss, _, _ = train.train_step(train.Run(model, optimizer, scaler, objective, None), batches, 1.0, off)
        (losses if losses is not None else []).append(loss)
    metrics = data.evaluate(raw, objective, evaluation_split(), 3, off)
    return [p.detach().clone() for p in raw.parameters()], (metrics["loss"], metrics["tokens"])


def worker(rank, port, out, kind):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = objective_for(kind).Model(ModelConfig(**CONFIG))
        params, evaluation = run_steps(DistributedDataParallel(model), kind)
        torch.save({"params": params, "evaluation": evaluation}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["gpt", "bert"])
def test_two_processes_equal_one_process_with_twice_the_accumulation(tmp_path, kind):
    mp.spawn(worker, args=(free_port(), str(tmp_path), kind), nprocs=2)
    torch.manual_seed(0)
    single_params, single_evaluation = run_steps(objective_for(kind).Model(ModelConfig(**CONFIG)), kind)
    torch.manual_seed(0)
    initial = [p.detach() for p in objective_for(kind).Model(ModelConfig(**CONFIG)).parameters()]
    assert max((p - q).abs().max() for p, q in zip(single_params, initial)) > 2e-3  # training moved them
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for p, q in zip(result["params"], single_params):
            torch.testing.assert_close(p, q, atol=1e-5, rtol=0)
        # evaluation split across the two processes: the single-process loss, token count included
        assert result["evaluation"][0] == pytest.approx(single_evaluation[0], rel=1e-6)
        assert result["evaluation"][1] == single_evaluation[1]


# torchrun ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    (folder / "text.txt").write_text("Two processes share the work of one. " * 300, encoding="utf-8")
    data.prepare(folder / "prepared", text=str(folder / "text.txt"), clean_text=False)
    return str(folder / "prepared")


def torchrun(corpus, out_dir, *flags):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
           "--data_dir", corpus, "--out_dir", str(out_dir), "--n_layer", "1", "--n_head", "2", "--n_embd", "32",
           "--block_size", "16", "--batch_size", "2", "--device", "cpu", "--eval_interval", "2",
           "--warmup_steps", "1", *flags]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]  # torchrun fails if either rank does
    return result


def test_torchrun_writes_from_rank_0_only_and_resumes_exactly(corpus, tmp_path):
    result = torchrun(corpus, tmp_path / "straight", "--max_steps", "4")
    assert "x 2 processes = 64" in result.stdout  # tokens per step: 2 x 16 x 1 x 2
    torchrun(corpus, tmp_path / "halves", "--max_steps", "4", "--stop_at", "2")
    torchrun(corpus, tmp_path / "halves", "--init_from", "resume")
    for d in ("straight", "halves"):
        written = sorted(p.name for p in (tmp_path / d).iterdir())
        assert written == ["ckpt.pt", "log.jsonl", "loss.svg", "run.lock"]
        records = [json.loads(line) for line in (tmp_path / d / "log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2, 3, 4]  # one writer: no line twice
    checkpoints = [load_checkpoint(tmp_path / d / "ckpt.pt") for d in ("straight", "halves")]
    assert len(checkpoints[1]["rng"]) == 2  # every process's RNG state, to give each its own back
    assert not torch.equal(checkpoints[1]["rng"][0]["data"], checkpoints[1]["rng"][1]["data"])
    for k, v in checkpoints[0]["model"].items():
        assert torch.equal(v, checkpoints[1]["model"][k]), k
