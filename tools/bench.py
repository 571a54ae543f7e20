"""
tools/bench.py: how fast is each piece, and how much memory does it take? Not a lesson: a tool
that measures the lessons. docs/performance.md explains what its rows show; docs/log.md keeps
every table it printed, with the machine.

Rows, each measured in a fresh process so that its peak memory is its own:
  * a model step (forward, backward, AdamW) of GPT and BERT, at the default size and at
    GPT-2-124M size, with the fused attention kernel (SDPA) and with explicit attention, and for
    BERT with the sparse MLM head (only the chosen positions are scored) and the dense one; and
    BERT's default step with Muon (muon.py), its default optimizer, for what Muon costs; and the
    default steps with the loss by the fused head (model.HeadLoss, train.py's --fused_head)
    instead of plain (the logits, then the objective's loss), for what fusing saves;
  * one optimizer step alone: the hand-written AdamW (adamw.py) against torch.optim.AdamW;
  * the three matrix products of the default GPT's LM head (the logits, and the gradients of the
    features and of the embedding), against a square product (2,048 x 2,048 by 2,048 x 2,048):
    how close the largest part of a step runs to what the device's matmul can do;
  * generating from a 1-token prompt with and without the KV cache: 127 new tokens (the default
    model's whole window), 256 (the window slides), and 64 at GPT-2 size;
  * cleaning a corpus (clean.py, on all cores): 200 MB of generated text with copies and near
    copies, and WikiText-2's train articles with planted copies (if data/wikitext-2 holds them);
  * memory per process of data parallel (DDP) and fully sharded (FSDP, shard.py) training with 1,
    2 and 4 CPU processes (gloo) at GPT-2-124M and -350M sizes, and of tensor parallel, FSDP x
    TP and pipeline parallel (parallel.py) at 124M with 2 and 4: the bytes of parameters,
    gradients and AdamW's moments each process holds after one step, and its peak memory;
  * tokenizers: tokens per character of GPT-2's BPE and of BPEs trained by bpe.py, and the
    seconds training takes, on English (trained on WikiText-2 train, counted on val) and, given
    --chinese DIR, on a folder of Chinese .txt files (trained and counted on all of them, and
    trained on all but the last and counted on that one).
Tokens/s counts the tokens that went through the model; MFU (model FLOPs utilisation: achieved
FLOP/s over the device's peak, PaLM appendix B) only where monitor.PEAK_FLOPS knows the device.
What a trained model knows is another tool's question: tools/collocations.py.

Run (from the repository's root):
           python tools/bench.py                        (a few minutes on a 2-core CPU)
           python tools/bench.py --only clean           (the cleaning rows only)
           python tools/bench.py --only tokenizer       (the tokenizer rows only)
           python tools/bench.py --only matmul          (the LM head's matrix products)
           python tools/bench.py --only shard           (the sharding rows only; some minutes)
           python tools/bench.py --device cuda --dtype bfloat16
Read next: docs/performance.md, what the rows show.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the lessons' folder: model.py, ...
import bpe
import clean
import data
import monitor
import parallel
import runtime
import sample
import shard
from adamw import AdamW
from checkpoint import objective_for
from config import TrainConfig
from mlm import mlm_loss
from model import EOT_ID, ModelConfig, flops_per_token, param_groups
from muon import Muon

SIZES = {  # (model config, batch size on a CPU, batch size on a GPU)
    "default": (dict(), 16, 64),  # each model's own: ModelConfig's; mlm.MLM.defaults, 8,192 ids
    "gpt2-124M": (dict(block_size=1024, n_layer=12, n_head=12, n_embd=768), 1, 8),
    "gpt2-350M": (dict(block_size=1024, n_layer=24, n_head=16, n_embd=1024), 1, 8),
}
ROWS = {  # name: what to measure
    "train gpt default sdpa": dict(task="train", model="gpt", size="default"),
    "train gpt default explicit": dict(task="train", model="gpt", size="default", explicit=True),
    "train gpt default fused-head": dict(task="train", model="gpt", size="default", fused=True),
    "train bert default sparse-head": dict(task="train", model="bert", size="default"),
    "train bert default dense-head": dict(task="train", model="bert", size="default", dense=True),
    "train bert default sparse-head muon": dict(task="train", model="bert", size="default",
                                                muon=True),
    "train bert default sparse-head muon fused-head": dict(task="train", model="bert",
                                                           size="default", muon=True, fused=True),
    "train gpt gpt2-124M sdpa": dict(task="train", model="gpt", size="gpt2-124M"),
    "train gpt gpt2-124M explicit": dict(task="train", model="gpt", size="gpt2-124M",
                                         explicit=True),
    "train bert gpt2-124M sparse-head": dict(task="train", model="bert", size="gpt2-124M"),
    "train bert gpt2-124M dense-head": dict(task="train", model="bert", size="gpt2-124M",
                                            dense=True),
    "adamw default hand": dict(task="adamw", size="default"),
    "adamw default torch": dict(task="adamw", size="default", torch_adamw=True),
    "adamw gpt2-124M hand": dict(task="adamw", size="gpt2-124M"),
    "adamw gpt2-124M torch": dict(task="adamw", size="gpt2-124M", torch_adamw=True),
    **{f"matmul {name}": dict(task="matmul", product=name)
       for name in ("head logits", "head grad features", "head grad embedding", "square 2048")},
    "generate default 127 tokens cache": dict(task="generate", size="default", new=127, cache=True),
    "generate default 127 tokens no-cache": dict(task="generate", size="default", new=127),
    "generate default 256 tokens cache": dict(task="generate", size="default", new=256, cache=True),
    "generate default 256 tokens no-cache": dict(task="generate", size="default", new=256),
    "generate gpt2-124M 64 tokens cache": dict(task="generate", size="gpt2-124M", new=64,
                                               cache=True),
    "generate gpt2-124M 64 tokens no-cache": dict(task="generate", size="gpt2-124M", new=64),
    "clean 200 MB of generated text": dict(task="clean", megabytes=200),
    "clean WikiText-2 train with planted copies": dict(task="clean", wikitext=True),
    **{f"shard {size} {how} {n}": dict(task="shard", size=size, how=how, processes=n)
       for size in ("gpt2-124M", "gpt2-350M") for how in ("ddp", "fsdp") for n in (1, 2, 4)
       if (size, how, n) != ("gpt2-350M", "ddp", 4)},  # 4 x 5.7 GB: more than 24 GB of RAM
    **{f"shard gpt2-124M {how} {n}": dict(task="shard", size="gpt2-124M", how=how, processes=n)
       for how in ("tp", "fsdp-tp", "pp") for n in (2, 4) if (how, n) != ("fsdp-tp", 2)},
    "tokenizer gpt2, English": dict(task="tokenizer", corpus="English"),
    "tokenizer bpe 2048, English": dict(task="tokenizer", corpus="English", vocab_size=2048),
    "tokenizer bpe 8192, English": dict(task="tokenizer", corpus="English", vocab_size=8192),
    "tokenizer bpe 50257, English": dict(task="tokenizer", corpus="English", vocab_size=50257),
    "tokenizer gpt2, Chinese": dict(task="tokenizer", corpus="Chinese"),
    "tokenizer bpe 2048, Chinese": dict(task="tokenizer", corpus="Chinese", vocab_size=2048),
    "tokenizer gpt2, Chinese, held-out file": dict(task="tokenizer", corpus="Chinese",
                                                   held_out=True),
    "tokenizer bpe 2048, Chinese, held-out file": dict(task="tokenizer", corpus="Chinese",
                                                       vocab_size=2048, held_out=True),
}
ENGLISH = ("data/wikitext-2/wiki.train.tokens", "data/wikitext-2/wiki.valid.tokens")  # train on,
# count on: WikiText-2 v1's files, where data.py finds them (docs/guide.md, Offline)


def timed(fn, warmup, repeats, device):
    """Seconds per call of fn: the median of `repeats` timed calls, after warmup calls (first calls
    pay for allocation and autotuning). The median, not the mean: on a shared machine a
    neighbour's burst slows a call or two, and one slow call should not move the figure."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(row, device):
    """(the row's model on the device, its objective, the batch size for this device)."""
    config, cpu_batch, gpu_batch = SIZES[row["size"]]
    objective = objective_for(row.get("model", "gpt"))
    starts_from = {k: v for k, v in objective.defaults.items()  # BERT's RoPE, LayerNorm, width
                   if k in ModelConfig.__dataclass_fields__}
    ids = objective.defaults.get("tokenizer_size")  # BERT's own tokenizer, [MASK] its last id
    if ids and row["size"] == "default":
        starts_from["vocab_size"] = ids
        objective = objective_for(row["model"], eot_id=ids - 2)
    config = ModelConfig(**{**starts_from, **config}, explicit_attention=row.get("explicit", False))
    torch.manual_seed(0)
    model = objective.Model(config).to(device)
    return model, objective, cpu_batch if device.type == "cpu" else gpu_batch


