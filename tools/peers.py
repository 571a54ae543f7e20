"""
tools/peers.py: this project's GPT timed against nanoGPT's and Hugging Face's, side by side. Not a
lesson and not part of the runtime: it needs, in a scratch virtual environment, `transformers`
and a checkout of nanoGPT (github.com/karpathy/nanoGPT). docs/performance.md says what it found;
docs/log.md keeps every table it printed.

  python -m venv /tmp/peers && /tmp/peers/bin/pip install torch==2.13.0 numpy tiktoken tqdm \
      transformers
  git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT
  /tmp/peers/bin/python tools/peers.py --nanogpt /tmp/nanoGPT                       (the model step)
  /tmp/peers/bin/python tools/peers.py --nanogpt /tmp/nanoGPT --e2e data/wikitext-2 (whole programs)

Every model is the default GPT's size: 4 layers, 4 heads, 256 wide, block 128, batch 16, float32.
The model step: forward, loss, backward and torch.optim.AdamW (the same optimizer for all three),
on the same random batches, in one process, in interleaved rounds (ours, nanoGPT, HF, ours, ...),
so that a busy moment of the machine slows all of them alike; the median of each round's ratio.
End to end: `python train.py`, nanoGPT's train.py and a typical Hugging Face training script
(GPT2LMHeadModel, a DataLoader, torch's AdamW at lr 5e-5, a linear schedule with 100 warmup steps,
clipping at 1.0), each a process of its own on the same prepared train.bin, with the same model,
batch and float32; the median step time after warm-up, read from each program's own log.
"""

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]  # the lessons' folder: model.py, train.py, ...
sys.path.insert(0, str(ROOT))
V, B, T = 50304, 16, 128  # our padded vocabulary, the default GPT's batch and block
MODEL = dict(n_layer=4, n_head=4, n_embd=256)  # the default GPT's size


def systems(nanogpt):
    """{name: (model, step_loss(batch (B, T + 1)) -> loss)}: every model reads the same T tokens."""
    import clm
    import model
    from transformers import GPT2Config, GPT2LMHeadModel
    ours = model.GPT(model.ModelConfig(vocab_size=V, block_size=T, **MODEL))
    spec = importlib.util.spec_from_file_location("nanogpt_model", f"{nanogpt}/model.py")
    nano_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nano_module)
    nano = nano_module.GPT(nano_module.GPTConfig(block_size=T, vocab_size=V, dropout=0.0,
                                                 bias=True, **MODEL))
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=T, resid_pdrop=0, embd_pdrop=0,
                                    attn_pdrop=0, **MODEL))
    return {"ours": (ours, lambda d: clm.CLM().loss(ours, *clm.CLM().train_batch(d[:, :T]))),
            "nanoGPT": (nano, lambda d: nano(d[:, :T].contiguous(), d[:, 1:].contiguous())[1]),
            "HF": (hf, lambda d: hf(input_ids=d[:, :T], labels=d[:, :T]).loss)}


def model_step(args):
    """Tokens/s of each model step, round by round."""
    import runtime
    runtime.keep_freed_memory()  # one process: the same allocator for all three
    torch.manual_seed(0)
    models = systems(args.nanogpt)
    batches = torch.randint(0, 50257, (args.steps, B, T + 1))
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4)
                  for name, (m, _) in models.items()}
    speeds = {name: [] for name in models}
    for round_ in range(args.rounds + 1):  # round 0 warms up (allocations, kernel choices)
        for name, (m, loss_of) in models.items():
            start = time.perf_counter()
            for d in batches:
                loss = loss_of(d)
                optimizers[name].zero_grad(set_to_none=True)
                loss.backward()
                optimizers[name].step()
            if round_:
                speeds[name].append(B * T * args.steps / (time.perf_counter() - start))
    return speeds


