"""
config.py: a training run's settings, as data. Not a lesson: it takes train.py's configuration out
of the file that teaches the loop.

  * `TrainConfig`: every setting of the loop with its default and its help text (model.py's
    `ModelConfig` holds the model's), checked when made, so a bad value fails before any work;
  * the command line made from the two dataclasses' fields (`parse_args`): one list of names and
    defaults, and no flag that the code does not read; BERT starts from defaults of its own
    (mlm.MLM.defaults);
  * the configs of a fresh run (`fresh_configs`: the defaults, a --model's own, the flags given;
    a default that does not fit them, the warmup of a short run or the min_lr of a low lr, keeps
    its share) and of a resumed one
    (`resume_configs`: the checkpoint's settings, with the flags given on top);
  * the settings that cannot work together, refused in one line (`check_settings`).

Try it:    python train.py --help
Read next: train.py.
"""

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Literal

import data
import runtime
from checkpoint import GPT2_PATH, CheckpointError, objective_for
from electra import DISC_WEIGHT
from model import ModelConfig, check, check_choices, setting
from t5 import MEAN_SPAN


@dataclass
class TrainConfig:
    model: Literal["gpt", "bert", "electra", "t5", "xlnet"] = setting(
        "gpt", "gpt: causal LM (clm.py); bert: masked LM (mlm.py); electra: replaced-token "
        "detection (electra.py); t5: span corruption, an encoder-decoder (t5.py); xlnet: "
        "permuted LM (xlnet.py)")
    data_dir: str = setting(data.WIKITEXT_DIR, "the corpus's .bin files (data.py prepares them)")
    tokenizer_size: int = setting(0, "0: GPT-2's tokenizer; N: one of N ids trained on the "
                                  "training text (bpe.py), for a --data_dir not yet prepared")
    text: str = setting("", "your own .txt file or folder, instead of WikiText-2")
    no_clean: bool = setting(False, "--text as it is: no cleaning or deduplication (clean.py)")
    out_dir: str = setting("out", "where ckpt.pt, log.jsonl and loss.svg go")
    init_from: Literal["scratch", "resume", "gpt2"] = setting(
        "scratch", "resume: out_dir/ckpt.pt; gpt2: OpenAI's weights")
    gpt2_path: str = setting(GPT2_PATH, "GPT-2's weights for --init_from gpt2")
    max_steps: int = setting(600, "optimizer steps; the learning-rate schedule ends here")
    stop_at: int = setting(0, "end this session after this step (0: at max_steps)")
    batch_size: int = setting(16, "sequences per micro-batch (per process)")
    grad_accum_steps: int = setting(1, "micro-batches per optimizer step")
    lr: float = setting(2e-3, "peak learning rate")
    min_lr: float = setting(2e-4, "learning rate reached at max_steps (Chinchilla: lr / 10); with "
                            "an --lr below it, a tenth of that --lr")
    warmup_steps: int = setting(30, "steps of linear warmup from lr / warmup_steps to lr; with a "
                                "--max_steps below it, the same share of --max_steps")
    decay: Literal["cosine", "linear"] = setting("cosine", "shape of the decay to min_lr")
    weight_decay: float = setting(0.1, "AdamW's decoupled decay, on matrices only")
    beta1: float = setting(0.9, "AdamW: averaging of gradients")
    beta2: float = setting(0.95, "AdamW: averaging of squared gradients (GPT-3: 0.95)")
    eps: float = setting(1e-8, "AdamW: keeps the division finite")
    grad_clip: float = setting(1.0, "clip the global gradient norm to this (0: no clipping)")
    optimizer: Literal["adamw", "muon"] = setting(
        "adamw", "adamw: AdamW for every weight; muon: Muon for the Linear layers' weights, AdamW "
        "for the rest (muon.py)")
    mask_prob: float = setting(0.3, "BERT, ELECTRA, T5: share of tokens chosen for prediction "
                               "(BERT's paper: 0.15; docs/bert.md); T5's noise density; XLNet: "
                               "1/K, the share of each order predicted")
    mean_span: float = setting(MEAN_SPAN, "T5: the mean length of a hidden span (Raffel et al. "
                               "2020)")
    mask_unit: Literal["tokens", "words"] = setting(
        "tokens", "BERT: hide tokens, or whole words (every piece of a word BPE splits)")
    disc_weight: float = setting(DISC_WEIGHT, "ELECTRA: λ in L_MLM + λ·L_disc (Clark et al. "
                                 "2020)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = setting(
        "auto", "auto: bfloat16 where fast (recent GPUs, some CPUs), else float16 on GPUs, "
        "float32 on CPUs")
    device: Literal["auto", "cpu", "cuda", "mps"] = setting("auto", "auto: cuda, mps, then cpu")
    eval_interval: int = setting(200, "evaluate every this many steps, and at the end")
    eval_iters: int = setting(0, "batches per evaluation (0: the whole val split, exactly)")
    ckpt_interval: int = setting(200, "write ckpt.pt every this many steps, and at the end")
    seed: int = setting(1337, "initial weights, data order, dropout")
    compile: bool = setting(False, "torch.compile the model (pays off on GPUs, big models)")
    profile: bool = setting(False, "torch.profiler over steps 3 to 5 of the session: a trace in "
                            "out_dir/trace.json and a table of the top operators (docs/guide.md, "
                            "Profiling)")
    fused_head: bool = setting(False, "the LM head and its loss in one pass, a chunk of rows at a "
                               "time (model.HeadLoss): the same loss and gradients without "
                               "holding all the logits (docs/performance.md)")
    fsdp: bool = setting(False, "under torchrun: shard weights, gradients and AdamW's moments "
                         "across the processes (shard.py) instead of copying them (DDP)")
    tp: int = setting(1, "under torchrun: tensor parallel, each Block's matmuls split across this "
                      "many processes (parallel.py)")
    pp: int = setting(1, "under torchrun: pipeline parallel, the Blocks in this many stages, one "
                      "per process, the micro-batches (--grad_accum_steps) flowing through "
                      "(parallel.py)")

    def __post_init__(self):
        check_choices(self)
        for f in dataclasses.fields(self):  # an infinite or NaN rate or epsilon means nothing
            value = getattr(self, f.name)
            check(not isinstance(value, float) or math.isfinite(value), f.name, value,
                  "must be a finite number")
        check(0 <= self.seed < 2**63, "seed", self.seed, "must be in [0, 2**63)")  # torch's range
        for name in ("max_steps", "batch_size", "grad_accum_steps", "eval_interval",
                     "ckpt_interval", "tp", "pp"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "must be at least 1")
        for name in ("tokenizer_size", "stop_at", "warmup_steps", "eval_iters", "weight_decay",
                     "grad_clip"):
            check(getattr(self, name) >= 0, name, getattr(self, name), "must not be negative")
        check(self.lr > 0, "lr", self.lr, "must be positive")
        check(0 <= self.min_lr <= self.lr, "min_lr", self.min_lr, f"must be in [0, --lr {self.lr}]")
        check(self.stop_at <= self.max_steps, "stop_at", self.stop_at, f"is past --max_steps "
              f"{self.max_steps}, where the schedule ends: raise --max_steps to train longer")
        check(self.warmup_steps <= self.max_steps, "warmup_steps", self.warmup_steps,
              f"must not exceed --max_steps {self.max_steps}")
        for name in ("beta1", "beta2"):
            check(0 <= getattr(self, name) < 1, name, getattr(self, name), "must be in [0, 1)")
        check(self.eps > 0, "eps", self.eps, "must be positive")
        check(0 < self.mask_prob < 1, "mask_prob", self.mask_prob, "must be between 0 and 1")
        check(self.disc_weight > 0, "disc_weight", self.disc_weight, "must be positive")
        check(self.mean_span >= 1, "mean_span", self.mean_span, "must be at least 1 (a token)")