def bench_train(row, device, dtype):
    """One model step: forward and loss under autocast, backward, AdamW (or Muon). The loss
    plain (the logits, then clm_loss or mlm_loss), or by the fused head (model.HeadLoss)."""
    model, objective, B = build(row, device)
    objective = dataclasses.replace(objective, fused=row.get("fused", False))
    T = model.config.block_size
    muon = row.get("muon", False)
    optimizer = (Muon if muon else AdamW)(param_groups(model, 0.1, muon=muon), lr=1e-4)
    autocast = runtime.autocast(device, dtype)
    g = torch.Generator().manual_seed(0)
    ordinary = getattr(objective, "eot_id", EOT_ID)  # the ids below <|endoftext|>
    inputs, targets = objective.train_batch(torch.randint(0, ordinary, (B, T), generator=g), g)
    inputs, targets = inputs.to(device), targets.to(device)
    dense = row.get("dense")  # BERT's head on every position, the loss on the chosen ones only

    def step():
        with autocast:
            if dense:
                loss = mlm_loss(model(inputs), targets)
            else:
                loss = objective.loss(model, inputs, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    seconds = timed(step, 3, 5 if row["size"] == "default" else 3, device)
    tokens_per_s = B * T / seconds
    peak = monitor.peak_flops(device, dtype)
    flops = flops_per_token(model, T, 1.0 if dense else objective.head_fraction)
    return {"tokens/s": tokens_per_s, "ms/step": 1000 * seconds,
            "MFU": flops * tokens_per_s / peak if peak else None}


def bench_adamw(row, device, dtype):
    model, _, _ = build(row, device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    groups = param_groups(model, 0.1)
    optimizer = (torch.optim.AdamW if row.get("torch_adamw") else AdamW)(groups, lr=1e-4)
    return {"ms/step": 1000 * timed(optimizer.step, 3, 30, device)}


def bench_matmul(row, device, dtype):
    """One matrix product of the default GPT's head, as HeadLoss computes it for a step's
    N = 16 x 128 rows (x: the features, w: the tied embedding, p: softmax minus one-hot), or a
    square one: milliseconds and GFLOP/s. The outputs' memory is reused from the warm-up calls,
    as in training (runtime.keep_freed_memory)."""
    N, C, V = 16 * 128, 256, 50304
    product, left, right, flops = {  # FLOPs: a multiply and an add per term of each sum
        "head logits": (lambda x, w: x @ w.T, (N, C), (V, C), 2 * N * C * V),  # (N, V)
        "head grad features": (lambda p, w: p @ w, (N, V), (V, C), 2 * N * C * V),  # (N, C)
        "head grad embedding": (lambda p, x: p.T @ x, (N, V), (N, C), 2 * N * C * V),  # (V, C)
        "square 2048": (lambda a, b: a @ b, (2048, 2048), (2048, 2048), 2 * 2048**3),
    }[row["product"]]
    a, b = torch.randn(left, device=device), torch.randn(right, device=device)
    with runtime.autocast(device, dtype):
        seconds = timed(lambda: product(a, b), 3, 7, device)
    return {"ms": 1000 * seconds, "GFLOP/s": flops / seconds / 1e9}


def bench_generate(row, device, dtype):
    model, _, _ = build(row, device)
    model.eval()
    new = row["new"]
    prompt = torch.tensor([[EOT_ID]], device=device)  # 1 token, as GPT-2's unconditional samples

    def run():
        generator = torch.Generator(device).manual_seed(0)
        sample.generate(model, prompt, new, generator=generator, use_cache=row.get("cache", False))

    with runtime.autocast(device, dtype):
        seconds = timed(run, 1, 3 if row["size"] == "default" and row.get("cache") else 1, device)
    return {"tokens/s": new / seconds, "ms/step": 1000 * seconds / new}


def generated_corpus(path, megabytes, seed=0):
    """Documents of ordinary-looking sentences (Zipf-distributed words), separated by lines of
    <|endoftext|>; one in 20 an exact copy of an earlier one, one in 20 a copy with 1% of its
    words changed. Returns the number of documents."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}o" * (1 + i % 3) for i in range(20_000)])  # words of 3 to 12 letters
    p = 1 / np.arange(1, len(vocab) + 1)
    n, docs = 0, []
    with open(path, "w", encoding="utf-8") as f:
        while f.tell() < megabytes * 2**20:
            if docs and rng.random() < 0.1:  # a copy, half of them changed a little
                words = list(docs[rng.integers(len(docs))])
                if rng.random() < 0.5:
                    for i in rng.integers(0, len(words), len(words) // 100):
                        words[i] = "changed"
            else:
                words = list(vocab[rng.choice(len(vocab), rng.integers(300, 3000), p=p / p.sum())])
                docs = (docs + [words])[-1000:]  # copies come from the last 1,000 documents
            sentences = [" ".join(words[i:i + 12]).capitalize() + "."
                         for i in range(0, len(words), 12)]
            f.write("\n".join(" ".join(sentences[i:i + 4]) for i in range(0, len(sentences), 4)))
            f.write("\n<|endoftext|>\n")
            n += 1
    return n


def wikitext_corpus(path, seed=0):
    """WikiText-2's train articles (data/wikitext-2/wiki.train.tokens), roughly detokenized
    (" , " to ", " and so on: exercise 8 does it properly), then 60 exact copies of articles,
    60 copies with 1% of their words changed and 60 with 2%, each placed after a random article
    (so a copy may come before its original: then the original is the one dropped)."""
    source = Path("data/wikitext-2/wiki.train.tokens")
    if not source.exists():
        raise FileNotFoundError(f"{source}: put WikiText-2 v1 there first (docs/guide.md, "
                                f"Offline)")
    with open(source, encoding="utf-8") as f:
        articles = [a for a in data.wikitext_documents(f) if a.strip()]
    for marked, plain in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" , ", ", "),
                          (" . ", ". "), (" ; ", "; "), (" : ", ": "), (" 's ", "'s ")):
        articles = [a.replace(marked, plain) for a in articles]
    rng = np.random.default_rng(seed)
    copies = {}
    for n, share in enumerate((0.0,) * 60 + (0.01,) * 60 + (0.02,) * 60):
        words = articles[int(rng.integers(len(articles)))].split(" ")
        for i in rng.choice(len(words), round(share * len(words)), replace=False):
            words[i] = "changed"
        copies.setdefault(int(rng.integers(len(articles))), []).append(" ".join(words))
    with open(path, "w", encoding="utf-8") as f:
        for i, article in enumerate(articles):
            for doc in [article, *copies.get(i, [])]:
                f.write(doc.strip() + "\n<|endoftext|>\n")


def bench_clean(row, device, dtype):
    """clean.py over a corpus written for the row, on all cores: MB/s and what was kept."""
    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/corpus.txt"
        if row.get("wikitext"):
            wikitext_corpus(path)
        else:
            generated_corpus(path, row["megabytes"])
        cleaner = clean.Cleaner()
        start = time.perf_counter()
        for _ in clean.clean_all(clean.documents(path), cleaner):
            pass
        seconds = time.perf_counter() - start
    report = cleaner.report
    removed = {rule: entry.get("documents", entry.get("lines"))
               for rule, entry in report["rules"].items()}
    return {"MB/s": report["characters"] / 2**20 / seconds, "documents": report["documents"],
            "kept": report["kept_documents"], "removed": removed}


def bench_tokenizer(row, device, dtype):
    """Tokens per character of GPT-2's BPE, or of one bpe.py trains (and how long that takes;
    ids: fewer than asked for where the text runs out of pairs to merge)."""
    train_path, count_path = ENGLISH if row["corpus"] == "English" else (row["chinese"],) * 2
    if row.get("held_out"):  # the last file is counted, the others trained on
        *train_files, count_file = sorted(Path(train_path).glob("*.txt"))
        train_text, count_text = "".join(map(read_text, train_files)), read_text(count_file)
    else:
        train_text, count_text = read_text(train_path), read_text(count_path)
    start = time.perf_counter()
    enc = data.tokenizer() if "vocab_size" not in row else \
        bpe.encoding(bpe.train(bpe.count_chunks([train_text]), row["vocab_size"]))
    seconds = time.perf_counter() - start
    tokens = len(enc.encode_ordinary(count_text))
    return {"ids": enc.n_vocab, "characters": len(count_text), "tokens": tokens,
            "tokens/char": tokens / len(count_text),
            "training (s)": seconds if "vocab_size" in row else None}


def read_text(path):
    """A text file, or the .txt files of a folder joined."""
    path = Path(path)
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if not files or not path.exists():
        raise FileNotFoundError(f"{path}: no text there (docs/guide.md, Tokenizers)")
    return "".join(f.read_text(encoding="utf-8") for f in files)


def bench_shard(row, device, dtype):
    """One training step in row["processes"] CPU processes, of 128-token rows, one per process
    (the global batch): data parallel (DDP), sharded (FSDP), tensor parallel (all the rows in
    every process of a group), FSDP x TP (2 x 2), pipeline (the rows as micro-batches, one per
    stage): the largest of their bytes held and peak memories."""
    with tempfile.TemporaryDirectory() as folder:
        with socket.socket() as s:  # a free port for the processes to meet at
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        torch.multiprocessing.spawn(shard_worker, args=(row, port, folder), nprocs=row["processes"])
        results = [json.loads(p.read_text()) for p in Path(folder).glob("*.json")]
    return {f"{key} (MB)": max(r[key] for r in results) / 2**20 for key in results[0]}


def shard_worker(rank, row, port, folder):
    world, how, cpu = row["processes"], row["how"], torch.device("cpu")
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                         rank=rank, world_size=world)
    torch.set_num_threads(1)
    model, objective, _ = build(row, cpu)
    if how == "ddp":
        trained, held = torch.nn.parallel.DistributedDataParallel(model), model
    else:
        cfg = TrainConfig(fsdp=how.startswith("fsdp"), tp={"tp": world, "fsdp-tp": 2}.get(how, 1),
                          pp=world if how == "pp" else 1, grad_accum_steps=world)
        trained, _ = parallel.setup(model, cfg, cpu, torch.float32, objective)
        held = parallel.held(trained)
    optimizer = AdamW(param_groups(held, 0.1), lr=1e-4)
    rows = world // runtime.data_rank_and_world()[1]  # this process's share of the rows
    batch = objective.train_batch(torch.randint(0, EOT_ID, (rows, 128)), torch.Generator())
    if how == "pp":
        trained.train_step(list(zip(*(x.split(1) for x in batch))), contextlib.nullcontext())
    else:
        objective.loss(trained, *batch).backward()
    optimizer.step()
    held = shard.bytes_held(held, optimizer)
    held["peak memory"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KB
    Path(folder, f"{rank}.json").write_text(json.dumps(held))
    torch.distributed.destroy_process_group()
    os._exit(0)  # (DTensor's threads sometimes abort an ordinary exit)


def measure(name, device, dtype, chinese=None):
    row = dict(ROWS[name], chinese=chinese)
    task = {"train": bench_train, "adamw": bench_adamw, "matmul": bench_matmul,
            "generate": bench_generate, "clean": bench_clean, "tokenizer": bench_tokenizer,
            "shard": bench_shard}[row["task"]]
    result = task(row, device, dtype)
    if device.type == "cuda":
        result["peak memory (MB)"] = torch.cuda.max_memory_allocated() / 2**20
    else:  # the peak resident memory of this process, or of its largest child (Linux: KB)
        result["peak memory (MB)"] = max(resource.getrusage(who).ru_maxrss / 1024 for who in
                                         (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return result


def main(argv=None):
    parser = runtime.Parser(prog="tools/bench.py", description="Measure training, optimizer "
                                                               "and generation speed.")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"),
                        default="auto")
    parser.add_argument("--only", default="", help="run the rows whose name contains this text")
    parser.add_argument("--chinese", metavar="DIR", default=None,
                        help="a folder of Chinese .txt files, for the Chinese tokenizer rows")
    parser.add_argument("--row", default=None, help=argparse.SUPPRESS)  # internal: one row here
    args = parser.parse_args(argv)
    device = runtime.pick_device(args.device)
    dtype = runtime.pick_dtype(args.dtype, device)
    if device == "cpu":
        runtime.keep_freed_memory()
    if args.row:  # the child process: measure, print one JSON line
        print(json.dumps(measure(args.row, torch.device(device), dtype, args.chinese)))
        return
    threads = f"{device}, {torch.get_num_threads()} threads"
    name = torch.cuda.get_device_name() if device == "cuda" else threads
    print(f"device: {name}; dtype: {str(dtype).removeprefix('torch.')}; "
          f"torch {torch.__version__}")
    chosen = [row for row in ROWS if args.only in row]
    if not args.chinese and any("Chinese" in row for row in chosen):
        print("(the Chinese tokenizer rows need --chinese DIR, a folder of Chinese .txt files)")
        chosen = [row for row in chosen if "Chinese" not in row]
    results = {}
    for columns, tasks in ((("tokens/s", "ms/step", "MFU", "peak memory (MB)"),
                            ("train", "adamw", "generate")),
                           (("ms", "GFLOP/s", "peak memory (MB)"), ("matmul",)),
                           (("MB/s", "documents", "kept", "peak memory (MB)"), ("clean",)),
                           (("ids", "characters", "tokens", "tokens/char", "training (s)",
                             "peak memory (MB)"), ("tokenizer",)),
                           (("parameters (MB)", "gradients (MB)", "optimizer (MB)",
                             "peak memory (MB)"), ("shard",))):
        rows = [r for r in chosen if ROWS[r]["task"] in tasks]
        if rows:  # one table per kind of row, with the columns that kind measures
            print(f"\n| row | {' | '.join(columns)} |\n| --- |" + " ---: |" * len(columns))
            results |= {row: print_row(row, args, columns) for row in rows}
    for row, r in results.items():
        if r and "removed" in r:
            print(f"\n{row}, removed: " + ", ".join(f"{k} {v:,}" for k, v in r["removed"].items()))


def print_row(row, args, columns):
    """Measure one row in a child process, print it as a line of a Markdown table, return it."""
    chinese = ["--chinese", args.chinese] if args.chinese else []
    out = subprocess.run([sys.executable, __file__, "--row", row, "--device", args.device,
                          "--dtype", args.dtype, *chinese], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"| {row} | failed: {out.stderr.strip().splitlines()[-1]} |" + " |" * 3, flush=True)
        return None
    r = json.loads(out.stdout.strip().splitlines()[-1])
    formats = {"MFU": ".1%", "ms/step": ",.1f", "ms": ",.1f", "MB/s": ",.1f",
               "tokens/char": ".3f", "training (s)": ",.1f"}
    cells = ["" if r.get(c) is None else format(r[c], formats.get(c, ",.0f")) for c in columns]
    print(f"| {row} | {' | '.join(cells)} |", flush=True)
    return r


if __name__ == "__main__":
    runtime.run_program(main)
