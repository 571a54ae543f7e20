"""
checkpoint.py: trained models on disk, shared by train.py (which saves and resumes) and sample.py
(which uses them). Not a lesson itself: what a checkpoint must hold for an exact resume is
train.py's `save_run`; this file writes it so that no crash can destroy it, reads it back with
checks, and turns it into a model again.

  * `save_checkpoint`: atomic (a temporary file, flushed, then renamed over the old one);
  * `load_checkpoint`: refuses what is not a checkpoint, with one line that says why;
  * `objective_for`: the one place that maps the model kind (--model gpt|bert) to its objective;
  * `load_model`: a checkpoint's model with its trained weights; `load_gpt2`: OpenAI's GPT-2.

Read next: sample.py.
"""

import os
from pathlib import Path

import torch

import fetch
from clm import CLM
from mlm import MLM
from model import GPT, ModelConfig

GPT2_PATH = "data/gpt2/pytorch_model.bin"  # where --init_from gpt2 finds (or downloads) GPT-2
KEYS = {"model", "optimizer", "scaler", "step", "model_config", "train_config", "best_val_loss",
        "rng", "skipped_steps", "tokens"}


class CheckpointError(Exception):
    """A checkpoint that cannot be used or written; the message says why and what to do."""


def objective_for(kind, mask_prob=0.15):
    """GPT learns by next-token prediction (clm.py), BERT by masked LM (mlm.py)."""
    return CLM() if kind == "gpt" else MLM(mask_prob)


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
    except (OSError, RuntimeError) as e:  # torch reports a failed write as a RuntimeError
        tmp.unlink(missing_ok=True)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        kept = f"{path} from before is kept" if path.exists() else "no checkpoint was written"
        raise CheckpointError(f"cannot write {path}: {reason}; {kept}. Free some space or choose "
                              f"another --out_dir, then resume with --init_from resume") from None


def load_checkpoint(path):
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: train a model first (python train.py), or "
                              f"name the right file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # no code, only data
    except Exception as e:  # truncated zip, not a torch file, ...: torch raises many kinds
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}): it is "
                              f"truncated or corrupt; use another one or train again") from None
    if not isinstance(checkpoint, dict) or not KEYS <= checkpoint.keys():
        raise CheckpointError(f"{path} is not a checkpoint written by train.py")
    return checkpoint


def load_model(checkpoint, model_config=None):
    """(model with the checkpoint's weights, on the CPU; its objective). model_config: the
    checkpoint's own unless given (a resumed run may change how the model computes)."""
    train_config = checkpoint["train_config"]
    objective = objective_for(train_config["model"], train_config["mask_prob"])
    model = objective.Model(model_config or ModelConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    return model, objective


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
