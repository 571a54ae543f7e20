"""train.py: the hand-written AdamW equals PyTorch's, the schedule is what the formulas say,
accumulation is exact, resuming is bit-exact, fp16 skips and counts overflowing steps, and bad
checkpoints and diverging runs stop with a clear message."""

import io
import json
import math
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

import config
import data
import monitor
import runtime
import train
from adamw import AdamW
from checkpoint import CheckpointError, load_checkpoint, objective_for, save_checkpoint
from clm import CLM, clm_loss
from mlm import MLM
from model import GPT, ModelConfig, param_groups
from muon import Muon, orthogonalize

REPO = Path(__file__).parents[1]
TINY = [
    "--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--batch_size", "4",
    "--device", "cpu", "--dtype", "float32", "--lr", "3e-3", "--warmup_steps", "2",
    "--eval_interval", "1000", "--ckpt_interval", "1000", "--eval_iters", "4",
]


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """A few sentences repeated, easy to learn."""
    sentences = ["The cat sat on the mat.", "A dog ran in the park.", "Birds sing in the morning.",
                 "The sun is warm today.", "We read a book at night."]
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text(" ".join(sentences[i * 7 % 5] for i in range(400)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(text):
    """The text prepared with a tokenizer of 300 ids trained on it (bpe.py): a step with GPT-2's
    50,257 ids would cost several times more, and nothing here needs GPT-2's."""
    data.prepare(text.parent / "prepared", text=str(text), clean_text=False, vocab_size=300)
    return str(text.parent / "prepared")


@pytest.fixture(scope="module")
def gpt2_corpus(text):
    """The text prepared with GPT-2's tokenizer, for GPT-2's weights."""
    data.prepare(text.parent / "gpt2", text=str(text), clean_text=False)
    return str(text.parent / "gpt2")


def run(corpus, out_dir, *flags):
    train.main(["--data_dir", corpus, "--out_dir", str(out_dir), *TINY, *flags])


def log(out_dir):
    return [json.loads(line) for line in (Path(out_dir) / "log.jsonl").read_text().splitlines()]


# 1. AdamW --------------------------------------------------------------------------------------

def two_groups(seed=0):
    g = torch.Generator().manual_seed(seed)
    matrices = [torch.nn.Parameter(torch.randn(8, 5, generator=g)) for _ in range(2)]
    vectors = [torch.nn.Parameter(torch.randn(5, generator=g)) for _ in range(2)]
    return matrices, vectors


def feed_gradients(params, step):
    g = torch.Generator().manual_seed(1000 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * (1 + step % 7)


def test_hand_adamw_matches_torch_adamw_with_two_groups():
    ours_m, ours_v = two_groups()
    ref_m, ref_v = two_groups()
    settings = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    ours = AdamW([{"params": ours_m, "weight_decay": 0.1},
                  {"params": ours_v, "weight_decay": 0.0}], **settings)
    ref = torch.optim.AdamW([{"params": ref_m, "weight_decay": 0.1},
                             {"params": ref_v, "weight_decay": 0.0}], **settings)
    for step in range(100):
        for opt, params in ((ours, ours_m + ours_v), (ref, ref_m + ref_v)):
            feed_gradients(params, step)
            # some steps without a gradient for a matrix and the whole second group: those stay
            # put and keep their own step counts
            for p in params[1:] if step % 3 == 1 else []:
                p.grad = None
            lr = 1e-2 * (1 + math.cos(step / 30))  # a schedule
            opt.param_groups[0]["lr"] = opt.param_groups[1]["lr"] = lr
            opt.step()
    initial = two_groups()[0] + two_groups()[1]
    moved = max((p - q).abs().max().item() for p, q in zip(ref_m + ref_v, initial))
    assert moved > 0.1  # the parameters really travelled...
    apart = max((p - q).abs().max().item() for p, q in zip(ours_m + ours_v, ref_m + ref_v))
    assert apart < 1e-6  # ...together


@pytest.mark.parametrize("Optimizer", [AdamW, Muon])
def test_optimizer_state_dict_round_trip_continues_identically(Optimizer):
    def groups(params):  # for Muon the matrices are its own (model.param_groups(muon=True))
        return [{"params": params[:2], "weight_decay": 0.1, "muon": Optimizer is Muon},
                {"params": params[2:], "weight_decay": 0.0}]

    params = [torch.nn.Parameter(p.detach().clone()) for p in sum(two_groups(), [])]
    opt = Optimizer(groups(params), lr=1e-2)
    for step in range(10):
        feed_gradients(params, step)
        opt.step()
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    copies = [torch.nn.Parameter(p.clone()) for p in saved["params"]]
    restored = Optimizer(groups(copies), lr=1e-2)
    restored.load_state_dict(saved["opt"])
    for step in range(10, 20):
        for o, ps in ((opt, params), (restored, copies)):
            feed_gradients(ps, step)
            o.step()
    assert all(torch.equal(p, q) for p, q in zip(params, copies))


# Muon: Newton-Schulz against an SVD, the update against torch.optim.Muon

@pytest.mark.parametrize("tall", [False, True])
def test_newton_schulz_keeps_the_singular_vectors_and_moves_each_value_by_the_polynomial(tall):
    g = torch.Generator().manual_seed(0)
    rows = torch.logspace(-1, 0, 6, dtype=torch.float64)[:, None]  # far from orthogonal
    m = rows * torch.randn(6, 20, generator=g, dtype=torch.float64)  # (6, 20)
    m = m.T if tall else m
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    assert s.max() / s.min() > 5
    s = s / s.square().sum().sqrt()  # divided by the Frobenius norm
    for _ in range(5):  # Jordan et al.'s quintic, on each singular value
        s = 3.4445 * s - 4.7750 * s**3 + 2.0315 * s**5
    o = orthogonalize(m)
    assert torch.allclose(o, u @ torch.diag(s) @ vh, atol=1e-6)
    assert (torch.linalg.svdvals(o) - 1).abs().max() < 0.5  # about orthogonal


def test_hand_muon_matches_torch_muon_and_adamw():
    ours_m, ours_v = two_groups()
    ref_m, ref_v = two_groups()
    ours = Muon([{"params": ours_m, "weight_decay": 0.1, "muon": True},
                 {"params": ours_v, "weight_decay": 0.0}], lr=1e-2, betas=(0.9, 0.95))
    # torch's "match_rms_adamw" steps at RMS 0.2 * lr and decays by lr * weight_decay: twice the
    # lr and half the decay give our UPDATE_RMS = 0.4 and the same decay
    ref = [torch.optim.Muon(ref_m, lr=2e-2, weight_decay=0.05, adjust_lr_fn="match_rms_adamw"),
           torch.optim.AdamW(ref_v, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)]
    for step in range(30):
        lr = 1e-2 * (1 + math.cos(step / 10))  # a schedule
        feed_gradients(ours_m + ours_v, step)
        for group in ours.param_groups:
            group["lr"] = lr
        ours.step()
        feed_gradients(ref_m + ref_v, step)
        ref[0].param_groups[0]["lr"], ref[1].param_groups[0]["lr"] = 2 * lr, lr
        for opt in ref:
            opt.step()
    initial = sum(two_groups(), [])
    moved = max((p - q).abs().max().item() for p, q in zip(ref_m + ref_v, initial))
    apart = [(p - q).abs().max().item() for p, q in zip(ours_m + ours_v, ref_m + ref_v)]
    assert moved > 0.1
    assert max(apart[2:]) < 1e-6  # the vectors: AdamW's
    # the matrices: torch orthogonalizes in bfloat16 (3 significant digits), we in float32
    assert max(apart[:2]) < 0.02 * moved


# 2. The schedule --------------------------------------------------------------------------------

@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_schedule_values_computed_by_hand(decay):
    cfg = train.TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110, decay=decay)
    assert train.lr_at(0, cfg) == pytest.approx(1e-4)  # lr / warmup_steps, not 0
    assert train.lr_at(4, cfg) == pytest.approx(5e-4)
    assert train.lr_at(9, cfg) == pytest.approx(1e-3)  # the end of warmup: the peak
    assert train.lr_at(10, cfg) == pytest.approx(1e-3)  # decay starts from the peak
    # halfway through the decay (step 60 of 10..110): cosine and linear both give the midpoint
    assert train.lr_at(60, cfg) == pytest.approx(5.5e-4)
    # a quarter of the way: cosine 1e-4 + 0.9e-3 * (1 + cos(pi / 4)) / 2,
    # linear 1e-4 + 0.9e-3 * 0.75
    quarter = 1e-4 + 0.9e-3 * ((1 + math.sqrt(0.5)) / 2 if decay == "cosine" else 0.75)
    assert train.lr_at(35, cfg) == pytest.approx(quarter)
    last = 1e-4 + 0.9e-3 * ((1 + math.cos(math.pi * 99 / 100)) / 2 if decay == "cosine" else 0.01)
    assert train.lr_at(109, cfg) == pytest.approx(last)  # the last step, one step short of min_lr


# 3. Gradient accumulation -----------------------------------------------------------------------

class GradientRecorder(AdamW):
    """An optimizer that records the gradients it is asked to apply."""

    def step(self):
        self.seen = [p.grad.clone() for g in self.param_groups for p in g["params"]]


def test_accumulated_gradients_equal_one_big_batch():
    torch.manual_seed(0)
    model = GPT(
        ModelConfig(vocab_size=512, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    )
    batch = torch.randint(0, 512, (12, 16), generator=torch.Generator().manual_seed(1))
    results = {}
    for k in (1, 3, 4):
        opt = GradientRecorder(param_groups(model, 0.1))
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        micro_batches = [CLM().train_batch(chunk) for chunk in batch.chunk(k)]
        run = train.Run(model, opt, scaler, CLM(), torch.Generator())
        losses, norm, _ = train.train_step(
            run, micro_batches, 0, torch.autocast("cpu", enabled=False)
        )
        results[k] = (losses["loss"], norm, opt.seen)
    for k in (3, 4):
        # logged loss: the mean, not the last
        assert results[k][0] == pytest.approx(results[1][0], rel=1e-6)
        assert results[k][1] == pytest.approx(results[1][1], rel=1e-5)
        for a, b in zip(results[k][2], results[1][2]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["gpt", "bert", "t5", "xlnet"])
def test_the_plain_loss_and_the_fused_head_take_the_same_training_step(kind):
    """train_step with the objective's plain loss (the logits, then clm_loss or mlm_loss, as the
    lessons write them) and with the fused head (model.HeadLoss): the same loss, gradient norm and
    gradients, over two micro-batches. (384 ids: 318 ordinary, <|endoftext|>, [MASK], and room
    for T5's sentinels.)"""
    torch.manual_seed(0)
    model = objective_for(kind).Model(ModelConfig(vocab_size=384, block_size=16, n_layer=2,
                                                  n_head=2, n_embd=32))
    g = torch.Generator().manual_seed(1)
    batches = [objective_for(kind, eot_id=318).train_batch(torch.randint(0, 318, (4, 16),
                                                                         generator=g), g)
               for _ in range(2)]
    seen = {}
    for fused in (False, True):
        opt = GradientRecorder(param_groups(model, 0.1))
        run = train.Run(model, opt, torch.amp.GradScaler("cpu", enabled=False),
                        objective_for(kind, eot_id=318, fused=fused), torch.Generator())
        losses, norm, _ = train.train_step(run, batches, 0, torch.autocast("cpu", enabled=False))
        seen[fused] = (losses["loss"], norm, opt.seen)
    assert seen[True][0] == pytest.approx(seen[False][0], rel=1e-6)
    assert seen[True][1] == pytest.approx(seen[False][1], rel=1e-5)
    for fused_grad, plain_grad in zip(seen[True][2], seen[False][2]):
        torch.testing.assert_close(fused_grad, plain_grad, atol=1e-6, rtol=1e-4)


def test_clipping_caps_the_global_norm_and_reports_the_norm_before():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=512, block_size=16, n_layer=2, n_head=2, n_embd=32))
    idx = torch.randint(0, 512, (4, 16))
    norms = {}
    for clip in (0, 0.1):
        opt = GradientRecorder(param_groups(model, 0.1))
        run = train.Run(
            model, opt, torch.amp.GradScaler("cpu", enabled=False), CLM(), torch.Generator()
        )
        _, norms[clip], _ = train.train_step(run, [CLM().train_batch(idx)], clip,
                                             torch.autocast("cpu", enabled=False))
        applied = torch.sqrt(sum(g.square().sum() for g in opt.seen)).item()
        assert applied == pytest.approx(norms[clip] if clip == 0 else 0.1, rel=1e-4)
    # logged: the norm before clipping
    assert norms[0.1] == pytest.approx(norms[0], rel=1e-6) and norms[0] > 0.5


# 4. Exact resume --------------------------------------------------------------------------------

def test_resuming_is_bit_exact(corpus, tmp_path, capsys):
    flags = ["--max_steps", "8", "--dropout", "0.1", "--model", "gpt"]
    run(corpus, tmp_path / "straight", *flags)
    run(corpus, tmp_path / "halves", *flags, "--stop_at", "4")
    assert torch.load(tmp_path / "halves/ckpt.pt", weights_only=True)["step"] == 4
    # every other setting from the checkpoint
    run(corpus, tmp_path / "halves", "--init_from", "resume")
    straight, halves = (
        torch.load(tmp_path / d / "ckpt.pt", weights_only=True) for d in ("straight", "halves")
    )
    assert straight["step"] == halves["step"] == 8
    assert all(torch.equal(straight["model"][k], halves["model"][k]) for k in straight["model"])
    assert [r["loss"] for r in log(tmp_path / "straight")] == [
        r["loss"] for r in log(tmp_path / "halves")
    ]
    capsys.readouterr()  # a run already at its end names the flag that ends it
    for limit, flag in (([], "--max_steps 8"), (["--stop_at", "6"], "--stop_at 6")):
        run(corpus, tmp_path / "halves", "--init_from", "resume", *limit)
        assert f"at step 8 already, {flag}: nothing to do (raise {flag.split()[0]} to train " \
            "further)" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["bert", "electra", "t5", "xlnet"])
