"""Data parallelism, copied (DDP) and sharded (FSDP, shard.py): two CPU processes (gloo) compute
what one process computes with twice the gradient accumulation; evaluation split across them gives
the single-process number; sharded, each holds half of the parameters, gradients and moments;
torchrun runs train.py with only rank 0 writing, and a distributed run resumes exactly, sharded
too, from a checkpoint that one process (sample.py, a resume without --fsdp) reads whole."""

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
import parallel
import runtime
import sample
import shard
import train
from adamw import AdamW
from checkpoint import CheckpointError, load_checkpoint, objective_for
from config import TrainConfig
from model import ModelConfig, param_groups

REPO = Path(__file__).parents[1]
# 512 ids, not GPT-2's 50,304: nothing tested here depends on the number, and steps are cheaper
EOT = 510  # the objectives' <|endoftext|>: the ordinary ids are those below; BERT's [MASK] is 511
CONFIG = dict(vocab_size=512, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
STEPS, ACCUM = 3, 2  # optimizer steps; micro-batches per process and step


def micro_batches(step):
    """The 2 * ACCUM micro-batches of one step: process r takes the r-th half, one process all of
    them."""
    return list(
        torch.randint(0, EOT, (2 * ACCUM, 4, 16), generator=torch.Generator().manual_seed(step))
    )


def evaluation_split():
    return np.random.default_rng(0).integers(0, EOT, size=1000).astype(np.uint16)


def run_steps(model, kind, losses=None, layout=None):
    """STEPS optimizer steps (their losses appended to `losses`); then (parameters, (eval loss,
    predicted tokens)). A model split across processes (layout: parallel.setup's) gives its
    whole weights instead, by name, in the first process (None in the others)."""
    objective = objective_for(kind, eot_id=EOT)
    raw = model.module if isinstance(model, DistributedDataParallel) else model
    # A modest lr: the attention's key bias has a true gradient of exactly 0 (it adds the same
    # amount to every score of a query, and softmax ignores that), so its gradient is float noise,
    # which Adam turns into steps of about lr * |noise| / eps that differ between any two ways of
    # summing.
    optimizer = AdamW(param_groups(parallel.held(raw), 0.1), lr=1e-3)  # (a stage: its part)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    rank, world = runtime.data_rank_and_world()  # (model parallel: the processes share rows)
    off = torch.autocast("cpu", enabled=False)
    for step in range(STEPS):
        everything = micro_batches(step)
        share = len(everything) // world
        batches = everything[rank * share : (rank + 1) * share]
        # the same batches (and BERT's masks) whoever computes them
        batches = [
            objective.train_batch(b, torch.Generator().manual_seed(100 * step + rank * share + i))
            for i, b in enumerate(batches)
        ]
        step_losses, _, _ = train.train_step(
            train.Run(model, optimizer, scaler, objective, None, layout), batches, 1.0, off
        )
        (losses if losses is not None else []).append(step_losses["loss"])
    metrics = data.evaluate(raw, objective, evaluation_split(), 3, off)
    if layout is not None:
        params = parallel.whole_state(raw, optimizer, layout)[0]
    else:
        params = [p.detach().clone() for p in raw.parameters()]
    return params, (metrics["loss"], metrics["tokens"])


def worker(rank, ports, out, corpus):
    """In each of two processes: both models trained copied (DDP) and sharded (FSDP); the bytes a
    sharded process holds after one step; then train.py's runs (TRAIN_RUNS) in these same two
    processes, as torchrun would run them, so that no run pays for two new interpreters."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{ports[0]}", rank=rank,
                            world_size=2)
    try:
        results = {"ddp": {}, "fsdp": {}, "bytes": held_after_one_step(sharded=True)}
        for kind, config in CASES.items():
            torch.manual_seed(0)
            model = DistributedDataParallel(objective_for(kind).Model(ModelConfig(**config)))
            losses = []
            params, evaluation = run_steps(model, kind, losses)
            results["ddp"][kind] = {"params": params, "evaluation": evaluation, "losses": losses}
            results["fsdp"][kind] = sharded_steps(kind, config)
        for name, layout in TWO_LAYOUTS.items():  # model parallel: after DDP, which needs all
            results[name] = {kind: split_steps(kind, layout) for kind in SPLIT}
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    torch.set_num_threads(1)  # two processes, two cores
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1")  # what torchrun sets; train.py joins the group
    store = dist.TCPStore("127.0.0.1", ports[1], 2, is_master=rank == 0)  # outlives each group
    for i, (port, (name, flags)) in enumerate(zip(ports[2:], TRAIN_RUNS)):
        os.environ["MASTER_PORT"] = str(port)
        flags = [flag.format(out=out) for flag in flags]
        try:
            train.main(["--data_dir", corpus, "--out_dir", f"{out}/{name}", *FLAGS, *flags])
        except runtime.UserError as e:  # the line run_program would print, in each process
            Path(f"{out}/refused{rank}.txt").write_text(str(e), encoding="utf-8")
        store.set(f"{i}/{rank}", "done")  # the next run starts when both have ended this one,
        store.wait([f"{i}/0", f"{i}/1"])  # as the next launch of two new processes would
    if rank == 1:  # the first process holds the store: it leaves last, or the other's wait breaks
        store.set("left", "1")
    else:
        store.wait(["left"])
    os._exit(0)  # (as runtime.leave: gloo's threads sometimes abort an ordinary exit)


# train.py in the two processes above: DDP and FSDP runs stopped halfway and resumed; FSDP unbroken
TRAIN_RUNS = [("ddp-halves", ["--max_steps", "4", "--stop_at", "2"]),
              ("ddp-halves", ["--init_from", "resume"]),
              ("ddp-bert", ["--model", "bert", "--max_steps", "4", "--optimizer", "adamw"]),
              ("ddp-electra", ["--model", "electra", "--max_steps", "4", "--optimizer", "adamw"]),
              ("ddp-t5", ["--model", "t5", "--max_steps", "4", "--optimizer", "adamw"]),
              ("ddp-xlnet", ["--model", "xlnet", "--max_steps", "4", "--optimizer", "adamw"]),
              ("ddp-then-one", ["--max_steps", "4", "--stop_at", "2"]),  # resumed in one process
              ("fsdp-straight", ["--max_steps", "4", "--fsdp"]),
              ("fsdp-halves", ["--max_steps", "4", "--stop_at", "2", "--fsdp"]),
              ("fsdp-halves", ["--init_from", "resume", "--fsdp"]),
              # a text that cleaning empties ("Hi."), prepared by the first process only
              ("refused", ["--text", "{out}/tiny.txt", "--data_dir", "{out}/tiny"]),
              # model parallel: unbroken, and stopped halfway and resumed; a pipeline's
              # checkpoint resumed by tensor parallelism. (--pp 2 fits --grad_accum_steps 2.)
              ("tp-straight", ["--max_steps", "4", "--tp", "2"]),
              ("tp-halves", ["--max_steps", "4", "--stop_at", "2", "--tp", "2"]),
              ("tp-halves", ["--init_from", "resume"]),
              ("pp-straight", ["--max_steps", "4", "--pp", "2"]),
              ("pp-halves", ["--max_steps", "4", "--stop_at", "2", "--pp", "2"]),
              ("pp-halves", ["--init_from", "resume"]),
              ("pp-then-tp", ["--max_steps", "4", "--stop_at", "2", "--pp", "2"]),
              ("pp-then-tp", ["--init_from", "resume", "--pp", "1", "--tp", "2"])]


CASES = {"gpt": CONFIG, "bert": {**CONFIG, "grad_checkpointing": True},  # (it composes with FSDP)
         "t5": {**CONFIG, "vocab_size": 576},  # (room for its sentinels after [MASK])
         "xlnet": CONFIG}


# Model parallelism (parallel.py), of the models it splits: the layouts of two processes, and
# of four (FSDP 2 x TP 2, spawned apart)
SPLIT = ["gpt", "bert"]
TWO_LAYOUTS = {"tp": {"tp": 2}, "pp": {"pp": 2}}


def split_steps(kind, layout):
    """The steps of run_steps, the model split across the processes as layout says (TrainConfig's
    tp, pp, fsdp): its losses, evaluation and whole weights; and the number of elements of each
    parameter this process holds, by name."""
    torch.manual_seed(0)
    model = objective_for(kind).Model(ModelConfig(**CASES[kind]))
    cfg = TrainConfig(model=kind, optimizer="adamw", grad_accum_steps=2 * ACCUM, **layout)
    model, plan = parallel.setup(model, cfg, torch.device("cpu"), torch.float32,
                                 objective_for(kind, eot_id=EOT))
    losses = []
    params, evaluation = run_steps(model, kind, losses, plan)
    held = parallel.held(model)
    names = {id(p): n for n, p in held.named_parameters()}
    counts = {names[id(p)]: shard.local(p).numel() for p in held.parameters()}
    return {"params": params, "evaluation": evaluation, "losses": losses, "held": counts}


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
    idx = torch.randint(0, EOT, (2, 16))
    model(idx, torch.roll(idx, -1, 1)).backward()
    optimizer.step()
    return shard.bytes_held(model, optimizer)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def spawned(tmp_path_factory, corpus):
    """The folder where two processes, started once for this module, left what they computed
    (rank0.pt, rank1.pt) and train.py's runs (TRAIN_RUNS)."""
    out = tmp_path_factory.mktemp("two")
    (out / "tiny.txt").write_text("Hi.", encoding="utf-8")
    ports = [free_port() for _ in range(2 + len(TRAIN_RUNS))]  # a fresh one for each group
    mp.spawn(worker, args=(ports, str(out), corpus), nprocs=2)
    return out


@pytest.fixture(scope="module")
def two_processes(spawned):
    """What each of two processes computed: {rank: results}."""
    return {rank: torch.load(spawned / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)}


@pytest.fixture(scope="module")
def one_process():
    """The same steps in one process with twice the accumulation: {kind: results}."""
    results = {}
    for kind, config in CASES.items():
        torch.manual_seed(0)
        losses = []
        params, evaluation = run_steps(objective_for(kind).Model(ModelConfig(**config)), kind,
                                       losses)
        results[kind] = {"params": params, "evaluation": evaluation, "losses": losses}
    return results


def check_equal(result, single):
    assert result["losses"] == pytest.approx(single["losses"], abs=1e-5)
    for p, q in zip(result["params"], single["params"]):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0)
    # evaluation split across the two processes: the single-process loss, token count included
    assert result["evaluation"][0] == pytest.approx(single["evaluation"][0], rel=1e-6)
    assert result["evaluation"][1] == single["evaluation"][1]


