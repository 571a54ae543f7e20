"""
monitor.py: where a run's numbers go. Not a lesson: train.py decides what to measure (loss,
learning rate, gradient norm, tokens/s, MFU, skipped steps, val loss); this file writes it down.

  * out_dir/log.jsonl: one JSON record per optimizer step, easy to read back with any tool;
  * out_dir/loss.svg: the train and val loss curves, drawn with the standard library (open it in
    a browser);
  * the first lines a run prints (what it trains, on what, tokens per step) and its last ones
    (the val metrics, where everything went);
  * the peak FLOP/s of known GPUs, for MFU (model FLOPs utilisation, PaLM appendix B);
  * --profile: torch.profiler over a few steps, a trace and a table of the top operators.

Read next: checkpoint.py.
"""

import dataclasses
import json
import math
from pathlib import Path
from xml.sax.saxutils import escape

import torch
from tqdm import tqdm

import runtime
from model import num_params

PROFILE_STEPS = (1, 1, 3)  # --profile: steps skipped, steps to warm up, steps recorded

PEAK_FLOPS = {  # dense bf16/fp16 tensor-core FLOP/s from NVIDIA's data sheets, matched in names
    "H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12,
}


def print_start(model, objective, splits, cfg, device, dtype):
    """What a run trains, on what, and how many tokens one step takes (train.py's first lines).
    Under model parallelism (--tp, --pp), a group of processes reads one share of the rows."""
    T, B, accum = model.config.block_size, cfg.batch_size, cfg.grad_accum_steps
    copies = runtime.rank_and_world()[1] // (cfg.tp * cfg.pp)  # the data's shares
    runtime.say(f"{objective.Model.__name__}: {num_params(model) / 1e6:.2f}M parameters "
        f"({num_params(model, False) / 1e6:.2f}M without positions) on {device}, "
        f"{str(dtype).removeprefix('torch.')}\n"
        f"data: {cfg.data_dir}: {len(splits['train']):,} train and {len(splits['val']):,} val "
        f"tokens\ntokens per step: {B} sequences x {T} tokens x {accum} micro-steps x {copies} "
        f"processes = {B * T * accum * copies:,}; optimizer: {cfg.optimizer}")


def print_settings(configs, given, source, brought):
    """The settings a run uses that are not `--help`'s plain defaults, by where they came from:
    source, which brought the values `brought` (a --model's own defaults, or a resumed run's
    checkpoint); the command line (every flag given, even one that repeats a default: it may
    override the --model's); or neither, a default fitted to the flags (config.fresh_configs)."""
    value = {f.name: getattr(c, f.name) for c in configs for f in dataclasses.fields(c)}
    other = [f.name for c in configs for f in dataclasses.fields(c)
             if f.name not in given and value[f.name] != f.default]
    wheres = {f"from {source}": [k for k in other if k in brought and brought[k] == value[k]],
              "from the command line": list(given)}
    wheres["fitted to the flags"] = [k for k in other if k not in wheres[f"from {source}"]]
    for where, names in wheres.items():
        if names:
            runtime.say(f"settings {where}: " + " ".join(flag(k, value[k]) for k in names))
    if not other and not given:
        runtime.say("settings: the defaults (python train.py --help lists them)")


def flag(name, value):
    """A setting as it is written on the command line."""
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no-{name}"
    return f"--{name} {value}"


def plateau_hint(loss, entropy, name="loss"):
    """Where a val loss (the metric `name`) stands against the unigram plateau: the loss of a
    model that knows only how often each token occurs (data.unigram_entropy). A nat below it, the
    model gives the right token e times the probability that frequencies alone give: it has begun
    to use the context."""
    if loss > entropy - 1:
        return (f"plateau: val {name} {loss:.2f} against {entropy:.2f}, the loss of knowing only "
                f"how often each token occurs: the model knows token frequencies only so far, and "
                f"fill-mask and samples answer frequent tokens until the loss drops below "
                f"~{entropy - 1:.1f} (docs/bert.md)")
    return (f"plateau: val {name} {loss:.2f}, {entropy - loss:.2f} below {entropy:.2f}, the loss "
            f"of knowing only how often each token occurs: the model uses the context")


def stopped(reason, step, path, saved):
    """The one line a run that stops early ends with: why, and what to do next."""
    go_on = f"{path} holds step {saved}: go on from there with --init_from resume" if saved \
        else "no checkpoint was written yet: start again"
    if isinstance(reason, KeyboardInterrupt):
        return runtime.UserError(f"interrupted during step {step + 1}; {go_on}")
    return runtime.UserError(f"{reason} at step {step + 1}: training diverged, and nothing was "
                             f"saved from it; {go_on}, with a lower --lr or a longer "
                             f"--warmup_steps (or --dtype bfloat16 instead of float16)")


def print_end(run, cfg, metrics, seconds, checkpoint, entropy):
    """Where a session ended, the last val metrics against the unigram plateau (entropy), and
    where its outputs went."""
    over = "the whole val split" if cfg.eval_iters == 0 else f"the first {cfg.eval_iters} batches"
    skipped = f"; {run.skipped_steps} steps skipped by the fp16 loss scaler" \
        if run.scaler.is_enabled() else ""
    out_dir = Path(cfg.out_dir)
    runtime.say(f"done: step {run.step}, {run.tokens:,} tokens seen, {seconds:.0f} s in this "
                f"session\n"
        f"val {run.objective.describe(metrics)} (over {over}){skipped}\n"
        f"{plateau_hint(metrics[run.objective.token_loss], entropy, run.objective.token_loss)}\n"
        f"checkpoint: {checkpoint}\nlog: {out_dir / 'log.jsonl'}\n"
        f"loss curve: {out_dir / 'loss.svg'}")