MODEL_FIELDS, TRAIN_FIELDS = ModelConfig.__dataclass_fields__, TrainConfig.__dataclass_fields__


# A fresh run, a resumed run, and the command line ------------------------------------------------

def resume_configs(checkpoint, given, out_dir):
    """The configs of a resumed run: the checkpoint's, with the flags given on top (and checked
    only then: --max_steps 20 is fine for a run that warms up for 10 steps). A model flag that
    would change the trained model is refused, with every difference listed; so is another
    --optimizer, whose saved state would not fit."""
    saved_model, saved_train = checkpoint["model_config"], checkpoint["train_config"]
    switches = ("explicit_attention", "grad_checkpointing")  # how to compute, not what: free
    diffs = [f"--{k} {given[k]} (checkpoint: {v})" for k, v in saved_model.items()
             if k in given and k not in switches and given[k] != v]
    # (a checkpoint from before --optimizer gets TrainConfig's default, AdamW, as make_configs does)
    for key, saved in (("model", saved_train["model"]),
                       ("optimizer", saved_train.get("optimizer", TrainConfig.optimizer))):
        if given.get(key, saved) != saved:
            diffs.append(f"--{key} {given[key]} (checkpoint: {saved})")
    if diffs:
        raise CheckpointError(f"cannot resume: the checkpoint's run differs from the flags: "
                              f"{'; '.join(diffs)}")
    session = {"stop_at": 0, "out_dir": out_dir, "profile": False}  # not kept from the last one
    return make_configs({**saved_model, **saved_train, **session, **given})