@pytest.mark.parametrize("kind", CASES)
def test_two_processes_equal_one_process_with_twice_the_accumulation(two_processes, one_process,
                                                                     kind):
    torch.manual_seed(0)
    initial = [
        p.detach() for p in objective_for(kind).Model(ModelConfig(**CASES[kind])).parameters()
    ]
    moved = max((p - q).abs().max() for p, q in zip(one_process[kind]["params"], initial))
    assert moved > 2e-3  # training moved them
    for rank in (0, 1):
        check_equal(two_processes[rank]["ddp"][kind], one_process[kind])


@pytest.mark.parametrize("kind", CASES)
def test_two_sharded_processes_equal_one_process_with_twice_the_accumulation(two_processes,
                                                                             one_process, kind):
    for rank in (0, 1):
        check_equal(two_processes[rank]["fsdp"][kind], one_process[kind])


def test_each_sharded_process_holds_half_of_the_parameters_gradients_and_moments(two_processes):
    whole = held_after_one_step(sharded=False)
    numel = sum(p.numel() for p in objective_for("gpt").Model(
        ModelConfig(**{**CONFIG, "n_embd": 64})).parameters())
    assert whole == {"parameters": 4 * numel, "gradients": 4 * numel, "optimizer": 8 * numel}
    for rank in (0, 1):  # docs/guide.md, "Sharding": 1/N for N = 1, 2, 4 at GPT-2 sizes
        for kind, n in two_processes[rank]["bytes"].items():  # give or take uneven slices' padding
            assert n == pytest.approx(whole[kind] / 2, rel=0.01), (rank, kind)


