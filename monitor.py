"""
monitor.py: where a run's numbers go. Not a lesson: train.py decides what to measure (loss,
learning rate, gradient norm, tokens/s, MFU, skipped steps, val loss); this file writes it down.

  * out_dir/log.jsonl: one JSON record per optimizer step, easy to read back with any tool;
  * out_dir/loss.svg: the train and val loss curves, drawn with the standard library (open it in
    a browser);
  * the first lines a run prints (what it trains, on what, tokens per step) and its last ones
    (the val metrics, where everything went);
  * the peak FLOP/s of known GPUs, for MFU (model FLOPs utilisation, PaLM appendix B).

Read next: checkpoint.py.
"""

import json
from pathlib import Path
from xml.sax.saxutils import escape

import torch
from tqdm import tqdm

import runtime
from model import num_params

PEAK_FLOPS = {  # dense bf16/fp16 tensor-core FLOP/s from NVIDIA's data sheets, matched in names
    "H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12,
}


def print_start(run, splits, cfg, device, dtype, world):
    """What a run trains, on what, and how many tokens one step takes (train.py's first lines)."""
    raw = runtime.unwrap(run.model)
    T, B, accum = raw.config.block_size, cfg.batch_size, cfg.grad_accum_steps
    runtime.say(f"{run.objective.Model.__name__}: {num_params(raw) / 1e6:.2f}M parameters "
        f"({num_params(raw, False) / 1e6:.2f}M without positions) on {device}, "
        f"{str(dtype).removeprefix('torch.')}\n"
        f"data: {cfg.data_dir}: {len(splits['train']):,} train and {len(splits['val']):,} val "
        f"tokens\ntokens per step: {B} sequences x {T} tokens x {accum} micro-steps x {world} "
        f"processes = {B * T * accum * world:,}; optimizer: {cfg.optimizer}")


def print_end(run, cfg, metrics, seconds, checkpoint):
    """Where a session ended, the last val metrics, and where its outputs went."""
    over = "the whole val split" if cfg.eval_iters == 0 else f"the first {cfg.eval_iters} batches"
    skipped = f"; {run.skipped_steps} steps skipped by the fp16 loss scaler" \
        if run.scaler.is_enabled() else ""
    out_dir = Path(cfg.out_dir)
    runtime.say(f"done: step {run.step}, {run.tokens:,} tokens seen, {seconds:.0f} s in this "
                f"session\n"
        f"val {run.objective.describe(metrics)} (over {over}){skipped}\n"
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


def append(records, record, out_dir, title):
    """Add one step's record to the log, and redraw the curve when it holds a val loss."""
    records.append(record)
    with open(out_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    if "val_loss" in record:
        write_svg(records, out_dir / "loss.svg", title)


def write_svg(records, path, title):
    """The loss curves as an SVG picture: train loss at every step, val loss at each evaluation."""
    W, H, left, right, top, bottom = 720, 420, 64, 24, 40, 48
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    x_max = max(s for s, _ in train + val)
    y_lo, y_hi = min(v for _, v in train + val), max(v for _, v in train + val)
    y_lo, y_hi = (y_lo - 0.5, y_hi + 0.5) if y_hi - y_lo < 1e-9 else (y_lo, y_hi)

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
    for i in range(6):  # grid lines with their values
        loss, step = y_lo + (y_hi - y_lo) * i / 5, round(x_max * i / 5)
        svg += [f'<line x1="{x(0)}" y1="{y(loss)}" x2="{x(x_max)}" y2="{y(loss)}" stroke="#ddd"/>',
                text(x(0) - 6, y(loss) + 4, f"{loss:.2f}", text_anchor="end"),
                text(x(step), y(y_lo) + 18, str(step), text_anchor="middle")]
    svg += [text(W / 2, H - 8, "step", text_anchor="middle"),
            text(16, H / 2, "loss (nats/token)", transform=f"rotate(-90 16 {H / 2})",
                 text_anchor="middle")]
    for points, color, width in ((train, "#4477aa", 1), (val, "#ee6677", 2)):
        coordinates = " ".join(f"{x(s)},{y(v)}" for s, v in points)
        svg.append(f'<polyline fill="none" stroke="{color}" stroke-width="{width}" '
                   f'points="{coordinates}"/>')
    svg += [f'<circle cx="{x(s)}" cy="{y(v)}" r="3" fill="#ee6677"/>' for s, v in val]
    svg += [text(W - right - 150, top + 16, "train loss", fill="#4477aa"),
            text(W - right - 150, top + 32, "val loss", fill="#ee6677"), "</svg>"]
    path.write_text("\n".join(svg))
