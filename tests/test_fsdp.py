"""Fully sharded data parallel (shard.py): two sharded CPU processes compute what one process
computes with twice the accumulation; a sharded run resumes exactly from its sharded checkpoint,
which one process (sample.py, a resume without --fsdp) reads whole; each process holds about 1/N
of the parameters, gradients and AdamW's moments."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import data
import sample
import shard
import train
from adamw import AdamW
from checkpoint import load_checkpoint, objective_for
from model import ModelConfig, param_groups
from test_distributed import CONFIG, free_port, run_steps

REPO = Path(__file__).parents[1]


def worker(rank, port, out):
    """Both models, trained sharded across 2 processes; then one step's bytes held."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        results = {kind: sharded_steps(kind, config) for kind, config in CASES.items()}
        results["bytes"] = held_after_one_step(sharded=True)
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


CASES = {"gpt": CONFIG, "bert": {**CONFIG, "grad_checkpointing": True}}  # (it composes)


def sharded_steps(kind, config):
    torch.manual_seed(0)
    model = shard.wrap(objective_for(kind).Model(ModelConfig(**config)), torch.device("cpu"),
                       torch.float32)
    losses = []
    _, evaluation = run_steps(model, kind, losses)
    model.reshard()  # after an evaluation the root module's weights are still gathered
    params = [p.full_tensor() for p in model.parameters()]  # every process's slices, joined
    return {"params": params, "evaluation": evaluation, "losses": losses}


def held_after_one_step(sharded):
    torch.manual_seed(0)
    model = objective_for("gpt").Model(ModelConfig(**{**CONFIG, "n_embd": 64}))
    if sharded:
        shard.wrap(model, torch.device("cpu"), torch.float32)
    optimizer = AdamW(param_groups(model, 0.1), lr=1e-3)
    idx = torch.randint(0, 50256, (2, 16))
    model(idx, torch.roll(idx, -1, 1)).backward()
    optimizer.step()
    return shard.bytes_held(model, optimizer)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """What each of two sharded processes computed: {rank: results}."""
    out = tmp_path_factory.mktemp("sharded")
    mp.spawn(worker, args=(free_port(), str(out)), nprocs=2)
    return {rank: torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)}


@pytest.mark.parametrize("kind", CASES)
def test_two_sharded_processes_equal_one_process_with_twice_the_accumulation(sharded, kind):
    torch.manual_seed(0)
    losses = []
    model = objective_for(kind).Model(ModelConfig(**CASES[kind]))
    single_params, single_evaluation = run_steps(model, kind, losses)
    for rank in (0, 1):
        result = sharded[rank][kind]
        assert result["losses"] == pytest.approx(losses, abs=1e-5)
        for p, q in zip(result["params"], single_params):
            torch.testing.assert_close(p, q, atol=1e-5, rtol=0)
        assert result["evaluation"][0] == pytest.approx(single_evaluation[0], rel=1e-6)
        assert result["evaluation"][1] == single_evaluation[1]


def test_each_process_holds_half_of_the_parameters_gradients_and_moments(sharded):
    whole = held_after_one_step(sharded=False)
    numel = sum(p.numel() for p in objective_for("gpt").Model(
        ModelConfig(**{**CONFIG, "n_embd": 64})).parameters())
    assert whole == {"parameters": 4 * numel, "gradients": 4 * numel, "optimizer": 8 * numel}
    for rank in (0, 1):  # README, "Sharding": 1/N for N = 1, 2, 4 at GPT-2 sizes
        for kind, n in sharded[rank]["bytes"].items():  # give or take uneven slices' padding
            assert n == pytest.approx(whole[kind] / 2, rel=0.01), (rank, kind)


# train.py --fsdp in two processes, its checkpoint, and sample.py ----------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fsdp")
    (folder / "text.txt").write_text("Each process keeps a slice of every weight. " * 300,
                                     encoding="utf-8")
    data.prepare(folder / "prepared", text=str(folder / "text.txt"), clean_text=False)
    return str(folder / "prepared")


def launch(corpus, out_dir, *flags):
    """`torchrun --nproc_per_node=2 train.py --fsdp ...`: two processes with torchrun's
    environment variables, started directly (without its launcher process: faster)."""
    argv = [sys.executable, "train.py", "--data_dir", corpus, "--out_dir", str(out_dir),
            "--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--block_size", "16",
            "--batch_size", "2", "--device", "cpu", "--eval_interval", "2", "--warmup_steps", "1",
            "--fsdp", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    ranks = [subprocess.Popen(argv, cwd=REPO, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    for rank in ranks:
        _, err = rank.communicate(timeout=300)
        assert rank.returncode == 0, err[-3000:]


def log(out_dir):
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]


def test_a_sharded_run_resumes_exactly_and_one_process_reads_its_checkpoint(corpus, tmp_path,
                                                                           capsys):
    launch(corpus, tmp_path / "straight", "--max_steps", "4")
    launch(corpus, tmp_path / "halves", "--max_steps", "4", "--stop_at", "2")
    assert (tmp_path / "halves/ckpt.dcp/meta.pt").exists()  # a folder of slices, not ckpt.pt
    launch(corpus, tmp_path / "halves", "--init_from", "resume")
    straight, halves = log(tmp_path / "straight"), log(tmp_path / "halves")
    assert [r["loss"] for r in halves] == [r["loss"] for r in straight]
    whole = [load_checkpoint(tmp_path / d / "ckpt.dcp") for d in ("straight", "halves")]
    assert whole[0]["step"] == whole[1]["step"] == 4 and len(whole[1]["rng"]) == 2
    for name, value in whole[0]["model"].items():
        assert torch.equal(value, whole[1]["model"][name]), name
    # One process, the whole model: the val loss the two sharded processes measured at step 4
    sample.main(["--ckpt", str(tmp_path / "halves/ckpt.dcp"), "--eval", "val", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert f"loss {halves[-1]['val_loss']:.4f}" in printed
    sample.main(["--ckpt", str(tmp_path / "halves/ckpt.dcp"), "--prompt", "Each process",
                 "--max_new_tokens", "5", "--device", "cpu"])
    assert capsys.readouterr().out.startswith("--- sample 1 ---\nEach process")
    # ...and a resume without --fsdp, in one process: it goes on, into ckpt.pt
    train.main(["--init_from", "resume", "--out_dir", str(tmp_path / "halves"), "--max_steps",
                "6", "--no-fsdp"])
    assert load_checkpoint(tmp_path / "halves/ckpt.pt")["step"] == 6
    assert not (tmp_path / "halves/ckpt.dcp").exists()  # one checkpoint per out_dir
    # ...and back: a ckpt.pt resumed sharded, its AdamW moments cut into slices
    moments = load_checkpoint(tmp_path / "halves/ckpt.pt")["optimizer"]["state"]
    launch(corpus, tmp_path / "halves", "--init_from", "resume", "--max_steps", "7")
    after = load_checkpoint(tmp_path / "halves/ckpt.dcp")
    beta2 = after["train_config"]["beta2"]
    for i, state in moments.items():  # v = beta2 v + (1 - beta2) g^2 >= beta2 v: v went on
        assert after["optimizer"]["state"][i]["step"] == state["step"] + 1
        assert (after["optimizer"]["state"][i]["exp_avg_sq"] >= beta2 * state["exp_avg_sq"]
                - 1e-12).all()