# torchrun ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    (folder / "text.txt").write_text(
        "Two processes share the work of one. " * 300, encoding="utf-8"
    )
    # a tokenizer of 300 ids trained on the text (bpe.py), for cheap steps
    data.prepare(folder / "prepared", text=str(folder / "text.txt"), clean_text=False,
                 vocab_size=300)
    return str(folder / "prepared")


FLAGS = ["--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--block_size", "16", "--batch_size",
         "2", "--device", "cpu", "--eval_interval", "2", "--warmup_steps", "1",
         "--dtype", "float32"]  # (auto: bfloat16 on some CPUs, whose rounding hides what we test)


def torchrun(corpus, out_dir, *flags):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "train.py", "--data_dir", corpus, "--out_dir", str(out_dir), *FLAGS, *flags]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]  # torchrun fails if either rank does
    return result


def launch(corpus, out_dir, *flags):
    """What torchrun --standalone --nproc_per_node=2 train.py does: two processes with torchrun's
    environment variables, here started directly (without its launcher process: faster)."""
    argv = [sys.executable, "train.py", "--data_dir", corpus, "--out_dir", str(out_dir), *FLAGS,
            *flags]
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


def test_torchrun_writes_from_rank_0_only_and_resumes_exactly(corpus, spawned, tmp_path):
    result = torchrun(corpus, tmp_path / "straight", "--max_steps", "4")
    assert "x 2 processes = 64" in result.stdout  # tokens per step: 2 x 16 x 1 x 2
    runs = {"straight": tmp_path / "straight", "halves": spawned / "ddp-halves"}  # (TRAIN_RUNS)
    for d in runs.values():
        written = sorted(p.name for p in d.iterdir())
        assert written == ["ckpt.pt", "log.jsonl", "loss.svg"]  # no lock left
        assert [r["step"] for r in log(d)] == [1, 2, 3, 4]  # one writer: no line twice
    checkpoints = [load_checkpoint(runs[d] / "ckpt.pt") for d in ("straight", "halves")]
    assert len(checkpoints[1]["rng"]) == 2  # every process's RNG state, to give each its own back
    rng = checkpoints[1]["rng"]
    assert torch.equal(rng[0]["data"], rng[1]["data"])  # one data order, the same in both
    assert not torch.equal(rng[0]["torch"], rng[1]["torch"])  # dropout: each process its own
    for k, v in checkpoints[0]["model"].items():
        assert torch.equal(v, checkpoints[1]["model"][k]), k


