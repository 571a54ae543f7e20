"""
finetune.py: what pretraining buys. A pretrained encoder (a BERT, ELECTRA's discriminator, T5's
encoder or an XLNet, whose content stream reads both ways when no order is given) gets a
classification head and is trained on a task it never saw; so does the same encoder with fresh
weights. The difference in accuracy is what pretraining taught.

The task: acceptability. Is a sentence as its writer wrote it (label 1), or were two neighbouring
words swapped (label 0: "the was film released")? It is built mechanically from WikiText-2's val and
test splits (`make_task`), which no model here trains on: each sentence of 8 to 40 words appears
once, swapped or not by a coin flip, two neighbouring words of letters that differ (WikiText's
<unk>, a rare word it hid, is a word like any other, never one of the two swapped). Articles, not
sentences, are split between train (four in five) and dev (the fifth), so that no article is in
both and a model cannot pass dev by recognising a text it fine-tuned on. Why this task: its answer
is in one short sentence (no discourse, which models of a few million weights hardly learn), so a
pretraining of minutes can show a difference; and it is not ELECTRA's own task, which judges
each token of a text with *sampled* replacements and never sees a label for a whole sentence. It
is close to it, though (a swap puts two tokens where they do not fit): docs/log.md reports the
comparison with that in mind. ALBERT's sentence-order prediction, the other candidate, asks
whether two sentences are in order: discourse again.

The model (`Classifier`): the encoder's features averaged over the sentence's tokens (our encoders
were pretrained without a [CLS] token, whose features BERT's head reads), then dropout and a linear
layer with two outputs. Fine-tuning uses the hand-written AdamW and train.py's schedule (warmup
over the first 10% of steps, then linear decay to 0), with the settings ELECTRA's paper uses for
its small models (Clark et al. 2020, appendix B: learning rate 3e-4, batch 32, 3 epochs, no weight
decay; without its layer-wise learning-rate decay).

Run:
    python finetune.py --ckpt out-bert/ckpt.pt --out_dir out-ft-bert
    python finetune.py --ckpt out-electra/ckpt.pt --out_dir out-ft-electra
    python finetune.py --ckpt out-bert/ckpt.pt --scratch --out_dir out-ft-scratch   no pretraining
    python finetune.py --out_dir out-ft-bert --init_from resume

Read next: sample.py, using what you trained.
"""

import argparse
import json
import math
import random
import re
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

if __name__ == "__main__":  # Ctrl-C while torch loads ends quietly too (then: run_program)
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import data
import runtime
from adamw import AdamW
from checkpoint import CheckpointError, load_checkpoint, lock, rng_state, save_checkpoint
from checkpoint import load_model, objective_for, read_file, set_rng_state
from model import ModelConfig, param_groups
from train import lr_at

TASK_DIR = "data/acceptability"
WORDS = (8, 40)  # sentences of this many words: enough to judge, short enough for one block
SETTINGS = {"lr": 3e-4, "batch_size": 32, "epochs": 3, "seed": 1}  # ELECTRA's for small models


# The task ----------------------------------------------------------------------------------------

def articles(path):
    """The articles of a WikiText file: lists of sentences, each a list of words. An article
    starts at a top heading (" = Title = "); sentences end at " . "."""
    found = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if re.fullmatch(r" = [^=].* = ", line):
            found.append([])
        elif found and line.strip() and not line.startswith(" = "):
            for sentence in re.split(r"(?<= \.) ", line.strip()):
                found[-1].append(sentence.split())
    return found


def swap_neighbours(words, rng):
    """The words with two neighbours of letters that differ swapped, or None if there are none."""
    pairs = [i for i in range(len(words) - 1) if words[i].isalpha() and words[i + 1].isalpha()
             and words[i] != words[i + 1]]
    if not pairs:
        return None
    i = rng.choice(pairs)
    return words[:i] + [words[i + 1], words[i]] + words[i + 2:]