def peak_flops(device, dtype):
    """The device's peak FLOP/s for this dtype where we know it (MFU is reported then), or None."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


def read_log(path, upto):
    """(records of steps 1..upto, numbers of the lines that could not be read). Records after
    `upto` are left out: a resumed run does those steps again. A damaged line (a crash in the
    middle of writing it) is skipped, and the lines after it are still read."""
    records, damaged = [], []
    lines = path.read_text().splitlines() if path.exists() else []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            damaged.append(number)
            continue
        if record["step"] <= upto:
            records.append(record)
    return records, damaged


def start_log(path, step):
    """The log a session continues: its records up to `step` (none for a fresh run), written back
    without the steps that will be done again."""
    records, damaged = read_log(path, upto=step) if step > 0 else ([], [])
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    if damaged:
        tqdm.write(f"note: {path}: line(s) {', '.join(map(str, damaged))} could not be read and "
                   f"were left out; every other record is kept")
    return records


def append(records, record, out_dir, title, labels):
    """Add one step's record to the log, and redraw the curve when it holds a val loss."""
    records.append(record)
    with open(out_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    if "val_loss" in record:
        write_svg(records, out_dir / "loss.svg", title, labels)


def ticks(lo, hi, most=6):
    """Round values for an axis that shows lo to hi: steps of 1, 2 or 5 times a power of ten,
    at most `most` of them, the first at or below lo and the last at or above hi."""
    hi = hi if hi > lo else lo + 1
    power = 10 ** math.floor(math.log10((hi - lo) / most))  # a step of `power` is too fine
    for step in (m * power for m in (1, 2, 5, 10, 20, 50)):  # the finest step that fits
        first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)  # in steps
        if last - first + 1 <= most:
            return [round(i * step, 10) for i in range(first, last + 1)]


def write_svg(records, path, title, labels=("train loss", "val loss")):
    """The loss curves as an SVG picture: train loss at every step, val loss at each evaluation;
    labels say what each measures (for BERT: the training masks, and the fixed ones of val)."""
    W, H, left, right, top, bottom = 720, 420, 64, 24, 40, 48
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    x_ticks = ticks(0, max(s for s, _ in train + val))
    y_ticks = ticks(min(v for _, v in train + val), max(v for _, v in train + val))
    x_max, y_lo, y_hi = x_ticks[-1], y_ticks[0], y_ticks[-1]

    def x(step):
        return round(left + (W - left - right) * step / x_max, 1)

    def y(loss):
        return round(top + (H - top - bottom) * (y_hi - loss) / (y_hi - y_lo), 1)

    def text(tx, ty, s, **attrs):
        extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in attrs.items())
        return f'<text x="{tx}" y="{ty}"{extra}>{escape(s)}</text>'

    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="12"><rect width="{W}" height="{H}" fill="white"/>',
           text(W / 2, 22, title, text_anchor="middle", font_size=14)]
    for loss in y_ticks:  # grid lines with their values
        svg += [f'<line x1="{x(0)}" y1="{y(loss)}" x2="{x(x_max)}" y2="{y(loss)}" stroke="#ddd"/>',
                text(x(0) - 6, y(loss) + 4, f"{loss:g}", text_anchor="end")]
    svg += [text(x(step), y(y_lo) + 18, f"{step:g}", text_anchor="middle") for step in x_ticks]
    svg += [text(W / 2, H - 8, "step", text_anchor="middle"),
            text(16, H / 2, "loss (nats/token)", transform=f"rotate(-90 16 {H / 2})",
                 text_anchor="middle")]
    for points, color, width in ((train, "#4477aa", 1), (val, "#ee6677", 2)):
        coordinates = " ".join(f"{x(s)},{y(v)}" for s, v in points)
        svg.append(f'<polyline fill="none" stroke="{color}" stroke-width="{width}" '
                   f'points="{coordinates}"/>')
    svg += [f'<circle cx="{x(s)}" cy="{y(v)}" r="3" fill="#ee6677"/>' for s, v in val]
    svg += [text(W - right - 8, top + 16, labels[0], fill="#4477aa", text_anchor="end"),
            text(W - right - 8, top + 32, labels[1], fill="#ee6677", text_anchor="end"), "</svg>"]
    path.write_text("\n".join(svg))


def profile(enabled, out_dir, device, steps_left):
    """torch.profiler, started (train.py calls .step() after each step), or None. It skips one
    step and warms up on one (the first steps fill the allocator's caches), then records
    three: every operator's start and end into out_dir/trace.json (open it in ui.perfetto.dev or
    chrome://tracing), and a table of the operators that took longest, printed. train_step names
    its parts (record_function) so that they show up; docs/guide.md (Profiling) reads a table."""
    if not enabled:
        return None
    wait, warmup, active = PROFILE_STEPS
    if steps_left < wait + warmup + active:
        raise runtime.ConfigError(f"--profile records steps {wait + warmup + 1} to "
                                  f"{wait + warmup + active} of a session, which has "
                                  f"{steps_left} left: raise --max_steps (or --stop_at)")
    cuda = device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU]
    activities += [torch.profiler.ProfilerActivity.CUDA] if cuda else []

    def ready(prof):
        prof.export_chrome_trace(str(out_dir / "trace.json"))
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        runtime.say(prof.key_averages().table(sort_by=sort, row_limit=15))
        runtime.say(f"profile: {active} steps, the table above; trace: {out_dir / 'trace.json'}")

    profiler = torch.profiler.profile(
        activities=activities, on_trace_ready=ready,
        schedule=torch.profiler.schedule(wait=wait, warmup=warmup, active=active, repeat=1))
    profiler.start()
    return profiler