@pytest.mark.parametrize("kind", ["gpt", "bert", "electra", "t5", "xlnet"])
def test_train_py_in_two_processes_equals_one_process_with_twice_the_accumulation(corpus, spawned,
                                                                                  tmp_path, kind):
    """One generator draws each step's whole batch, BERT's masks (ELECTRA's noise for its draws,
    T5's spans, padded to the step's longest row; XLNet's orders) included, and each process
    takes its share: the losses of train.py in two processes are those of one process with
    --grad_accum_steps 2, through the command line itself."""
    two = spawned / {"gpt": "ddp-halves", "bert": "ddp-bert", "electra": "ddp-electra",
                     "t5": "ddp-t5", "xlnet": "ddp-xlnet"}[kind]
    # (AdamW for BERT too: Muon's Newton-Schulz steps multiply the float noise of the sums by
    # hundreds, and what is tested here is the data, not the optimizer)
    flags = ["--model", kind, "--max_steps", "4", "--grad_accum_steps", "2", "--optimizer",
             "adamw"]
    train.main(["--data_dir", corpus, "--out_dir", str(tmp_path), *FLAGS, *flags])
    one = log(tmp_path)
    # equal but for the order of float sums (the all-reduce's)
    assert [r["loss"] for r in one] == pytest.approx([r["loss"] for r in log(two)], rel=2e-6)
    assert one[-1]["val_loss"] == pytest.approx(log(two)[-1]["val_loss"], rel=2e-6)


def test_data_refused_by_the_first_process_is_one_line_in_each(spawned):
    """data.py's refusal of a text in the first process reaches the other, which was waiting for
    the data, as the same one-line error, not as a broken connection."""
    lines = [(spawned / f"refused{rank}.txt").read_text(encoding="utf-8") for rank in (0, 1)]
    assert lines[0] == lines[1]
    assert lines[0].startswith("cleaning kept none of the 1 documents") and "\n" not in lines[0]


def test_a_two_process_checkpoint_resumes_in_one_process_where_the_two_would_have_gone(spawned):
    """Written by two processes at step 2, resumed in one with twice the accumulation (the same
    global batch): steps 3 and 4 are those of the unbroken two-process run."""
    train.main(["--out_dir", str(spawned / "ddp-then-one"), "--init_from", "resume",
                "--grad_accum_steps", "2"])
    resumed, unbroken = log(spawned / "ddp-then-one"), log(spawned / "ddp-halves")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in unbroken], rel=2e-6)


# train.py --fsdp in two processes, its checkpoint, and sample.py ----------------------------------