HF_SCRIPT = '''
import json, sys, time
import numpy as np, torch
from transformers import GPT2Config, GPT2LMHeadModel, get_linear_schedule_with_warmup
data_dir, steps, dropout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
tokens = np.memmap(f"{data_dir}/train.bin", dtype=np.uint16, mode="r")
blocks = torch.from_numpy(tokens[: len(tokens) // 128 * 128].astype(np.int64)).view(-1, 128)
loader = torch.utils.data.DataLoader(blocks, batch_size=16, shuffle=True)
config = GPT2Config(n_embd=256, n_layer=4, n_head=4, vocab_size=50257, resid_pdrop=dropout,
                    embd_pdrop=dropout, attn_pdrop=dropout)
model = GPT2LMHeadModel(config)
optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
scheduler = get_linear_schedule_with_warmup(optimizer, 100, steps)
model.train()
for step, input_ids in zip(range(steps), loader):
    start = time.perf_counter()
    loss = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                 labels=input_ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    print(json.dumps({"step": step, "seconds": time.perf_counter() - start, "loss": loss.item()}))
'''


def ours(args, out):
    subprocess.run([sys.executable, ROOT / "train.py", "--data_dir", args.e2e, "--out_dir", out,
                    "--max_steps", str(args.steps_e2e), "--warmup_steps", "4", "--eval_interval",
                    "100000", "--eval_iters", "1", "--ckpt_interval", "100000", "--device", "cpu",
                    "--dtype", "float32"], check=True, capture_output=True)
    return [B * T / json.loads(line)["tokens_per_s"] for line in open(f"{out}/log.jsonl")]


def nanogpt(args, out):
    os.makedirs(f"{out}/data")
    for name in ("train.py", "model.py", "configurator.py"):
        with open(f"{args.nanogpt}/{name}") as src, open(f"{out}/{name}", "w") as dst:
            dst.write(src.read())
    os.symlink(os.path.abspath(args.e2e), f"{out}/data/ours")
    steps = args.steps_e2e
    run = subprocess.run([sys.executable, "train.py", "--dataset=ours", "--device=cpu",
                          "--compile=False", "--dtype=float32", "--batch_size=16",
                          "--block_size=128", "--n_layer=4", "--n_head=4", "--n_embd=256",
                          "--bias=True", "--dropout=0.0", "--gradient_accumulation_steps=1",
                          f"--max_iters={steps}", f"--lr_decay_iters={steps}", "--warmup_iters=4",
                          "--learning_rate=2e-3", "--eval_interval=100000", "--eval_iters=1",
                          "--log_interval=1", "--always_save_checkpoint=False",
                          f"--out_dir={out}/out"], cwd=out, check=True, capture_output=True,
                         text=True)
    return [float(ms) / 1000 for ms in
            re.findall(r"iter \d+: loss [\d.]+, time ([\d.]+)ms", run.stdout)]


def hf_script(dropout):
    def program(args, out):
        run = subprocess.run([sys.executable, "-c", HF_SCRIPT, args.e2e, str(args.steps_e2e),
                              dropout], check=True, capture_output=True, text=True)
        return [json.loads(line)["seconds"] for line in run.stdout.splitlines()]
    return program


def end_to_end(args):
    """{program: [tokens/s of each round]}, each the median step after the first 5 steps."""
    programs = {"ours": ours, "nanoGPT": nanogpt, "HF script, dropout 0.1": hf_script("0.1"),
                "HF script, dropout 0.0": hf_script("0.0")}  # as written (HF's default), and off
    speeds = {name: [] for name in programs}
    for _ in range(args.rounds_e2e):  # interleaved: a busy moment slows every program alike
        for name, program in programs.items():
            seconds = program(args, tempfile.mkdtemp())
            speeds[name].append(B * T / statistics.median(seconds[5:]))
    return speeds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt", required=True, help="a checkout of karpathy/nanoGPT")
    parser.add_argument("--e2e", metavar="DATA_DIR", help="whole programs on this prepared folder")
    parser.add_argument("--steps", type=int, default=3, help="model steps per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps_e2e", type=int, default=40, help="steps of each whole program")
    parser.add_argument("--rounds_e2e", type=int, default=3, help="runs of each whole program")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32")
    speeds = end_to_end(args) if args.e2e else model_step(args)
    for name, s in speeds.items():
        ratios = [a / b for a, b in zip(speeds["ours"], s)]
        print(f"{name:24} {statistics.median(s):8,.0f} tokens/s   ours / it: "
              f"{statistics.median(ratios):.2f}x   rounds: {', '.join(f'{x:,.0f}' for x in s)}")


if __name__ == "__main__":
    main()
