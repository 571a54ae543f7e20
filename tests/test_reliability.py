"""Bad input and faults, as a user meets them: every refusal is one line that names the flag and a
fix that exists, no traceback; a folder never changes what it holds; a full disk, a second run on
the same --out_dir, Ctrl-C and kill -9 lose nothing that was trained."""

import contextlib
import errno
import io
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import checkpoint
import data
import prepared
import runtime
import sample
import train
from checkpoint import load_checkpoint
from test_train import TINY, log

REPO = Path(__file__).parents[1]
PROGRAMS = {"train.py": train.main, "sample.py": sample.main, "data.py": data.main}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A prepared text corpus, and a one-step checkpoint trained on it; the same text in "small",
    with a tokenizer of 300 ids trained on it, for the runs of many steps (each step several times
    cheaper than with GPT-2's 50,257 ids)."""
    folder = tmp_path_factory.mktemp("reliability")
    (folder / "text.txt").write_text("Rain fell on the quiet town. " * 300, encoding="utf-8")
    data.prepare(folder / "prepared", text=str(folder / "text.txt"), clean_text=False)
    data.prepare(folder / "small", text=str(folder / "text.txt"), clean_text=False, vocab_size=300)
    run_quietly(["--data_dir", str(folder / "prepared"), "--out_dir", str(folder / "out"), *TINY,
                 "--max_steps", "1", "--warmup_steps", "1"])
    return folder


def run_quietly(argv, program="train.py"):
    """What `python <program> argv` does, in this process: the exit message, or None on success."""
    try:
        runtime.run_program(PROGRAMS[program], argv)
    except SystemExit as e:
        return e.code
    return None


@pytest.fixture(scope="module")
def flags_of():
    """{program: the flags its --help lists}."""
    flags = {}
    for program, main in PROGRAMS.items():
        shown = io.StringIO()
        with pytest.raises(SystemExit), contextlib.redirect_stdout(shown):
            main(["--help"])
        flags[program] = set(re.findall(r"--[a-z_-]+", shown.getvalue()))
    return flags


def flags_named(message, program):
    """[(program, flag)] for every --flag in message; flags after `python X.py` belong to X.py."""
    named, current = [], program
    for part in re.split(r"(python \w+\.py)", message):
        if part.startswith("python "):
            current = part.removeprefix("python ")
        else:
            named += [(current, flag) for flag in re.findall(r"--[a-z_]+", part)]
    return named


def refusal(argv, program, expected, flags_of):
    """Run a bad command; check the one-line refusal, and that the flags it names exist."""
    message = run_quietly(argv, program)
    assert isinstance(message, str), f"{program} {argv} was not refused"
    assert message.startswith("error: ") and "\n" not in message, message
    assert expected in message, message
    for named_in, flag in flags_named(message, program):
        typed = flag in argv  # the user's own mistake, quoted back
        assert typed or flag in flags_of[named_in], f"{message!r} names {flag}: {named_in} lacks it"
    return message


# 1. Settings that would have trained wrong, silently, or ended in a traceback ---------------------

NEEDS_NO_DATA = [  # (flags, what the message must say)
    (["--stop_at", "900"], "--stop_at 900: is past --max_steps 600"),
    (["--lr", "-0.001"], "--lr -0.001: must be positive"),
    (["--lr", "inf"], "--lr inf: must be a finite number"),
    (["--lr", "nan"], "--lr nan: must be a finite number"),
    (["--eps", "inf"], "--eps inf: must be a finite number"),
    (["--grad_clip", "inf"], "--grad_clip inf: must be a finite number"),
    (["--dropout", "nan"], "--dropout nan: must be at least 0 and below 1"),
    (["--seed", str(2**64)], f"--seed {2**64}: must be in [0, 2**63)"),
    (["--lr", "1e-5", "--min_lr", "2e-4"], "--min_lr 0.0002: must be in [0, --lr 1e-05]"),
    (["--warmup_steps", "700"], "--warmup_steps 700: must not exceed --max_steps 600"),
    (["--mask_prob", "0"], "--mask_prob 0.0: must be between 0 and 1"),
    (["--mask_prob", "2"], "--mask_prob 2.0: must be between 0 and 1"),
    (["--mask_prob", "0.4"], "a GPT hides nothing: add --model bert, or leave --mask_prob out"),
    (["--mask_unit", "words"], "--mask_unit sets what a BERT hides; a GPT hides nothing: add"),
    (["--disc_weight", "10"], "--disc_weight sets a part of ELECTRA, which --model gpt does not "
     "have"),
    (["--model", "bert", "--generator_n_embd", "32"], "which --model bert does not have: add "
     "--model electra, or leave --generator_n_embd out"),
    (["--model", "electra", "--fused_head"], "--fused_head never holds the logits, and ELECTRA"),
    (["--model", "electra", "--disc_weight", "0"], "--disc_weight 0.0: must be positive"),
    (["--model", "electra", "--generator_n_embd", "33"], "--generator_n_embd 33: must be even"),
    (["--mean_span", "5"], "--mean_span sets the spans T5 hides; --model gpt hides no spans: "
     "add --model t5"),
    (["--model", "t5", "--mean_span", "0.5"], "--mean_span 0.5: must be at least 1"),
    (["--model", "t5", "--mask_unit", "words"], "--mask_unit: T5 hides spans of tokens"),
    (["--model", "xlnet", "--mask_unit", "words"], "--mask_unit: XLNet predicts the last tokens "
     "of a random order"),
    (["--model", "xlnet", "--mean_span", "2"], "--model xlnet hides no spans: add --model t5"),
    (["--model", "bert", "--fsdp"], "--fsdp leaves each process a slice of every matrix, and Muon"),
    (["--eval_iters", "-1"], "--eval_iters -1: must not be negative"),
    (["--batch_size", "0"], "--batch_size 0: must be at least 1"),
    (["--grad_accum_steps", "-2"], "--grad_accum_steps -2: must be at least 1"),
    (["--eval_interval", "0"], "--eval_interval 0: must be at least 1"),
    (["--ckpt_interval", "0"], "--ckpt_interval 0: must be at least 1"),
    (["--max_steps", "0"], "--max_steps 0: must be at least 1"),
    (["--n_head", "0"], "--n_head 0: must be at least 1"),
    (["--n_head", "-4"], "--n_head -4: must be at least 1"),
    (["--n_embd", "100", "--n_head", "3"], "--n_embd 100: must be a multiple of --n_head 3"),
    (["--block_size", "1"], "--block_size 1: must be at least 2"),
    (["--dropout", "1"], "--dropout 1.0: must be at least 0 and below 1"),
    (["--beta2", "1"], "--beta2 1.0: must be in [0, 1)"),
    (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    (["--model", "llama"], "argument --model: invalid choice: 'llama'"),
    (["--n_layer"], "argument --n_layer: expected one argument"),
    (["--learning_rate", "1e-3"], "unrecognized arguments: --learning_rate 1e-3"),
    (["--batchsize", "8"], "unrecognized arguments: --batchsize 8; did you mean --batch_size?"),
    (["--text", "a.txt", "b.txt"], "unrecognized arguments: b.txt; --text takes one file or a "
     "folder, not a list (a shell glob makes one)"),
]


@pytest.mark.parametrize(
    "flags, expected", NEEDS_NO_DATA, ids=[" ".join(f) for f, _ in NEEDS_NO_DATA]
)
def test_a_bad_setting_is_refused_in_one_line(flags, expected, flags_of, tmp_path):
    refusal(["--out_dir", str(tmp_path), *flags], "train.py", expected, flags_of)
    assert not (tmp_path / "log.jsonl").exists()  # refused before anything was written


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("program", ["train.py", "sample.py"])
def test_a_device_that_is_not_there_is_refused(program, flags_of, corpus):
    ckpt = ["--ckpt", str(corpus / "out/ckpt.pt")] if program == "sample.py" else []
    refusal([*ckpt, "--device", "cuda"], program, "--device cuda: no CUDA GPU", flags_of)


SAMPLE_CASES = [
    (["--top_k", "0"], "--top_k must be at least 1"),
    (["--top_p", "1.5"], "--top_p must be in (0, 1]"),
    (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
    (["--temperature", "inf"], "--temperature must be a finite number >= 0 (0 = greedy), not inf"),
    (["--temperature", "nan"], "--temperature must be a finite number >= 0 (0 = greedy), not nan"),
    (["--seed", "-1"], "--seed -1: must be in [0, 2**63)"),
    (["--init_from", "gpt2", "--gpt2_path", ""], "--gpt2_path '' is empty: name GPT-2's"),
    (["--prompt", "ab\udcffc"], "--prompt is not valid UTF-8"),  # the byte 0xff, as argv has it
    (["--max_new_tokens", "-5"], "--max_new_tokens -5: must be at least 1"),
    (["--num_samples", "0"], "--num_samples 0: must be at least 1"),
    (["--eval", "test"], "has no test split: it holds train, val"),
    (["--eval", "validation"], "--eval validation: give val, test or the path of a text file"),
]


@pytest.mark.parametrize(
    "flags, expected", SAMPLE_CASES, ids=[" ".join(f) for f, _ in SAMPLE_CASES]
)
def test_a_bad_sampling_request_is_refused_in_one_line(flags, expected, flags_of, corpus):
    refusal(["--ckpt", str(corpus / "out/ckpt.pt"), "--device", "cpu", *flags], "sample.py",
            expected, flags_of)


def test_perplexity_of_an_empty_file_is_refused_not_nan(flags_of, corpus, tmp_path):
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    refusal(["--ckpt", str(corpus / "out/ckpt.pt"), "--eval", str(tmp_path / "empty.txt")],
            "sample.py", "holds 0 token(s): a perplexity needs at least 2", flags_of)


def test_bad_data_settings_are_refused_in_one_line(flags_of, corpus, tmp_path):
    refusal(["--data_dir", str(tmp_path / "d"), "--text", str(corpus / "text.txt"),
             "--val_fraction", "1.5"], "data.py", "--val_fraction 1.5: must be between 0 and 1",
            flags_of)
    refusal(["--data_dir", str(tmp_path / "d"), "--text", str(tmp_path / "missing.txt")],
            "data.py", "no such file", flags_of)
    (tmp_path / "tiny.txt").write_text("Hi.", encoding="utf-8")
    out = ["--out_dir", str(tmp_path / "out")]  # (a refused run still holds its out_dir's lock)
    message = refusal(["--data_dir", str(tmp_path / "tiny"), "--text", str(tmp_path / "tiny.txt"),
                       "--no_clean", *out], "train.py", "cannot be split", flags_of)
    refusal(["--data_dir", str(tmp_path / "tiny2"), "--text", str(tmp_path / "tiny.txt"), *out],
            "train.py", "cleaning kept none of the 1 documents", flags_of)
    assert "python data.py" in message  # the fix is a command that has the flag it names


def test_a_vocabulary_smaller_than_the_tokenizer_is_refused(flags_of, corpus, tmp_path):
    refusal(["--data_dir", str(corpus / "prepared"), "--out_dir", str(tmp_path), *TINY,
             "--vocab_size", "1000"], "train.py", "--vocab_size 1000: gpt2's 50,257 ids", flags_of)


def test_fsdp_without_torchrun_is_refused(flags_of, corpus, tmp_path):
    refusal(["--data_dir", str(corpus / "prepared"), "--out_dir", str(tmp_path), *TINY, "--fsdp"],
            "train.py", "--fsdp shards the model across the processes that torchrun starts",
            flags_of)


# --tp and --pp with what cannot work: (processes torchrun started, flags, the refusal). Refused
# before the processes join (parallel.check), so no process group is needed here.
MODEL_PARALLEL = [
    (None, ["--tp", "2"], "--tp 2 splits the model across the processes torchrun starts: run "
     "train.py under torchrun, 2 processes"),
    (None, ["--pp", "2"], "--pp 2 splits the model across the processes torchrun starts"),
    (2, ["--tp", "3", "--n_head", "4"], "--tp 3 must divide --n_head 4: each process computes "
     "whole heads"),
    (3, ["--tp", "2"], "--tp 2 must divide the 3 processes"),
    (4, ["--tp", "2"], "--tp 2 on 4 processes: the 2 groups would split the data, which needs "
     "--fsdp"),
    (4, ["--pp", "2"], "--pp 2 needs 2 processes, one per stage, not 4"),
    (2, ["--pp", "2", "--grad_accum_steps", "1"], "--grad_accum_steps 1: a pipeline of 2 stages "
     "needs at least 2 micro-batches per step"),
    (5, ["--pp", "5", "--n_layer", "4"], "--pp 5: more stages than the 4 Blocks (--n_layer): "
     "use at most 4"),
    (2, ["--tp", "2", "--optimizer", "muon"], "--tp 2 with Muon: its state is not gathered into "
     "checkpoints, and under --tp it would orthogonalise shares of matrices"),
    (2, ["--pp", "2", "--model", "bert"], "--pp 2 with Muon"),  # (BERT's default optimizer)
    (2, ["--tp", "2", "--model", "t5"], "--tp 2 splits the Blocks of a GPT or a BERT; --model t5 "
     "has more than one stack"),
    (4, ["--tp", "2", "--pp", "2"], "--tp with --pp needs a 3-D mesh"),
    (2, ["--pp", "2", "--fsdp"], "--pp with --fsdp is not built here"),
    (2, ["--tp", "2", "--dropout", "0.1"], "--tp with --dropout"),
    (2, ["--tp", "2", "--dtype", "float16"], "--tp: float16 would need a loss scaler across the "
     "processes; use --dtype bfloat16, or float32"),
]


@pytest.mark.parametrize("world, flags, expected", MODEL_PARALLEL,
                         ids=[" ".join(f) for _, f, _ in MODEL_PARALLEL])
def test_a_model_parallel_layout_that_cannot_work_is_refused_in_one_line(
        world, flags, expected, flags_of, corpus, tmp_path, monkeypatch):
    if world:  # as torchrun would have started this process, the first of world
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("WORLD_SIZE", str(world))
    refusal(["--data_dir", str(corpus / "prepared"), "--out_dir", str(tmp_path), *TINY, *flags],
            "train.py", expected, flags_of)


def test_weights_and_data_of_different_tokenizers_are_refused(flags_of, corpus, tmp_path):
    """A checkpoint or GPT-2's weights learned other ids than the data's trained tokenizer gives."""
    refusal(
        [
            "--text", str(corpus / "text.txt"), "--data_dir", str(tmp_path / "small"),
            "--tokenizer_size", "100",
        ],
        "data.py",
        "--tokenizer_size 100: a byte-level BPE needs",
        flags_of,
    )
    trained = tmp_path / "trained"
    data.prepare(trained, text=str(corpus / "text.txt"), clean_text=False, vocab_size=300)
    refusal(["--data_dir", str(trained), "--init_from", "gpt2", "--out_dir", str(tmp_path / "g")],
            "train.py", "--init_from gpt2: GPT-2 knows GPT-2's tokens", flags_of)
    shutil.copytree(corpus / "out", tmp_path / "out")  # trained with GPT-2's tokenizer
    refusal(["--init_from", "resume", "--out_dir", str(tmp_path / "out"), "--data_dir",
             str(trained), "--max_steps", "40"], "train.py", "cannot resume: the checkpoint was "
            "trained with another tokenizer", flags_of)
    refusal(["--ckpt", str(tmp_path / "out/ckpt.pt"), "--eval", "val", "--data_dir", str(trained)],
            "sample.py", f"--eval val: {trained} is tokenized with another tokenizer", flags_of)


# 2. A folder never changes what it holds -------------------------------------------------------

def test_a_folder_refuses_a_corpus_it_does_not_hold(flags_of, corpus, tmp_path):
    (tmp_path / "mine.txt").write_text("Another text entirely. " * 200, encoding="utf-8")
    message = refusal(
        ["--data_dir", str(corpus / "prepared"), "--text", str(tmp_path / "mine.txt")],
        "data.py",
        f"holds {corpus / 'text.txt'}",
        flags_of,
    )
    assert f"--data_dir {corpus / 'mine'}" in message  # the folder to use instead
    from test_data import write_wikitext
    texts, expected = write_wikitext(tmp_path / "wiki")
    data.prepare(tmp_path / "wiki", expected=expected)
    with pytest.raises(data.DataError, match="holds WikiText-2; prepare --text .* of its own"):
        data.prepare(tmp_path / "wiki", text=str(tmp_path / "mine.txt"))
    assert prepared.read_meta(tmp_path / "wiki")["source"]["wikitext"]  # still WikiText-2


def test_a_prepared_folder_is_byte_identical_after_every_refused_command(flags_of, corpus,
                                                                         tmp_path):
    """Another tokenizer (by data.py, by a fresh run, by a resumed one), GPT-2's for a trained
    folder, another corpus, a vocabulary too small: each refused in one line, and the folders'
    files (the .bin files, meta.json, the tokenizer) are byte for byte as they were."""
    gpt2, small = corpus / "prepared", corpus / "small"  # GPT-2's tokens; a 300-id tokenizer's

    def files():
        return {p: p.read_bytes() for folder in (gpt2, small) for p in sorted(folder.iterdir())}

    before = files()
    (tmp_path / "mine.txt").write_text("Another text entirely. " * 200, encoding="utf-8")
    shutil.copytree(corpus / "out", tmp_path / "resumed")  # a checkpoint trained on gpt2's tokens
    out = ["--out_dir", str(tmp_path / "out"), *TINY]
    other = f"holds the tokens of gpt2, and checkpoints trained on them need them as they are"
    for argv, program, expected in [
        (["--data_dir", str(gpt2), "--tokenizer_size", "400"], "data.py",
         f"--tokenizer_size 400: --data_dir {gpt2} {other}: prepare it into a folder of its own, "
         f"--data_dir {gpt2}-bpe400"),
        (["--data_dir", str(gpt2), "--tokenizer_size", "1024", *out], "train.py",
         f"--data_dir {gpt2}-bpe1k"),
        (["--init_from", "resume", "--out_dir", str(tmp_path / "resumed"), "--data_dir", str(gpt2),
          "--tokenizer_size", "400", "--max_steps", "2"], "train.py", other),
        (["--data_dir", str(small), "--tokenizer_size", "512", *out], "train.py",
         f"--tokenizer_size 512: --data_dir {small} holds the tokens of bpe-"),
        (["--model", "bert", "--data_dir", str(small), "--tokenizer_size", "0", *out], "train.py",
         f"--tokenizer_size 0: --data_dir {small} holds the tokens of a trained tokenizer"),
        (["--data_dir", str(gpt2), "--text", str(tmp_path / "mine.txt")], "data.py",
         f"--data_dir {gpt2} holds {corpus / 'text.txt'}"),
        (["--data_dir", str(gpt2), "--vocab_size", "1000", *out], "train.py",
         "--vocab_size 1000: gpt2's 50,257 ids"),
    ]:
        refusal(argv, program, expected, flags_of)
        assert files() == before, f"{program} {argv} changed a prepared folder"


def test_two_runs_preparing_one_folder_at_once_take_turns(tmp_path):
    """Two data.py processes started together on one folder, with a tokenizer to train (the
    spool file): one prepares, the other waits and finds the folder up to date; both succeed, and
    no .part file or lock is left."""
    text = " ".join(f"Sentence {i} of a text that two runs prepare at once." for i in range(3000))
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    cmd = [sys.executable, "data.py", "--text", str(tmp_path / "t.txt"), "--data_dir",
           str(tmp_path / "d"), "--tokenizer_size", "400", "--no_clean"]
    runs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err for _, err in outputs]
    tokenized = [out for out, _ in outputs if "up to date" not in out]
    assert len(tokenized) == 1, outputs  # one of them did the work, once
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "meta.json", "tokenizer.bpe", "train.bin", "val.bin"]
    assert prepared.complete(tmp_path / "d", prepared.read_meta(tmp_path / "d"))


def test_a_prepared_folder_that_cannot_be_written_is_read_as_it_is(corpus, monkeypatch):
    """A shared folder, prepared, read-only for this user: no lock file can be made there, and
    none is needed to read it. (Simulated: the tests may run as root, who may write anywhere.)"""
    before = prepared.read_meta(corpus / "prepared")
    monkeypatch.setattr(prepared.os, "access", lambda path, mode: False)
    monkeypatch.setattr(runtime, "locked", lambda *args: pytest.fail("a lock was taken"))
    assert data.prepare(corpus / "prepared") == before  # up to date, read as it is


def test_a_prepared_folder_trains_after_its_text_moved(tmp_path):
    (tmp_path / "notes.txt").write_text("Notes about birds and trees. " * 300, encoding="utf-8")
    data.prepare(tmp_path / "prepared", text=str(tmp_path / "notes.txt"), clean_text=False)
    (tmp_path / "notes.txt").rename(tmp_path / "moved.txt")
    assert run_quietly(["--data_dir", str(tmp_path / "prepared"), "--out_dir", str(tmp_path / "o"),
                        *TINY, "--max_steps", "2"]) is None
    assert load_checkpoint(tmp_path / "o/ckpt.pt")["step"] == 2


@pytest.mark.parametrize("fault", ["data_dir is a file", "damaged meta.json", "out_dir is a file",
                                   "damaged tokenizer", "empty out_dir", "empty data_dir"])
def test_a_broken_folder_is_one_clear_line(fault, flags_of, corpus, tmp_path):
    prepared, out = str(corpus / "prepared"), str(tmp_path / "out")
    if fault == "data_dir is a file":
        prepared = str(corpus / "text.txt")
        expected = f"--data_dir {prepared} is a file, not a folder"
    elif fault == "damaged meta.json":
        prepared = str(tmp_path / "copy")
        Path(prepared).mkdir()
        (Path(prepared) / "meta.json").write_text('{"tokens": {"train": 12')  # cut short
        expected = "meta.json is damaged: delete it and run again"
    elif fault == "damaged tokenizer":
        shutil.copytree(corpus / "small", tmp_path / "copy")  # a folder of a trained tokenizer
        prepared = str(tmp_path / "copy")
        with open(Path(prepared) / "tokenizer.bpe", "a") as f:
            f.write("\x00\x01 not a token\n")
        expected = f"{prepared}/tokenizer.bpe is damaged ("
    elif fault.startswith("empty"):  # "" would be the current folder: ckpt.pt in the repository
        prepared, out = ("", out) if fault == "empty data_dir" else (prepared, "")
        expected = f"--{fault.split()[1]} is empty: name a folder"
    else:
        Path(out).write_text("not a folder")
        expected = f"--out_dir {out} is a file, not a folder"
    refusal(["--data_dir", prepared, "--out_dir", out, *TINY], "train.py", expected, flags_of)


def test_a_file_system_fault_names_the_path_and_the_cause(corpus, tmp_path, monkeypatch):
    def read_only(stream, path, enc):
        raise PermissionError(errno.EACCES, "Permission denied", str(path) + ".part")

    monkeypatch.setattr(data, "tokenize_to_file", read_only)
    (tmp_path / "t.txt").write_text("Some words. " * 50, encoding="utf-8")
    message = run_quietly(["--text", str(tmp_path / "t.txt"), "--data_dir", str(tmp_path / "ro")],
                          "data.py")
    assert message == f"error: {tmp_path / 'ro' / 'train.bin.part'}: Permission denied"


@pytest.mark.parametrize("program", ["train.py", "sample.py", "data.py"])
def test_ctrl_c_while_a_program_starts_ends_quietly(program):
    """Ctrl-C while torch is still loading (a second or two) ends like Ctrl-C later: status 130,
    no traceback."""
    started = subprocess.Popen([sys.executable, program, "--help"], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.2)  # the interpreter is up, torch not yet imported
    started.send_signal(signal.SIGINT)
    _, err = started.communicate(timeout=60)
    assert started.returncode == 130 and "Traceback" not in err, err[-500:]


def test_a_full_disk_while_tokenizing_names_the_file_and_leaves_no_part(tmp_path, monkeypatch):
    real = data.write_tokens

    def full_after_some(stream, f, enc, bar):  # the first batch of ids lands, then the disk fills
        real(iter(["Some words."]), f, enc, bar)
        raise OSError(errno.ENOSPC, "No space left on device", f.name)

    monkeypatch.setattr(data, "write_tokens", full_after_some)
    (tmp_path / "t.txt").write_text("Some words. " * 50, encoding="utf-8")
    message = run_quietly(["--text", str(tmp_path / "t.txt"), "--data_dir", str(tmp_path / "d")],
                          "data.py")
    assert message == f"error: {tmp_path / 'd' / 'train.bin.part'}: No space left on device"
    assert not list((tmp_path / "d").glob("*.part"))  # no half-written file stays behind


# 3. Advice that works ---------------------------------------------------------------------------

def test_ctrl_c_says_whether_there_is_a_checkpoint_to_resume(corpus, tmp_path, monkeypatch):
    real, calls = train.train_step, []

    def interrupted_at_step(n):
        def step(*args):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(*args)
        return step

    flags = [
        "--data_dir", str(corpus / "prepared"), *TINY, "--max_steps", "9", "--ckpt_interval", "2",
    ]
    monkeypatch.setattr(train, "train_step", interrupted_at_step(1))
    message = run_quietly([*flags, "--out_dir", str(tmp_path / "a")])
    assert message == "error: interrupted during step 1; no checkpoint was written yet: start again"
    calls.clear()
    monkeypatch.setattr(train, "train_step", interrupted_at_step(5))
    message = run_quietly([*flags, "--out_dir", str(tmp_path / "b")])
    assert message.startswith("error: interrupted during step 5; ")
    assert message.endswith("ckpt.pt holds step 4: go on from there with --init_from resume")
    assert load_checkpoint(tmp_path / "b/ckpt.pt")["step"] == 4
    assert not list((tmp_path / "b").glob("*.tmp"))


# 4. The log survives a resume -------------------------------------------------------------------

def test_a_damaged_log_line_loses_only_itself(corpus, tmp_path, capsys):
    flags = ["--data_dir", str(corpus / "prepared"), "--out_dir", str(tmp_path), *TINY,
             "--max_steps", "6"]
    train.main([*flags, "--stop_at", "4"])
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    lines[1] = lines[1][: len(lines[1]) // 2]  # step 2's record, cut in the middle
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + "\n")
    train.main([*flags, "--init_from", "resume"])
    assert [r["step"] for r in log(tmp_path)] == [1, 3, 4, 5, 6]
    printed = capsys.readouterr()
    assert "line(s) 2 could not be read" in printed.out + printed.err


# 5. Faults: a full disk, a busy --out_dir, kill -9 ----------------------------------------------

@pytest.mark.parametrize("fault", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                 "allocate memory: you tried to allocate 77266944000 bytes. Error code 12"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                           "capacity of 79.10 GiB"),
    MemoryError()])