def test_the_other_objectives_resume_bit_exact_too(corpus, tmp_path, kind):
    flags = ["--max_steps", "6", "--dropout", "0.1", "--model", kind]
    run(corpus, tmp_path / "straight", *flags)
    run(corpus, tmp_path / "halves", *flags, "--stop_at", "3")
    run(corpus, tmp_path / "halves", "--init_from", "resume")
    def losses(out_dir):  # each step's training figures (ELECTRA's: both parts of its loss too)
        return [{k: v for k, v in r.items() if k != "tokens_per_s" and not k.startswith("val_")}
                for r in log(out_dir)]
    assert losses(tmp_path / "straight") == losses(tmp_path / "halves")
    assert log(tmp_path / "straight")[-1]["val_loss"] == log(tmp_path / "halves")[-1]["val_loss"]
    straight, halves = (torch.load(tmp_path / d / "ckpt.pt", weights_only=True)["model"]
                        for d in ("straight", "halves"))
    assert all(torch.equal(straight[k], halves[k]) for k in straight)


def test_training_continues_from_gpt2_weights(gpt2_corpus, tmp_path):
    from test_model import gpt2_state_dict
    # the original file's keys; 64 wide: 1 head
    weights = gpt2_state_dict(V=50257, P=64, C=64, prefix="")
    torch.save(weights, tmp_path / "pytorch_model.bin")
    flags = [
        "--data_dir", gpt2_corpus, "--init_from", "gpt2", "--gpt2_path",
        str(tmp_path / "pytorch_model.bin"), "--block_size", "32", "--batch_size", "4", "--device",
        "cpu", "--dtype", "float32", "--max_steps", "2", "--warmup_steps", "1",
    ]
    train.main(flags + ["--out_dir", str(tmp_path / "out"), "--lr", "1e-5", "--min_lr", "1e-6"])
    saved = load_checkpoint(tmp_path / "out/ckpt.pt")
    assert {
        k: saved["model_config"][k]
        for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
    } == {"vocab_size": 50257, "block_size": 32, "n_layer": 1, "n_head": 1, "n_embd": 64}
    for ours, theirs in (
        ("transformer.wte.weight", "wte.weight"),
        ("transformer.h.0.mlp.c_fc.weight", "h.0.mlp.c_fc.weight"),
    ):
        expected = weights[theirs].T if "c_fc" in theirs else weights[theirs]
        # two tiny steps away
        torch.testing.assert_close(saved["model"][ours], expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(
        saved["model"]["transformer.wpe.weight"], weights["wpe.weight"][:32], atol=1e-4, rtol=0
    )
    with pytest.raises(runtime.ConfigError, match="architecture from GPT-2"):
        train.main(flags + ["--out_dir", str(tmp_path / "other"), "--n_layer", "2"])


# 5. Mixed precision -----------------------------------------------------------------------------

class InfGradient(torch.autograd.Function):
    """The identity forward; backward turns the gradient into inf, like an fp16 overflow."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def test_float16_skips_and_counts_an_overflowing_step(corpus, tmp_path, monkeypatch):
    calls = []

    def overflow_on_third_step(self, model, inputs, targets):
        calls.append(1)
        loss = clm_loss(model(inputs), targets)
        return InfGradient.apply(loss) if len(calls) == 3 else loss

    monkeypatch.setattr(CLM, "loss", overflow_on_third_step)
    run(corpus, tmp_path, "--dtype", "float16", "--max_steps", "5")
    records = log(tmp_path)
    assert [r["skipped_steps"] for r in records] == [0, 0, 1, 1, 1]
    assert all(math.isfinite(r["loss"]) for r in records)
    scaler = torch.load(tmp_path / "ckpt.pt", weights_only=True)["scaler"]
    assert scaler["scale"] == 65536.0 / 2  # halved once, at the skipped step


def test_a_skipped_step_leaves_the_parameters_alone():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=256, block_size=8, n_layer=1, n_head=2, n_embd=16))
    opt = AdamW(param_groups(model, 0.1), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    before = [p.detach().clone() for p in model.parameters()]
    batch = CLM().train_batch(torch.randint(0, 256, (2, 8)))
    fp16 = torch.autocast("cpu", dtype=torch.float16)

    class Overflowing(CLM):
        def loss(self, model, inputs, targets):
            return InfGradient.apply(super().loss(model, inputs, targets))

    run = train.Run(model, opt, scaler, Overflowing(), torch.Generator())
    _, norm, skipped = train.train_step(run, [batch], 1.0, fp16)
    assert skipped and not math.isfinite(norm)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    run.objective = CLM()
    _, _, skipped = train.train_step(run, [batch], 1.0, fp16)
    assert not skipped and not all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_bfloat16_autocast_trains_on_cpu(corpus, tmp_path):
    run(corpus, tmp_path, "--dtype", "bfloat16", "--max_steps", "20", "--eval_interval", "10")
    records, saved = log(tmp_path), torch.load(tmp_path / "ckpt.pt", weights_only=True)
    uniform = math.log(saved["model_config"]["vocab_size"])  # the loss of a uniform guess
    assert records[-1]["val_loss"] < records[9]["val_loss"] < uniform
    assert saved["scaler"] == {}  # no scaler for bf16


# 6. Bad checkpoints, bad resumes, divergence ----------------------------------------------------

def test_resume_with_another_architecture_or_optimizer_lists_each_difference(corpus, tmp_path):
    run(corpus, tmp_path, "--max_steps", "2")  # a GPT: AdamW
    with pytest.raises(CheckpointError, match=r"--n_layer 3 \(checkpoint: 2\)$"):
        run(corpus, tmp_path, "--init_from", "resume", "--n_layer", "3", "--max_steps", "4")
    with pytest.raises(CheckpointError, match=r"--n_layer 3 \(checkpoint: 2\); --optimizer muon "
                                              r"\(checkpoint: adamw\)$"):
        run(corpus, tmp_path, "--init_from", "resume", "--n_layer", "3", "--optimizer", "muon")
    # a checkpoint from before --optimizer existed was trained with AdamW, and resumes with it
    saved = load_checkpoint(tmp_path / "ckpt.pt")
    del saved["train_config"]["optimizer"]
    save_checkpoint(tmp_path / "ckpt.pt", saved)
    with pytest.raises(CheckpointError, match=r"--optimizer muon \(checkpoint: adamw\)$"):
        run(corpus, tmp_path, "--init_from", "resume", "--optimizer", "muon")
    run(corpus, tmp_path, "--init_from", "resume", "--max_steps", "3")
    assert load_checkpoint(tmp_path / "ckpt.pt")["train_config"]["optimizer"] == "adamw"


def test_resume_flags_are_checked_against_the_checkpoints_settings_not_the_defaults(
    corpus, tmp_path
):
    run(corpus, tmp_path, "--max_steps", "2")  # TINY warms up for 2 steps, the default for 30
    train.main(["--out_dir", str(tmp_path), "--init_from", "resume", "--max_steps", "4"])
    assert [r["step"] for r in log(tmp_path)] == [1, 2, 3, 4]
    with pytest.raises(
        runtime.ConfigError, match="--warmup_steps 2: must not exceed --max_steps 1"
    ):
        train.main(["--out_dir", str(tmp_path), "--init_from", "resume", "--max_steps", "1"])


def test_a_truncated_checkpoint_gets_one_clear_line(corpus, tmp_path):
    run(corpus, tmp_path, "--max_steps", "2")
    blob = (tmp_path / "ckpt.pt").read_bytes()
    (tmp_path / "ckpt.pt").write_bytes(blob[: len(blob) // 2])
    result = subprocess.run(
        [sys.executable, "train.py", "--out_dir", str(tmp_path), "--init_from", "resume"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: {tmp_path / 'ckpt.pt'} is not a readable checkpoint")
    )


def test_a_missing_checkpoint_and_an_occupied_out_dir_are_refused(corpus, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        run(corpus, tmp_path / "nothing", "--init_from", "resume")
    run(corpus, tmp_path, "--max_steps", "1", "--warmup_steps", "1")
    with pytest.raises(CheckpointError, match="exists: continue it with --init_from resume"):
        run(corpus, tmp_path, "--max_steps", "1", "--warmup_steps", "1")


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    calls = []

    def nan_on_fifth_step(self, model, inputs, targets):
        calls.append(1)
        return clm_loss(model(inputs), targets) * (float("nan") if len(calls) == 5 else 1.0)

    monkeypatch.setattr(CLM, "loss", nan_on_fifth_step)
    with pytest.raises(
        runtime.UserError, match=r"at step 5: training diverged.*ckpt.pt holds step 4"
    ):
        run(corpus, tmp_path, "--max_steps", "10", "--ckpt_interval", "2")
    assert load_checkpoint(tmp_path / "ckpt.pt")["step"] == 4


# 7. The command line, end to end ----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["gpt", "bert"])
def test_a_short_run_monitors_every_step_and_learns(corpus, tmp_path, kind, capsys):
    # what `python train.py` runs, in this process (train.py as its own process: test_reliability)
    runtime.run_program(train.main, ["--data_dir", corpus, "--out_dir", str(tmp_path), *TINY,
                                     "--model", kind, "--max_steps", "30", "--eval_interval", "15"])
    printed = capsys.readouterr()
    assert f"checkpoint: {tmp_path / 'ckpt.pt'}" in printed.err + printed.out
    records = log(tmp_path)
    assert len(records) == 30
    min_lr = {"gpt": 2e-4, "bert": 3e-4}[kind]  # TrainConfig's default; BERT's (mlm.MLM.defaults)
    schedule = train.TrainConfig(lr=3e-3, warmup_steps=2, max_steps=30, min_lr=min_lr)
    for r in records:  # what the loop monitors, every step
        assert r["grad_norm"] > 0 and r["tokens_per_s"] > 0 and r["lr"] == pytest.approx(
            train.lr_at(r["step"] - 1, schedule))
    assert records[29]["val_ppl"] == pytest.approx(math.exp(records[29]["val_loss"]))
    first, last = sum(r["loss"] for r in records[:5]) / 5, sum(r["loss"] for r in records[-5:]) / 5
    assert last < first - 1.0  # the loss falls
    assert records[14]["val_loss"] > records[29]["val_loss"]
    svg = ET.parse(tmp_path / "loss.svg").getroot()
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    if kind == "bert":  # the two curves measure different masks, and say so
        assert "train loss (30% of tokens chosen)" in texts
        assert "val loss (fixed 15% masks)" in texts
    assert load_checkpoint(tmp_path / "ckpt.pt")["train_config"]["model"] == kind


def test_an_electra_run_logs_both_parts_of_its_loss(corpus, tmp_path):
    run(corpus, tmp_path, "--model", "electra", "--max_steps", "60", "--eval_interval", "30")
    records = log(tmp_path)
    for r in records:  # L = L_MLM + λ·L_disc, λ = 50, at every step
        assert r["loss"] == pytest.approx(r["mlm_loss"] + 50 * r["disc_loss"], rel=1e-5)
    first, last = records[29], records[-1]
    assert last["val_ppl"] == pytest.approx(math.exp(last["val_mlm_loss"]))  # the generator's
    assert last["val_mlm_loss"] < first["val_mlm_loss"]
    assert last["val_loss"] == pytest.approx(last["val_mlm_loss"] + 50 * last["val_disc_loss"])


def test_profile_writes_a_trace_and_a_table_of_the_largest_operators(corpus, tmp_path, capsys):
    runtime.run_program(train.main, ["--data_dir", corpus, "--out_dir", str(tmp_path), *TINY,
                                     "--max_steps", "6", "--profile"])
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    names = [e["name"] for e in events if e.get("ph") == "X"]  # complete events: operators
    for part in ("batches", "forward and loss", "backward", "optimizer"):  # train.py's names
        assert names.count(part) == 3, part  # once in each of the three steps recorded
    assert names.count("aten::mm") + names.count("aten::addmm") >= 3 * 4  # the Linear layers
    printed = capsys.readouterr().out
    assert f"profile: 3 steps, the table above; trace: {tmp_path / 'trace.json'}" in printed
    lines = printed[printed.index("Self CPU %"):].splitlines()
    rows = lines[2:next(i for i in range(2, len(lines)) if lines[i].startswith("---"))]
    unit = {"s": 1e6, "ms": 1e3, "us": 1}

    def self_time(row):  # the Self CPU column, in microseconds
        value = re.findall(r"([\d.]+)(s|ms|us)\s", row)[0]  # (the % columns do not match)
        return float(value[0]) * unit[value[1]]

    times = [self_time(row) for row in rows]
    assert len(rows) >= 5 and times == sorted(times, reverse=True)  # the largest first
    # an operator of the trace (or the steps' own time outside operators: "ProfilerStep*")
    assert rows[0].split()[0] in {re.sub(r"#\d+$", "*", name) for name in names}
    # the next session of this run does not profile unless asked again; too short a one is refused
    runtime.run_program(train.main, ["--out_dir", str(tmp_path), "--init_from", "resume",
                                     "--max_steps", "7"])
    assert "profile:" not in capsys.readouterr().out
    with pytest.raises(runtime.ConfigError, match="--profile records steps 3 to 5 of a session, "
                                                  "which has 2 left"):
        train.main(["--out_dir", str(tmp_path), "--init_from", "resume", "--max_steps", "9",
                    "--profile"])


def printed_settings(line):
    """{name: value} of a printed settings line: --name value, --name (True), --no-name (False)."""
    found = {}
    for flag in line.split(": ", 1)[1].split(" --"):
        name, _, value = flag.removeprefix("--").partition(" ")
        found[name.removeprefix("no-")] = "False" if name.startswith("no-") else value or "True"
    return found


def test_a_run_says_which_settings_it_applied_and_where_its_loss_stands(corpus, tmp_path, capsys):
    given = ["--data_dir", corpus, "--out_dir", str(tmp_path), *TINY, "--model", "bert",
             "--max_steps", "5", "--optimizer", "adamw"]  # (--help's default, not BERT's)
    runtime.run_program(train.main, given)
    lines = capsys.readouterr().out.splitlines()
    brought = next(line for line in lines if line.startswith("settings from --model bert: "))
    typed = next(line for line in lines if line.startswith("settings from the command line: "))
    brought, typed = printed_settings(brought), printed_settings(typed)
    for name, value in MLM.defaults.items():  # each of BERT's own defaults, unless a flag said
        if f"--{name}" in given:
            assert name in typed and name not in brought
        else:
            assert brought[name] == str(value), name
    assert typed["max_steps"] == "5" and typed["model"] == "bert" and typed["optimizer"] == "adamw"
    assert typed.keys() == {flag[2:] for flag in given if flag.startswith("--")}  # each, once
    # the unigram plateau: the entropy of the train split's token frequencies, in nats
    counts = np.unique(np.fromfile(Path(corpus) / "train.bin", dtype=np.uint16),
                       return_counts=True)[1]
    p = counts / counts.sum()
    entropy = -(p * np.log(p)).sum()
    plateau = next(line for line in lines if line.startswith("plateau: "))
    assert f"against {entropy:.2f}, the loss of knowing only how often each token occurs" in plateau
    val = float(re.search(r"val loss (\d+\.\d+)", plateau)[1])
    assert val == pytest.approx(log(tmp_path)[-1]["val_loss"], abs=0.005)
    assert f"below ~{entropy - 1:.1f}" in plateau  # 5 steps: on the plateau yet
    assert not (tmp_path / "run.lock").exists()  # and a run that ended leaves no lock behind


@pytest.mark.parametrize("model, flag, value", [
    ("bert", "max_steps", 50), ("bert", "max_steps", 10), ("gpt", "max_steps", 20),
    ("gpt", "lr", 1e-4), ("bert", "lr", 2e-4)])
def test_a_default_that_does_not_fit_the_flags_given_keeps_its_share(model, flag, value, capsys):
    """--max_steps 20 with the default 30 steps of warmup, --lr 1e-4 with the default min_lr 2e-4:
    the default keeps its share of the default run (the warmup rounded to a whole step, at least
    one), and the run says so. Given on the command line, the same value is refused."""
    defaults = {name: getattr(config.TrainConfig, name) for name in ("warmup_steps", "max_steps",
                                                                       "min_lr", "lr")}
    defaults.update(objective_for(model).defaults)
    name = {"max_steps": "warmup_steps", "lr": "min_lr"}[flag]
    expected = value * defaults[name] / defaults[flag]  # BERT: 100 warmup steps of 4,200
    expected = max(1, round(expected)) if name == "warmup_steps" else expected
    _, cfg = config.fresh_configs({"model": model, flag: value})
    assert getattr(cfg, name) == pytest.approx(expected) and getattr(cfg, flag) == value
    assert f"--{name} {expected:g}: the default {defaults[name]:g} does not fit" in \
        capsys.readouterr().out
    # a default that fits is kept; a value given on the command line is kept, and checked
    assert getattr(config.fresh_configs({"model": model})[1], name) == defaults[name]
    with pytest.raises(runtime.ConfigError, match=f"--{name} "):
        config.fresh_configs({"model": model, flag: value, name: defaults[name]})


@pytest.mark.parametrize("lo, hi", [(9.78, 10.88), (4.86, 7.02), (0, 600), (0, 4200),
                                    (0.0312, 0.0329), (3.0, 3.0)])
def test_the_loss_plot_puts_its_ticks_at_round_values(lo, hi):
    found = monitor.ticks(lo, hi)
    step = found[1] - found[0]
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(math.isclose(mantissa, m) for m in (1, 2, 5))  # 1, 2 or 5 times a power of ten
    assert all(math.isclose(b - a, step) for a, b in zip(found, found[1:]))
    assert all(abs(t / step - round(t / step)) < 1e-6 for t in found)  # each a multiple of it
    assert found[0] <= lo and found[-1] >= hi and 2 <= len(found) <= 6
    if (lo, hi) == (9.78, 10.88):
        assert found == [9.5, 10.0, 10.5, 11.0]  # worked out by hand


def test_a_default_fitted_to_the_flags_is_printed_as_such(corpus, tmp_path, capsys):
    """Not as brought by --model bert (BERT's warmup is 100 steps), nor as typed."""
    i = TINY.index("--warmup_steps")
    flags = TINY[:i] + TINY[i + 2:]  # BERT's own warmup then, 100 steps, for a run of 5
    runtime.run_program(train.main, ["--data_dir", corpus, "--out_dir", str(tmp_path), *flags,
                                     "--model", "bert", "--max_steps", "5"])
    lines = capsys.readouterr().out.splitlines()
    assert "settings fitted to the flags: --warmup_steps 1" in lines
    brought = next(line for line in lines if line.startswith("settings from --model bert: "))
    assert "warmup_steps" not in printed_settings(brought)


def test_every_setting_has_a_help_text(capsys, monkeypatch):
    # no line wrapping in the help (it can split words at hyphens)
    monkeypatch.setenv("COLUMNS", "10000")
    with pytest.raises(SystemExit) as exit:
        train.parse_args(["--help"])
    shown = capsys.readouterr().out
    assert exit.value.code == 0
    for cls in (ModelConfig, train.TrainConfig):
        for f in fields(cls):  # each shown as written (a "%" too, which argparse formats)
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
            assert f.metadata["help"] in shown, f.name