def parse_args(argv=None):
    """{name: value} of the flags given: main makes the configs from them (with the defaults, or
    with a checkpoint's settings). Defaults and help texts live in the dataclasses' fields
    (model.setting); BERT, ELECTRA, T5 and XLNet start from a few defaults of their own
    (mlm.MLM.defaults, electra.RTD.defaults, t5.SpanCorruption.defaults, xlnet.PLM.defaults)."""
    parser = runtime.Parser(prog="train.py", description="Pretrain a GPT, a BERT, an ELECTRA, "
                            "a T5 or an XLNet.", argument_default=argparse.SUPPRESS)
    notes = {}  # "with --model bert: 128; electra: 128"
    for kind in ("bert", "electra", "t5", "xlnet"):
        for name, value in objective_for(kind).defaults.items():
            notes[name] = notes[name] + f"; {kind}: {value}" if name in notes \
                else f"with --model {kind}: {value}"
    for cls in (ModelConfig, TrainConfig):
        parser.add_config(cls, notes)
    return vars(parser.parse_args(argv))  # only the flags on the command line


def fresh_configs(given):
    """The configs of a new run: the defaults, a --model's own on top (mlm.MLM.defaults), then the
    flags given. A default that does not fit the flags given follows them, and the run says so:
    a run shorter than its default warmup (--model bert --max_steps 50, and BERT's 100 steps of
    warmup) warms up for the default run's share of its steps; an --lr below the default
    --min_lr decays to the default's share of it (a tenth). A flag given is kept, and checked."""
    defaults = {name: getattr(TrainConfig, name) for name in ("warmup_steps", "max_steps",
                                                               "min_lr", "lr")}
    defaults.update(objective_for(given.get("model", "gpt")).defaults)
    settings = {**defaults, **given}
    for name, of in (("warmup_steps", "max_steps"), ("min_lr", "lr")):  # name must not exceed of
        if name in given or settings[name] <= settings[of] or not settings[of] > 0:
            continue
        value = defaults[name] / defaults[of] * settings[of]  # BERT: 100 of 4,200 steps; lr / 10
        value = max(1, round(value)) if name == "warmup_steps" else value
        runtime.say(f"--{name} {value:g}: the default {defaults[name]:g} does not fit --{of} "
                    f"{settings[of]:g}, so it keeps the default's share of --{of} "
                    f"({defaults[name]:g} of {defaults[of]:g})")
        settings[name] = value
    pp = settings.get("pp", TrainConfig.pp)
    accum = settings.get("grad_accum_steps", TrainConfig.grad_accum_steps)
    if pp > accum and "grad_accum_steps" not in given:  # a pipeline needs micro-batches to fill
        rows = settings.get("batch_size", TrainConfig.batch_size)
        batch = rows // pp if "batch_size" not in given and rows % pp == 0 else rows
        runtime.say(f"--grad_accum_steps {pp} --batch_size {batch}: a pipeline of {pp} stages "
                    f"needs {pp} micro-batches per step" + (f", of {batch} rows: the same "
                    f"{rows} rows per step" if batch < rows else ""))
        settings |= {"grad_accum_steps": pp, "batch_size": batch}
    return make_configs(settings)


