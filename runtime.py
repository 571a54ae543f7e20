"""
runtime.py: where a program runs. Not a lesson: plumbing the programs and tools share.

  * the device (`pick_device`) and the number format (`pick_dtype`), checked against the machine;
  * the processes of a run (`rank_and_world`, `is_main`, `say`), and those that split the data
    between them (`data_rank_and_world`: all of them, but for model parallelism, parallel.py);
  * moving batches to the device, and unwrapping a model from DDP and torch.compile;
  * a C-allocator setting that makes CPU training faster on Linux (`keep_freed_memory`);
  * a lock on a folder's file, held while a run writes there (`locked`);
  * what a user must fix is one line on stderr, never a traceback (`UserError`, `run_program`);
    an argparse parser whose errors are such a line too (`Parser`).

Read next: train.py.
"""

import argparse
import contextlib
import ctypes
import dataclasses
import difflib
import functools
import os
import re
import signal
import sys
import time
import typing
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm


class UserError(Exception):
    """Something the user must fix (a setting, a file, a folder); the message says what and how."""


class ConfigError(UserError, ValueError):
    """A setting the user must change; the message names the flag and what to do."""


def run_program(main, argv=None):
    """What `python program.py` runs: main(argv), with what the user must fix as one line on
    stderr and exit status 1. A file-system fault (no space left, permission denied, ...) is such
    a line too, naming the path, and so is running out of memory; Ctrl-C ends quietly with status
    130."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C: KeyboardInterrupt again
    try:
        main(argv)
    except UserError as e:
        leave(f"error: {e}")
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
        if type(e) is RuntimeError and "can't allocate memory" not in str(e):
            raise  # not the machine's limit but a fault of the program: its traceback says where
        asked = re.search(r"[Tt]ried to allocate ([\d.]+ \w+)", str(e))
        leave(f"error: out of memory{f' (asked for {asked[1]})' if asked else ''}: python "
              f"train.py needs less with a lower --batch_size and a higher --grad_accum_steps "
              f"(the same gradients), --fused_head or --grad_checkpointing, or a smaller model "
              f"(docs/guide.md, Troubleshooting)")
    except OSError as e:  # the disk or the file system said no: say where and why
        where = f"{e.filename}: " if e.filename else ""
        leave(f"error: {where}{e.strerror or e}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        leave(130)
    if _joined:
        leave(0)


_joined = False  # whether this process joined torchrun's others (processes)


def leave(status):
    """End the program: a number, or an error line (printed, status 1), as sys.exit takes them.
    A process that joined torchrun's others ends by os._exit once its output is flushed: the
    threads of its process group (gloo's) sometimes abort the interpreter's own exit ("terminate
    called without an active exception", status -6) after all the work is done and saved, and
    torchrun then reports the run as failed (2 of 15 two-process runs of train.py here, torch
    2.13.0's CPU build)."""
    if not _joined:
        sys.exit(status)
    if isinstance(status, str):
        print(status, file=sys.stderr)
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake on the command line is one line naming the flag, no usage block."""

    def error(self, message):
        options = [o for action in self._actions for o in action.option_strings]
        unknown = re.findall(r"--\w+", message) if message.startswith("unrecognized") else []
        near = {m for flag in unknown for m in difflib.get_close_matches(flag, options, n=1)}
        guess = f"; did you mean {' or '.join(sorted(near))}?" if near else ""
        if message.startswith("unrecognized") and "--text" in options and ".txt" in message:
            guess += "; --text takes one file or a folder, not a list (a shell glob makes one)"
        raise ConfigError(f"{message}{guess} (see: python {self.prog} --help)")

    def add_config(self, cls, notes):
        """A --flag for each field of the dataclass cls: its type, its choices (a Literal), its
        help text (model.setting) and default; notes[name] is added to a field's default."""
        group = self.add_argument_group(cls.__name__)
        for f in dataclasses.fields(cls):
            default = f"{f.default}" + (f"; {notes[f.name]}" if f.name in notes else "")
            help_text = f.metadata["help"].replace("%", "%%")  # argparse reads % as a format
            kwargs = {"help": f"{help_text} (default: {default})"}
            if f.type is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            elif typing.get_origin(f.type) is typing.Literal:
                kwargs["choices"] = typing.get_args(f.type)
            else:
                kwargs["type"] = f.type
            group.add_argument(f"--{f.name}", **kwargs)


def pick_device(name):
    """"auto": cuda, then mps, then cpu. A device asked for by name must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is visible to torch here; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps: no Apple GPU is available here; use --device cpu")
    return name


def pick_dtype(name, device):
    """For "auto" on `device` (cpu, cuda or mps): bfloat16 on GPUs that support it (float32's
    range, so no loss scaling is needed), float16 on older GPUs (with the GradScaler); on a CPU
    bfloat16 where it computes it natively and measurably faster; float32 elsewhere."""
    if name == "auto" and device == "cuda":
        name = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    elif name == "auto":
        name = "bfloat16" if device == "cpu" and cpu_bfloat16_is_faster() else "float32"
    return getattr(torch, name)


@functools.cache
def cpu_bfloat16_is_faster():
    """Whether this CPU multiplies bfloat16 matrices at least 1.3x as fast as float32 ones. CPUs
    with AMX or AVX-512 BF16 units can (recent Xeons, AMD Zen 4 and later); the flags alone are
    not enough, since a virtual machine may hide the units (docs/performance.md: on one
    Xeon, AVX-512 BF16 without AMX was slower than float32). So: the flags, then a timing."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:  # not Linux: no cheap way to ask, so no bfloat16
        return False
    if "amx_bf16" not in flags and "avx512_bf16" not in flags:
        return False
    g = torch.Generator().manual_seed(0)  # not the global generator: asking must not move it
    a = torch.randn(512, 256, generator=g)  # about the shapes of a training step's matmuls
    b = torch.randn(256, 4096, generator=g)

    def seconds(dtype):
        x, y = a.to(dtype), b.to(dtype)
        x @ y  # the first call pays for setting up the kernel
        start = time.perf_counter()
        for _ in range(5):
            x @ y
        return time.perf_counter() - start

    return seconds(torch.bfloat16) * 1.3 <= seconds(torch.float32)


def autocast(device, dtype):
    """Mixed precision: matmuls in `dtype`, the numerically touchy operations in float32."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


@contextlib.contextmanager
def processes(device):
    """Join torchrun's processes (it sets RANK and the others) for the length of a run, and yield
    this process's torch.device: NCCL between GPUs (one each), gloo between CPU processes."""
    global _data, _joined
    _data = None  # every process splits the data, until parallel.py says otherwise
    if "RANK" not in os.environ:  # a plain `python train.py`: one process
        yield torch.device(device)
        return
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    _joined = True  # (leave)
    if device == "cuda":
        device = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(device)
    try:
        yield torch.device(device)
    finally:  # also on errors and Ctrl-C, so that no process waits forever for the others
        dist.destroy_process_group()


@contextlib.contextmanager
def locked(path, busy):
    """Hold a lock on the file at path while the block runs, with this process's id in it. If
    another process holds it, busy(its id) raises, or returns to wait until the lock is free.
    The lock is the kernel's (flock): it ends with its process, even one killed by kill -9, so a
    stale file never blocks anyone; the file goes when the block ends. (Not on Windows: no
    flock.)"""
    try:
        import fcntl
    except ImportError:
        yield
        return
    while True:
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                busy(f.read().strip() or "unknown")
                fcntl.flock(f, fcntl.LOCK_EX)  # busy returned: wait
            if not same_file(f, path):  # removed by a holder that ended after we opened it: again
                continue
            f.truncate(0)  # a+: every write goes to the end, here the start of an empty file
            f.write(f"{os.getpid()}\n")
            f.flush()
            try:
                yield
            finally:
                path.unlink(missing_ok=True)  # while still held: no one else can hold this file
            return


def same_file(f, path):
    """Whether the open file f is still the file at path."""
    try:
        return os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def make_folder(path, flag):
    """path as a Path, created if missing; a regular file there is refused, naming the flag, and
    so is an empty name (which would be the current folder)."""
    if not str(path).strip():
        raise ConfigError(f"--{flag} is empty: name a folder (or leave the flag out for its "
                          f"default)")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--{flag} {path} is a file, not a folder: name a folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def rank_and_world():
    """(this process's number, the number of processes); (0, 1) without torchrun."""
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


_data = None  # (group, rank, world) of the processes that split each batch; None: all of them


def share_data(group):
    """Model parallelism (parallel.py): the processes that split each batch between them are
    those of group (a process group; None: this process alone). The others read the same rows
    as this one: they hold other parts of the same model."""
    global _data
    _data = (group, *((dist.get_rank(group), dist.get_world_size(group)) if group else (0, 1)))


def data_rank_and_world():
    """(this process's share of each batch, the number of shares): rank_and_world(), unless
    model parallelism makes several processes share one copy of the model and its rows."""
    return rank_and_world() if _data is None else _data[1:]


def data_group():
    """The process group of data parallelism, for its all-reduces (None: all processes)."""
    return None if _data is None else _data[0]


def is_main():
    """Only the first process (rank 0) prints, logs and saves; under torchrun, before the
    processes have joined their group, too (torchrun's RANK says which one this is)."""
    if not dist.is_initialized():
        return os.environ.get("RANK", "0") == "0"
    return rank_and_world()[0] == 0


def say(text):
    if is_main():
        tqdm.write(text)  # above the progress bar, not through it


def to_device(x, device):
    """A CPU batch on the device; on CUDA through pinned memory, so the copy runs asynchronously."""
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def unwrap(model):
    """The model itself, under DistributedDataParallel's wrapper and torch.compile's."""
    model = model.module if isinstance(model, DistributedDataParallel) else model
    return getattr(model, "_orig_mod", model)


def keep_freed_memory():
    """CPU speed-up on Linux: let the C allocator keep freed memory for reuse.

    glibc's malloc gives each large block fresh pages from the kernel (mmap) and hands them back
    when the block is freed. A training step allocates and frees hundreds of MB of logits and
    gradients, so the kernel zeroes new pages over and over. Serving large blocks from the heap,
    and never trimming it, avoids that (docs/performance.md). Memory use stays at its peak."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # another C library (musl, ...): leave it as it is
        return
    libc.mallopt(-4, 0)  # M_MMAP_MAX = 0: no block gets a mapping of its own
    libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD: never give the heap's free top back to the OS