def test_a_sharded_run_resumes_exactly_and_one_process_reads_its_checkpoint(corpus, spawned,
                                                                           capsys):
    runs = {"straight": spawned / "fsdp-straight", "halves": spawned / "fsdp-halves"}
    assert (runs["halves"] / "ckpt.dcp/meta.pt").exists()  # a folder of slices, not ckpt.pt
    assert not (runs["halves"] / "ckpt.pt").exists()
    straight, halves = log(runs["straight"]), log(runs["halves"])
    assert [r["loss"] for r in halves] == [r["loss"] for r in straight]
    whole = [load_checkpoint(runs[d] / "ckpt.dcp") for d in ("straight", "halves")]
    assert whole[0]["step"] == whole[1]["step"] == 4 and len(whole[1]["rng"]) == 2
    for name, value in whole[0]["model"].items():
        assert torch.equal(value, whole[1]["model"][name]), name
    # One process, the whole model: the val loss the two sharded processes measured at step 4
    sample.main(["--ckpt", str(runs["halves"] / "ckpt.dcp"), "--eval", "val", "--device", "cpu",
                 "--dtype", "float32"])  # as the run measured it
    printed = capsys.readouterr().out
    assert f"loss {halves[-1]['val_loss']:.4f}" in printed
    sample.main(["--ckpt", str(runs["halves"]), "--eval", "val", "--device", "cpu", "--dtype",
                 "float32"])  # a run's folder: the checkpoint in it
    assert f"loss {halves[-1]['val_loss']:.4f}" in capsys.readouterr().out
    with pytest.raises(CheckpointError, match=f"ckpt.pt does not exist, but "
                                              f"{runs['halves'] / 'ckpt.dcp'} does"):
        sample.main(["--ckpt", str(runs["halves"] / "ckpt.pt"), "--device", "cpu"])
    with pytest.raises(runtime.ConfigError, match="or resume it in one process with --no-fsdp"):
        train.main(["--init_from", "resume", "--out_dir", str(runs["halves"]), "--max_steps", "6"])
    sample.main(["--ckpt", str(runs["halves"] / "ckpt.dcp"), "--prompt", "Two processes",
                 "--max_new_tokens", "5", "--device", "cpu"])
    assert capsys.readouterr().out.startswith("--- sample 1 ---\nTwo processes")
    # ...and a resume without --fsdp, in one process: it goes on, into ckpt.pt
    train.main(["--init_from", "resume", "--out_dir", str(runs["halves"]), "--max_steps",
                "6", "--no-fsdp"])
    assert load_checkpoint(runs["halves"] / "ckpt.pt")["step"] == 6
    assert not (runs["halves"] / "ckpt.dcp").exists()  # one checkpoint per out_dir
    # ...and back: a ckpt.pt resumed sharded, its AdamW moments cut into slices
    moments = load_checkpoint(runs["halves"] / "ckpt.pt")["optimizer"]["state"]
    launch(corpus, runs["halves"], "--init_from", "resume", "--max_steps", "7", "--fsdp")
    after = load_checkpoint(runs["halves"] / "ckpt.dcp")
    beta2 = after["train_config"]["beta2"]
    for i, state in moments.items():  # v = beta2 v + (1 - beta2) g^2 >= beta2 v: v went on
        assert after["optimizer"]["state"][i]["step"] == state["step"] + 1
        assert (after["optimizer"]["state"][i]["exp_avg_sq"] >= beta2 * state["exp_avg_sq"]
                - 1e-12).all()


# Model parallelism: tensor and pipeline (parallel.py) ---------------------------------------------

def by_name(kind, params):
    """One process's parameters (run_steps' list) by name."""
    model = objective_for(kind).Model(ModelConfig(**CASES[kind]))
    return dict(zip((name for name, _ in model.named_parameters()), params))


def check_whole(results, single, kind):
    """Every process's losses and evaluation, and the first one's whole weights (whole_state, by
    name), against one process's."""
    names = by_name(kind, single["params"])
    for rank, result in results.items():
        whole = [result["params"][n] for n in names] if rank == 0 else single["params"]
        check_equal({**result, "params": whole}, single)


@pytest.mark.parametrize("layout", TWO_LAYOUTS)
@pytest.mark.parametrize("kind", SPLIT)
def test_two_model_parallel_processes_equal_one_process(two_processes, one_process, layout, kind):
    """Tensor parallel (each process half of the heads and hidden units of every Block), and
    pipeline parallel (each a stage, the four micro-batches through 1F1B): the losses, evaluation
    and gathered weights of one process that accumulates the same four micro-batches."""
    check_whole({rank: two_processes[rank][layout][kind] for rank in (0, 1)}, one_process[kind],
                kind)


def megatron_split(name):
    """Whether tensor parallelism splits the parameter: the column-split layers (c_attn, c_fc),
    weight and bias, and the row-split weights (the c_proj's; their biases are added once the
    partial sums are, so they stay whole)."""
    return ".h." in name and name.endswith(("c_attn.weight", "c_attn.bias", "c_fc.weight",
                                            "c_fc.bias", "c_proj.weight"))