def make_configs(settings):
    """(ModelConfig, TrainConfig) from {name: value}; a value they refuse is a ConfigError."""
    try:
        return (ModelConfig(**{k: v for k, v in settings.items() if k in MODEL_FIELDS}),
                TrainConfig(**{k: v for k, v in settings.items() if k in TRAIN_FIELDS}))
    except ValueError as e:
        raise runtime.ConfigError(str(e)) from None


def check_settings(cfg, given):
    """Refuse settings that cannot work together, in one line that names the flags."""
    if cfg.fsdp and cfg.optimizer == "muon":
        raise runtime.ConfigError("--fsdp leaves each process a slice of every matrix, and Muon "
                                  "needs whole ones: add --optimizer adamw")
    if cfg.fsdp and "RANK" not in os.environ:
        whole = ", or resume it in one process with --no-fsdp" if "fsdp" not in given else ""
        raise runtime.ConfigError(f"--fsdp shards the model across the processes that torchrun "
                                  f"starts: run train.py under torchrun (docs/guide.md, "
                                  f"Sharding){whole}")
    for name in sorted(given.keys() & {"mask_prob", "mask_unit"}):  # a GPT would ignore them
        if cfg.model == "gpt":
            raise runtime.ConfigError(f"--{name} sets what a BERT hides; a GPT hides nothing: "
                                      f"add --model bert, or leave --{name} out")
    if "mask_unit" in given and cfg.model == "t5":
        raise runtime.ConfigError("--mask_unit: T5 hides spans of tokens, whose mean length is "
                                  "--mean_span: leave --mask_unit out")
    if "mask_unit" in given and cfg.model == "xlnet":
        raise runtime.ConfigError("--mask_unit: XLNet predicts the last tokens of a random order, "
                                  "not words: leave --mask_unit out")
    if "mean_span" in given and cfg.model != "t5":
        raise runtime.ConfigError(f"--mean_span sets the spans T5 hides; --model {cfg.model} "
                                  f"hides no spans: add --model t5, or leave --mean_span out")
    for name in sorted(given.keys() & {"disc_weight", "generator_n_embd"}):  # ELECTRA's own
        if cfg.model != "electra":
            raise runtime.ConfigError(f"--{name} sets a part of ELECTRA, which --model "
                                      f"{cfg.model} does not have: add --model electra, or "
                                      f"leave --{name} out")
    if cfg.model == "electra" and cfg.fused_head:
        raise runtime.ConfigError("--fused_head never holds the logits, and ELECTRA samples its "
                                  "replacements from the generator's: leave --fused_head out")
    architecture = {"vocab_size", "n_layer", "n_head", "n_embd", "bias"}
    if cfg.init_from == "gpt2" and (cfg.model != "gpt" or given.keys() & architecture):
        raise runtime.ConfigError("--init_from gpt2 takes its architecture from GPT-2's weights: "
                                  "use --model gpt and no --vocab_size/--n_layer/--n_head/--n_embd/"
                                  "--bias (--block_size may shorten it)")