def make_task(wikitext_dir, task_dir, seed=0):
    """train.jsonl and dev.jsonl in task_dir, from WikiText-2's val and test splits: one example
    {"text", "label", "article"} per sentence of WORDS words, label 0 for a swapped one."""
    rng, examples = random.Random(seed), []
    for split in ("valid", "test"):
        path = Path(wikitext_dir) / f"wiki.{split}.tokens"
        if not path.exists():
            raise runtime.UserError(f"{path} is missing: run python data.py first (it fetches "
                                    f"WikiText-2), or give --wikitext the folder that holds it")
        for article in articles(path):
            n = len({e["article"] for e in examples})
            for words in article:
                swapped = swap_neighbours(words, rng) if rng.random() < 0.5 else None
                if WORDS[0] <= len(words) <= WORDS[1]:
                    text = " " + " ".join(swapped or words)  # as a WikiText line: a space first
                    examples.append({"text": text, "label": int(swapped is None), "article": n})
    task_dir = runtime.make_folder(task_dir, "task")
    for name, fifth in (("train", False), ("dev", True)):
        rows = [e for e in examples if (e["article"] % 5 == 4) == fifth]
        (task_dir / f"{name}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in rows))


def read_task(task_dir, name):
    """[(text, label)] of task_dir/name.jsonl; a line that is not an example is refused."""
    path = Path(task_dir) / f"{name}.jsonl"
    if not path.is_file():
        raise runtime.UserError(f"--task {task_dir}: it holds no {name}.jsonl; give a folder of "
                                f"train.jsonl and dev.jsonl, or leave --task out")
    examples = []
    try:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            example = json.loads(line)
            if not isinstance(example, dict) or not isinstance(example.get("text"), str) or \
                    example.get("label") not in (0, 1):
                raise ValueError(f"line {number} is not {{\"text\": ..., \"label\": 0 or 1}}")
            examples.append((example["text"], example["label"]))
    except (ValueError, UnicodeDecodeError) as e:  # json's errors are ValueErrors
        raise runtime.UserError(f"--task {task_dir}: {path.name}: {str(e).splitlines()[0]}; "
                                f"give a folder of such files, or leave --task out") from None
    if not examples:
        raise runtime.UserError(f"--task {task_dir}: {path.name} holds no example")
    return examples


def encode(examples, enc, block_size):
    """(ids (N, T), real (N, T): True at the text's tokens, labels (N,)), T the longest text's
    length (at most block_size: longer texts keep their start)."""
    rows = [enc.encode_ordinary(text)[:block_size] for text, _ in examples]
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), enc.eot_token)  # padding, never attended to
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
    return ids, ids != enc.eot_token, torch.tensor([label for _, label in examples])


# The model ---------------------------------------------------------------------------------------

class Classifier(nn.Module):
    """An encoder (model.Transformer), its features averaged over the real tokens, dropout, and a
    linear layer scoring the two classes."""

    def __init__(self, transformer, classes=2, dropout=0.1):
        super().__init__()
        self.config, self.transformer = transformer.config, transformer
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(transformer.config.n_embd, classes)
        nn.init.normal_(self.head.weight, std=0.02)  # as every other layer starts (model.py)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx, real):
        x = self.transformer(idx, key_mask=real)  # (B, T, C)
        pooled = (x * real[..., None]).sum(1) / real.sum(1, keepdim=True)  # (B, C)
        return self.head(self.dropout(pooled))  # (B, classes)


def encoder(checkpoint, scratch):
    """The checkpoint's encoder, pretrained or (scratch) as it was before pretraining: the same
    architecture with fresh weights. A GPT is refused: its attention looks left only."""
    kind = checkpoint["train_config"]["model"]
    if kind == "gpt":
        raise CheckpointError("this checkpoint is a GPT, which reads left to right; finetune.py "
                              "fine-tunes an encoder: give the --ckpt of a --model bert, "
                              "electra, t5 or xlnet run")
    if scratch:  # (drawn from the seed finetune.run set)
        return objective_for(kind).Model(ModelConfig(**checkpoint["model_config"])).transformer
    return load_model(checkpoint)[0].transformer  # (ELECTRA's generator, T5's decoder: left)


# Fine-tuning -------------------------------------------------------------------------------------