def test_each_model_parallel_process_holds_its_share_of_the_parameters(two_processes):
    for kind in SPLIT:
        model = objective_for(kind).Model(ModelConfig(**CASES[kind]))
        sizes = {name: p.numel() for name, p in model.named_parameters()}
        for rank in (0, 1):
            held = two_processes[rank]["tp"][kind]["held"]
            assert held == {n: size // 2 if megatron_split(n) else size
                            for n, size in sizes.items()}
        # two stages of the two Blocks: the embeddings and Block 0; Block 1, the final LayerNorm
        # and the head, with its copy of the tied token embedding
        first = {n for n in sizes if n.startswith(("transformer.wte", "transformer.wpe"))
                 or ".h.0." in n}
        second = {n for n in sizes if ".h.1." in n or n.startswith(("transformer.ln_f", "head"))}
        assert first.isdisjoint(second) and first | second == sizes.keys()
        assert two_processes[0]["pp"][kind]["held"] == {n: sizes[n] for n in first}
        assert two_processes[1]["pp"][kind]["held"] == {
            n: sizes[n] for n in second | {"transformer.wte.weight"}}


def worker4(rank, port, out):
    """In each of four processes: FSDP 2 x TP 2, a (data, tensor) mesh."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=4)
    try:
        results = {kind: split_steps(kind, {"tp": 2, "fsdp": True}) for kind in SPLIT}
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    os._exit(0)  # (as in worker)


@pytest.fixture(scope="module")
def four_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("four")
    mp.spawn(worker4, args=(free_port(), str(out)), nprocs=4)
    return {rank: torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(4)}


@pytest.mark.parametrize("kind", SPLIT)
def test_four_processes_as_fsdp_2_by_tp_2_equal_one_process(four_processes, one_process, kind):
    """Two pairs of tensor-parallel processes, each pair a half of the batch, each process half
    of its pair's share sharded (FSDP): one process's losses, evaluation and weights; each holds a
    quarter of what tensor parallelism splits and half of the rest."""
    check_whole({rank: four_processes[rank][kind] for rank in range(4)}, one_process[kind], kind)
    model = objective_for(kind).Model(ModelConfig(**CASES[kind]))
    for rank in range(4):
        assert four_processes[rank][kind]["held"] == {
            n: p.numel() // (4 if megatron_split(n) else 2) for n, p in model.named_parameters()}


def test_train_py_splits_the_model_resumes_exactly_and_sample_reads_it(corpus, spawned, tmp_path,
                                                                       capsys):
    """torchrun train.py --tp 2 and --pp 2 (TRAIN_RUNS): the losses of one process; stopped at
    step 2 and resumed, the unbroken run's exactly; sample.py reads the checkpoint whole; a
    pipeline's checkpoint resumes under tensor parallelism."""
    for layout, accum in (("tp", "1"), ("pp", "2")):
        straight, halves = log(spawned / f"{layout}-straight"), log(spawned / f"{layout}-halves")
        assert [r["step"] for r in halves] == [1, 2, 3, 4]
        assert [r["loss"] for r in halves] == [r["loss"] for r in straight]
        assert halves[-1]["val_loss"] == straight[-1]["val_loss"]
        train.main(["--data_dir", corpus, "--out_dir", str(tmp_path / layout), *FLAGS,
                    "--max_steps", "4", "--grad_accum_steps", accum])
        one = log(tmp_path / layout)
        assert [r["loss"] for r in straight] == pytest.approx([r["loss"] for r in one], rel=2e-6)
        sample.main(["--ckpt", str(spawned / f"{layout}-halves"), "--eval", "val", "--device",
                     "cpu", "--dtype", "float32"])
        assert f"loss {halves[-1]['val_loss']:.4f}" in capsys.readouterr().out
    moved, unbroken = log(spawned / "pp-then-tp"), log(spawned / "pp-straight")
    assert [r["loss"] for r in moved] == pytest.approx([r["loss"] for r in unbroken], rel=2e-6)
    # ...and in one process, which needs the layout's flag turned off (it was the checkpoint's)
    with pytest.raises(runtime.ConfigError, match="or resume it in one process with --tp 1"):
        train.main(["--init_from", "resume", "--out_dir", str(spawned / "tp-halves"),
                    "--max_steps", "5"])
    train.main(["--init_from", "resume", "--out_dir", str(spawned / "tp-halves"), "--max_steps",
                "5", "--tp", "1"])
    assert load_checkpoint(spawned / "tp-halves" / "ckpt.pt")["step"] == 5
