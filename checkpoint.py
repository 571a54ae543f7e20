"""
checkpoint.py: trained models on disk, shared by train.py (which saves and resumes) and sample.py
(which uses them). Not a lesson itself: what a checkpoint must hold for an exact resume is
train.py's `save_run`; this file writes it so that no crash can destroy it, reads it back with
checks, and turns it into a model again.

  * `lock`: one run at a time in an --out_dir;
  * `save_checkpoint`: atomic (a temporary file, flushed, then renamed over the old one);
  * `load_checkpoint`: refuses what is not a checkpoint, with one line that says why;
  * `objective_for`: the one place that maps the model kind (--model gpt|bert|electra|t5) to its
    objective;
  * `fit_vocabulary`: a model's vocabulary for the data's tokenizer (or a refusal);
  * `load_model`: a checkpoint's model with its trained weights, objective and tokenizer;
    `load_gpt2`: OpenAI's GPT-2;
  * `rng_state`, `gather_rng`, `set_rng_state`: every random number generator of every process,
    saved and restored, so that a resumed run draws what the unbroken one would have.

Read next: sample.py.
"""

import dataclasses
import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import data
import fetch
import prepared
import runtime
import shard
from clm import CLM
from electra import RTD
from mlm import MLM
from model import EOT_ID, GPT, ModelConfig
from runtime import ConfigError, UserError
from t5 import SpanCorruption
from xlnet import PLM

GPT2_PATH = "data/gpt2/pytorch_model.bin"  # where --init_from gpt2 finds (or downloads) GPT-2
KEYS = {"model", "optimizer", "scaler", "step", "model_config", "train_config", "best_val_loss",
        "rng", "skipped_steps", "tokens"}


class CheckpointError(UserError):
    """A checkpoint that cannot be used or written; the message says why and what to do."""


OBJECTIVES = {"gpt": CLM, "bert": MLM, "electra": RTD, "t5": SpanCorruption,  # what each learns by
              "xlnet": PLM}


def objective_for(kind, **settings):
    """GPT learns by next-token prediction (clm.py), BERT by masked LM (mlm.py), ELECTRA by
    replaced-token detection (electra.py), T5 by span corruption (t5.py), XLNet by permuted LM
    (xlnet.py). Each objective takes the settings it has a field for: mask_prob, the tokenizer's
    <|endoftext|> id (eot_id), where its words begin to hide whole words (edges: mlm.word_edges;
    None hides tokens), ELECTRA's λ (disc_weight), T5's mean_span and the block_size its
    sentinels depend on; fused: the loss by the model's head in one pass (model.HeadLoss) instead
    of as the objective's lesson writes it (train.py's --fused_head)."""
    objective = OBJECTIVES[kind]
    names = {f.name for f in dataclasses.fields(objective)}
    return objective(**{name: value for name, value in settings.items() if name in names})


def lock(out_dir):
    """Hold out_dir/run.lock while a run writes into out_dir; a second run there is refused with
    the first one's process id (runtime.locked says how the lock works)."""
    def busy(holder):
        raise CheckpointError(f"--out_dir {out_dir} is in use by another run (process id "
                              f"{holder}): wait for it to end, or choose another --out_dir")
    return runtime.locked(Path(out_dir) / "run.lock", busy)


def save_checkpoint(path, checkpoint):
    """Write atomically: into a temporary file, flushed to disk, then renamed over the old one. A
    crash at any moment leaves either the old checkpoint or the new one, never half of one; a
    failed write (disk full, ...) removes the temporary file and keeps the old checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # a full disk, Ctrl-C: nothing half-written stays behind
        tmp.unlink(missing_ok=True)
        if not isinstance(e, (OSError, RuntimeError)):  # torch reports failed writes as these
            raise
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        then = ("the one from before is kept: free some space, then go on with --init_from "
                "resume" if path.exists() else "free some space and start again")
        raise CheckpointError(f"cannot write {path} ({reason}); {then}") from None


def checkpoint_path(out_dir):
    """out_dir's checkpoint: the file ckpt.pt, or the folder ckpt.dcp of a sharded run (--fsdp)."""
    folder = shard.find(Path(out_dir) / "ckpt.dcp")
    return folder if folder.exists() else Path(out_dir) / "ckpt.pt"


def load_checkpoint(path, tensors=True):
    """A checkpoint, checked. A sharded one (a folder) is read with shard.read_checkpoint;
    tensors=False leaves its slices on disk, for a sharded run to load."""
    path = Path(path)
    if path.is_dir() and path.suffix != ".dcp":  # a run's folder: the checkpoint in it
        path = checkpoint_path(path)
    found = shard.find(path)  # path, or the ckpt.dcp.old a crash in the middle of a save left
    if not found.exists():
        other = checkpoint_path(path.parent)  # a sharded run's ckpt.dcp beside a missing ckpt.pt
        if other != path and other.exists():
            raise CheckpointError(f"{path} does not exist, but {other} does (a --fsdp run's): "
                                  f"name it, or its folder {path.parent}")
        raise CheckpointError(f"{path} does not exist: train a model first (python train.py), or "
                              f"name the right file")
    if found.is_dir():
        return check_keys(shard.read_checkpoint(path, tensors), path, tensors)
    return check_keys(read_file(path), path)