def accuracy(model, ids, real, labels, batch_size, autocast):
    """The share of examples whose larger score is the right class."""
    model.eval()
    right = 0
    with torch.no_grad(), autocast:
        for s in range(0, len(ids), batch_size):
            rows = slice(s, s + batch_size)
            T = real[rows].sum(1).max()  # the longest text of these rows
            logits = model(ids[rows, :T], real[rows, :T])  # (rows, classes)
            right += (logits.argmax(-1) == labels[rows]).sum().item()
    model.train()
    return right / len(ids)


def fine_tune(model, optimizer, state, train_set, dev_set, settings, out_dir, autocast):
    """Epochs of shuffled batches (the order of epoch e seeded by seed + e, so that a resumed run
    draws it again), the dev accuracy after each, a checkpoint after each and at --stop_at."""
    ids, real, labels = train_set
    per_epoch = math.ceil(len(ids) / settings["batch_size"])
    total = per_epoch * settings["epochs"]
    schedule = SimpleNamespace(lr=settings["lr"], min_lr=0.0, warmup_steps=total // 10,
                               max_steps=total, decay="linear")
    stop = settings["stop_at"] or total
    bar = tqdm(total=stop, initial=state["step"], desc="fine-tuning", unit="step", disable=None)
    while state["step"] < stop:
        epoch, i = divmod(state["step"], per_epoch)
        order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(
            settings["seed"] + epoch))
        batch = order[i * settings["batch_size"]:(i + 1) * settings["batch_size"]]
        T = real[batch].sum(1).max()  # the batch's longest text: no step over padding only
        for group in optimizer.param_groups:
            group["lr"] = lr_at(state["step"], schedule)
        with autocast:
            loss = F.cross_entropy(model(ids[batch, :T], real[batch, :T]).float(), labels[batch])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        state["step"] += 1
        bar.update(1)
        if state["step"] % per_epoch == 0 or state["step"] == stop:
            record = {"step": state["step"], "epoch": state["step"] / per_epoch,
                      "loss": loss.item(), "dev_accuracy": accuracy(model, *dev_set, 64,
                                                                     autocast)}
            with open(out_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            runtime.say(f"epoch {record['epoch']:.2f}: loss {record['loss']:.4f} (the last "
                        f"batch's), dev accuracy {record['dev_accuracy']:.4f}")
            state["dev_accuracy"] = record["dev_accuracy"]
            save_checkpoint(out_dir / "ckpt.pt", {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), **state,
                "settings": settings, "rng": rng_state(torch.Generator())})
    bar.close()


def main(argv=None):
    given = parse_args(argv)
    out_dir = runtime.make_folder(given.get("out_dir", DEFAULTS["out_dir"]), "out_dir")
    with lock(out_dir):
        path, saved = out_dir / "ckpt.pt", None
        if given.get("init_from") == "resume":
            saved = load_checkpoint_of(path)
            settings = {**saved["settings"], "stop_at": 0, **given}  # given: this session's
        elif path.exists():
            raise CheckpointError(f"{path} exists: continue it with --init_from resume, or "
                                  f"fine-tune into another --out_dir")
        else:
            settings = {**DEFAULTS, **given}
        if "task" not in given and not Path(settings["task"], "train.jsonl").exists():
            make_task(settings["wikitext"], settings["task"])
            runtime.say(f"task: made {settings['task']}/train.jsonl and dev.jsonl")
        run(settings, saved, out_dir)


def load_checkpoint_of(path):
    """A fine-tuning checkpoint, or one line that says why this is none."""
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: fine-tune first (without --init_from "
                              f"resume)")
    saved = read_file(path)
    if not isinstance(saved, dict) or "settings" not in saved:
        raise CheckpointError(f"{path} is not a checkpoint written by finetune.py")
    return saved