def test_running_out_of_memory_is_one_line_with_the_fix(fault, corpus, tmp_path, flags_of,
                                                        monkeypatch):
    def step(*args):
        raise fault
    monkeypatch.setattr(train, "train_step", step)  # as a batch too big for the machine would
    message = refusal(["--data_dir", str(corpus / "prepared"), "--out_dir", str(tmp_path), *TINY],
                      "train.py", "error: out of memory", flags_of)
    assert "a lower --batch_size and a higher --grad_accum_steps" in message
    assert {RuntimeError: "(asked for 77266944000 bytes)", MemoryError: "out of memory: python",
            torch.OutOfMemoryError: "(asked for 2.00 GiB)"}[type(fault)] in message
    monkeypatch.setattr(train, "train_step", lambda *args: 1 / 0)  # a fault of the program itself
    with pytest.raises(ZeroDivisionError):  # keeps its traceback
        runtime.run_program(train.main, ["--data_dir", str(corpus / "prepared"), "--out_dir",
                                         str(tmp_path / "2"), *TINY])


def test_a_full_disk_keeps_the_last_checkpoint_and_leaves_no_temporary_file(corpus, tmp_path,
                                                                           monkeypatch):
    real_save, saves = torch.save, []

    def disk_fills_up(obj, f):
        saves.append(1)
        if len(saves) == 2:  # the second checkpoint: half of it fits, then the disk is full
            f.write(b"\0" * 100_000)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", disk_fills_up)
    message = run_quietly(["--data_dir", str(corpus / "prepared"), "--out_dir", str(tmp_path),
                           *TINY, "--max_steps", "3", "--ckpt_interval", "1"])
    assert message == (f"error: cannot write {tmp_path / 'ckpt.pt'} (No space left on device); "
                       f"the one from before is kept: free some space, then go on with "
                       f"--init_from resume")
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "ckpt.pt")["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "log.jsonl"]


def small_run(corpus, out_dir, *flags):
    """train.py's arguments for a tiny run on the 300-id folder."""
    return ["--data_dir", str(corpus / "small"), "--out_dir", str(out_dir), *TINY, *flags]


def launch(corpus, out_dir, *flags):
    cmd = [sys.executable, "train.py", *small_run(corpus, out_dir, *flags)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def wait_for(condition, seconds=60):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_a_busy_out_dir_is_refused_and_the_first_run_ends_leaving_clean_output_and_no_lock(
        corpus, tmp_path, flags_of):
    first = launch(corpus, tmp_path, "--max_steps", "100", "--ckpt_interval", "1")  # busy a while
    try:
        wait_for(lambda: (tmp_path / "ckpt.pt").exists())
        refusal(["--data_dir", str(corpus / "small"), "--out_dir", str(tmp_path),
                 "--init_from", "resume"], "train.py",
                f"--out_dir {tmp_path} is in use by another run (process id {first.pid})", flags_of)
    finally:
        assert first.wait(timeout=120) == 0, first.stderr.read()
    assert [r["step"] for r in log(tmp_path)] == list(range(1, 101))
    assert load_checkpoint(tmp_path / "ckpt.pt")["step"] == 100
    assert not (tmp_path / "run.lock").exists()  # the lock went with the run
    # stderr to a pipe, not a terminal: no progress bar redrawn with \r or cursor moves (ESC [A)
    written = first.stderr.read()
    assert "\x1b" not in written and "\r" not in written, repr(written[:300])


def test_killed_at_random_moments_a_run_resumes_to_the_unbroken_result(corpus, tmp_path):
    # three kills, each at most 0.2 s after a checkpoint (and the 0.05 s of a poll), land well
    # before step 150: these tiny steps take some 15 ms on a fast CPU, so a kill may come 20
    # steps after the checkpoint it waited for (60 steps were too few: a run could end first)
    steps = 150
    flags = ["--max_steps", str(steps), "--ckpt_interval", "1", "--dropout", "0.1"]
    train.main(small_run(corpus, tmp_path / "unbroken", *flags))
    out, rng, kills = tmp_path / "killed", random.Random(0), 0
    while kills < 3:
        resume = ["--init_from", "resume"] if (out / "ckpt.pt").exists() else []
        before = load_checkpoint(out / "ckpt.pt")["step"] if resume else 0
        proc = launch(corpus, out, *flags, *resume)
        wait_for(lambda: (out / "ckpt.pt").exists() and proc.poll() is None
                 and load_checkpoint(out / "ckpt.pt")["step"] > before)
        time.sleep(rng.uniform(0, 0.2))  # then kill it anywhere: in a step, a save, the log
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        assert load_checkpoint(out / "ckpt.pt")["step"] < steps  # loads after every kill
    train.main(small_run(corpus, out, *flags, "--init_from", "resume"))  # here: no new process
    unbroken, resumed = (load_checkpoint(tmp_path / d / "ckpt.pt") for d in ("unbroken", "killed"))
    assert all(torch.equal(unbroken["model"][k], resumed["model"][k]) for k in unbroken["model"])
    assert [r["loss"] for r in log(tmp_path / "unbroken")] == [r["loss"] for r in log(out)]