def read_file(path):
    """What torch.save wrote into path, read as data only (no code runs); one line if it cannot
    be read (finetune.py reads its own checkpoints with it too)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, ...: torch raises many kinds
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}): it is "
                              f"truncated or corrupt; use another one or train again") from None


def check_keys(checkpoint, path, tensors=True):
    need = KEYS if tensors else KEYS - {"model", "optimizer"}
    if not isinstance(checkpoint, dict) or not need <= checkpoint.keys():
        raise CheckpointError(f"{path} is not a checkpoint written by train.py")
    return checkpoint


def load_model(checkpoint, model_config=None):
    """(model with the checkpoint's weights, on the CPU; its objective; its tokenizer).
    model_config: the checkpoint's own unless given (a resumed run may change how the model
    computes). A checkpoint without a trained tokenizer (or older than them) used GPT-2's."""
    train_config, enc = checkpoint["train_config"], data.tokenizer(checkpoint.get("tokenizer"))
    objective = objective_for(train_config["model"], **checkpoint["model_config"], **train_config,
                              eot_id=enc.eot_token)
    model = objective.Model(model_config or ModelConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    return model, objective, enc


def fit_vocabulary(mcfg, cfg, checkpoint, given, sentinels=0):
    """The model config for the data's tokenizer: unless --vocab_size is given, a fresh model
    gets rows for its ids, [MASK] (the id after <|endoftext|>) and the objective's sentinels after
    it (T5's), rounded up to a multiple of 64 (model.py says why). Weights trained on other tokens
    are refused."""
    meta, vocab = prepared.read_meta(cfg.data_dir), data.read_vocab(cfg.data_dir)
    need = meta["eot_id"] + 2 + sentinels
    if checkpoint is not None and checkpoint.get("tokenizer") != vocab:
        raise CheckpointError(f"cannot resume: the checkpoint was trained with another tokenizer "
                              f"than --data_dir {cfg.data_dir}'s ({meta['tokenizer']}): resume "
                              f"on the data it was trained on")
    if cfg.init_from == "gpt2" and vocab is not None:
        raise ConfigError(f"--init_from gpt2: GPT-2 knows GPT-2's tokens, but --data_dir "
                          f"{cfg.data_dir} has a trained tokenizer: prepare the text into a "
                          f"folder of its own without --tokenizer_size")
    if cfg.init_from == "scratch" and "vocab_size" not in given:
        mcfg = dataclasses.replace(mcfg, vocab_size=-(-need // 64) * 64)
    if mcfg.vocab_size < need:
        what = f"[MASK] and {sentinels} sentinels" if sentinels else "[MASK]"
        raise ConfigError(f"--vocab_size {mcfg.vocab_size}: {meta['tokenizer']}'s "
                          f"{meta['eot_id'] + 1:,} ids with {what} need {need:,} (a multiple of "
                          f"64 is fastest)")
    return mcfg


def load_gpt2(path, block_size, dropout):
    """OpenAI's GPT-2 (124M) from Hugging Face's pytorch_model.bin, downloaded once if absent.
    Its position table (1024) is cut to block_size when that is smaller."""
    fetch.gpt2_weights(path)
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable pytorch_model.bin "
                              f"({type(e).__name__})") from None
    wte = state_dict.get("wte.weight", state_dict.get("transformer.wte.weight"))
    if wte is None:
        raise CheckpointError(f"{path} holds no GPT-2 token embedding (wte.weight): not GPT-2")
    model = GPT.from_gpt2(state_dict, n_head=wte.size(1) // 64, dropout=dropout)
    if block_size < model.config.block_size:
        wpe = model.transformer.wpe.weight[:block_size].clone()
        model.transformer.wpe.weight = torch.nn.Parameter(wpe)
        model.config.block_size = block_size
    return model


def rng_state(generator):
    """Every source of randomness of this process: data order, dropout, anything else."""
    np_state = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "data": generator.get_state()}


def set_rng_state(state, generator):
    random.setstate(state["python"])
    np.random.set_state((state["numpy"][0], np.array(state["numpy"][1], dtype=np.uint32),
                         *state["numpy"][2:]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    generator.set_state(state["data"])


def gather_rng(generator):
    """Every process's RNG states, gathered to all (rank 0 saves them)."""
    state = rng_state(generator)
    if not dist.is_initialized():
        return [state]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states