def run(settings, saved, out_dir):
    """Build the classifier and the data (or restore them from `saved`), then fine-tune."""
    pretrained = load_checkpoint(settings["ckpt"])
    enc = data.tokenizer(pretrained.get("tokenizer"))
    torch.manual_seed(settings["seed"])  # fresh weights (the head; a scratch encoder), dropout
    model = Classifier(encoder(pretrained, settings["scratch"]))
    device = torch.device(runtime.pick_device(settings["device"]))
    autocast = runtime.autocast(device, runtime.pick_dtype(settings["dtype"], device.type))
    train_set, dev_set = (
        [t.to(device) for t in encode(read_task(settings["task"], name), enc,
                                      model.config.block_size)] for name in ("train", "dev"))
    model.to(device)
    optimizer = AdamW(param_groups(model, 0.0), lr=settings["lr"], betas=(0.9, 0.999), eps=1e-6)
    state = {"step": 0}
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        set_rng_state(saved["rng"], torch.Generator())
        state.update(step=saved["step"], dev_accuracy=saved.get("dev_accuracy", math.nan))
    what = "from scratch" if settings["scratch"] else "pretrained"
    runtime.say(f"fine-tuning the encoder of {settings['ckpt']} ({what}) on {settings['task']}: "
                f"{len(train_set[0]):,} train and {len(dev_set[0]):,} dev examples")
    fine_tune(model, optimizer, state, train_set, dev_set, settings, out_dir, autocast)
    runtime.say(f"done: dev accuracy {state.get('dev_accuracy', math.nan):.4f} at step "
                f"{state['step']}\ncheckpoint: {out_dir / 'ckpt.pt'}\nlog: {out_dir / 'log.jsonl'}")


DEFAULTS = {"ckpt": "out-bert/ckpt.pt", "scratch": False, "task": TASK_DIR,
            "wikitext": data.WIKITEXT_DIR, "out_dir": "out-finetune", "init_from": "scratch",
            "stop_at": 0, "device": "auto", "dtype": "auto", **SETTINGS}
SESSION = {"out_dir", "init_from", "stop_at", "device", "dtype"}  # a resumed run may set anew


def parse_args(argv):
    """{name: value} of the flags given (the defaults fill in the rest: main)."""
    parser = runtime.Parser(prog="finetune.py", description="Fine-tune a pretrained encoder on "
                            "a classification task, or the same encoder from scratch.",
                            argument_default=argparse.SUPPRESS)
    helps = {
        "ckpt": "a BERT's or an ELECTRA's train.py checkpoint",
        "scratch": "the checkpoint's architecture with fresh weights: no pretraining",
        "task": "a folder of train.jsonl and dev.jsonl, lines of {\"text\": ..., \"label\": 0 "
                "or 1} (the acceptability task is made there if absent)",
        "wikitext": "WikiText-2's folder, to make the task from", "out_dir": "where ckpt.pt "
        "and log.jsonl go", "init_from": "resume: go on from out_dir/ckpt.pt, with its settings",
        "stop_at": "end this session after this step (0: at the end)", "lr": "peak learning rate",
        "batch_size": "examples per step", "epochs": "passes over the train examples",
        "seed": "the head's weights, the order, the dropout (and a --scratch encoder)",
        "device": "auto: cuda, mps, then cpu", "dtype": "as train.py's --dtype"}
    choices = {"init_from": ("scratch", "resume"), "device": ("auto", "cpu", "cuda", "mps"),
               "dtype": ("auto", "float32", "bfloat16", "float16")}
    for name, default in DEFAULTS.items():
        kwargs = {"help": f"{helps[name]} (default: {default})".replace("%", "%%")}
        if isinstance(default, bool):
            kwargs["action"] = "store_true"
        elif name in choices:
            kwargs["choices"] = choices[name]
        else:
            kwargs["type"] = type(default)
        parser.add_argument(f"--{name}", **kwargs)
    given = vars(parser.parse_args(argv))
    for name, least in (("batch_size", 1), ("epochs", 1), ("seed", 0), ("stop_at", 0)):
        if given.get(name, least) < least:
            raise runtime.ConfigError(f"--{name} {given[name]}: must be at least {least}")
    if not (math.isfinite(given.get("lr", 1)) and given.get("lr", 1) > 0):
        raise runtime.ConfigError(f"--lr {given['lr']}: must be a positive number")
    if given.get("init_from") == "resume" and given.keys() - SESSION:
        raise runtime.ConfigError(f"--init_from resume takes its settings from the checkpoint: "
                                  f"leave out --{', --'.join(sorted(given.keys() - SESSION))}")
    return given


if __name__ == "__main__":
    runtime.run_program(main)
