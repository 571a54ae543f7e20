"""
prepared.py: what a prepared data folder holds, and whether it is up to date. Not a lesson: the
bookkeeping that keeps data.py about text and tokens; data.prepare calls it before and after it
tokenizes.

  * one run at a time prepares a folder (`lock`); another waits for it;
  * meta.json beside the .bin files: the tokenizer, the token counts of each split, and the
    source the folder was made from (`read_meta`, `write_meta`, `complete`);
  * the source: WikiText-2's files or your own text, each file's SHA-256, the share held out for
    val, whether it was cleaned, the size of a trained tokenizer. `plan` compares it with what the
    folder remembers and says whether to tokenize; a folder never silently changes corpus
    (`check_same_source`) or tokenizer (`check_same_tokenizer`), and a text that moved away leaves
    its .bin files usable;
  * which tokenizer a run asks a folder for (`tokenizer_size`): a prepared folder keeps its own;
  * --text's files, checked (`text_files`); the cleaning report (`report_cleaning`);
  * the spool: your cleaned text kept in a file while a tokenizer trains on its first part, so
    that it is cleaned only once (`write_spool`, `read_spool`).

Run:       python data.py        (prepares data/wikitext-2, or says it is up to date)
Read next: data.py.
"""

import contextlib
import json
import os
import re
from pathlib import Path

import clean
import fetch
import runtime
from fetch import DataError


def lock(data_dir):
    """Hold data_dir/prepare.lock while a run prepares the folder. A second run that prepares it
    at the same time waits, then finds it up to date (runtime.locked says how the lock works). A
    folder this process may not write to (a shared, prepared one) is only read: no lock."""
    def busy(holder):
        print(f"data: {data_dir} is being prepared by process {holder}; waiting for it")
    if not os.access(data_dir, os.W_OK):
        return contextlib.nullcontext()
    return runtime.locked(Path(data_dir) / "prepare.lock", busy)


def plan(data_dir, text, *, val_fraction, clean_text, vocab_size, wikitext):
    """(data_dir's meta.json or None, the source to tokenize, its files): your text's .txt files,
    or WikiText-2's {split: path} (wikitext: fetch.wikitext's settings). The source is None where
    the folder's .bin files serve as they are: up to date, or their text is gone. Settings given
    as None are the ones the folder remembers, or the defaults: val_fraction 0.1, clean_text True
    (a folder made before cleaning existed stays uncleaned), GPT-2's tokenizer."""
    old = read_meta(data_dir)
    remembered = old["source"] if old else {}
    text = check_same_source(data_dir, remembered, text)
    check_same_tokenizer(data_dir, old, vocab_size)
    ready = old is not None and complete(data_dir, old)
    if text and not Path(text).exists() and ready:  # the text moved; what was made from it stays
        print(f"data: {text} is gone; using the .bin files prepared from it in {data_dir}/")
        return old, None, None
    if clean_text is None:
        clean_text = remembered.get("clean", "text" not in remembered)
    if text:
        files = text_files(text)
        source = {"text": str(Path(text).resolve()),
                  "val_fraction": val_fraction or remembered.get("val_fraction", 0.1),
                  "clean": clean_text,
                  "sha256": {str(f.resolve()): fetch.sha256(f) for f in files}}
    else:
        files = fetch.wikitext(data_dir, **wikitext, download=not ready)
        if files is None:  # the source files are gone, but what was made from them is still here
            print(f"data: WikiText-2 files not in {data_dir}/; using the prepared .bin files")
            return old, None, None
        source = {"wikitext": {s: p.name for s, p in files.items()},
                  "sha256": {s: fetch.sha256(p) for s, p in files.items()}}
    if vocab_size or remembered.get("vocab_size"):
        source["vocab_size"] = check_vocab_size(vocab_size or remembered["vocab_size"])
    if ready and old["source"] == source:
        print(f"data: {data_dir}/*.bin are up to date")
        return old, None, None
    return old, source, files


def tokenizer_size(cfg, given):
    """The tokenizer train.py asks cfg.data_dir for (0: GPT-2's; None: the one the folder has),
    given the flags of the command line. A folder already prepared keeps the one it was made with
    unless --tokenizer_size is given, so `--model bert --data_dir data/wikitext-2` trains on
    GPT-2's tokens as they are; asking it for another is refused (check_same_tokenizer)."""
    if read_meta(cfg.data_dir) is not None and "tokenizer_size" not in given:
        return None
    return cfg.tokenizer_size


def write_meta(data_dir, enc, tokens, source, seconds):
    """Record what data_dir now holds in meta.json; returns the record."""
    meta = {"tokenizer": enc.name, "vocab_size": enc.n_vocab, "eot_id": enc.eot_token,
            "dtype": "uint16", "tokens": tokens, "source": source, "seconds": round(seconds, 2)}
    (Path(data_dir) / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def read_meta(data_dir):
    """What data_dir/meta.json says the folder holds, or None where there is no meta.json."""
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text())
        meta["tokens"].items(), meta["source"].get  # what everything else relies on
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DataError(f"{path} is damaged: delete it and run again (the .bin files beside it "
                        f"are made again)") from None
    return meta


def complete(data_dir, meta):
    """Whether every .bin file meta.json lists is there, with as many tokens as it says."""
    return all((data_dir / f"{s}.bin").exists() and (data_dir / f"{s}.bin").stat().st_size == 2 * n
               for s, n in meta["tokens"].items())


def check_same_source(data_dir, remembered, text):
    """The text a folder is (to be) prepared from: the one asked for, else the one it remembers
    (None: WikiText-2). Asking a folder for another corpus than the one it holds is refused."""
    held = remembered.get("text") or ("WikiText-2" if "wikitext" in remembered else None)
    if text and held and (held == "WikiText-2" or Path(text).resolve() != Path(held)):
        elsewhere = Path(data_dir).parent / Path(text).stem
        raise DataError(f"--data_dir {data_dir} holds {held}; prepare --text {text} in a folder "
                        f"of its own: --data_dir {elsewhere}")
    return text or remembered.get("text")


def check_same_tokenizer(data_dir, meta, vocab_size):
    """A prepared folder keeps its tokenizer. Asking it for another (--tokenizer_size N, or 0 for
    GPT-2's; None asks for none) is refused before anything is written: tokenized again in place,
    it would strand every checkpoint trained on its tokens. Another tokenizer goes into a folder
    of its own."""
    if meta is None or vocab_size is None or vocab_size == meta["source"].get("vocab_size", 0):
        return
    if not vocab_size:
        raise runtime.ConfigError(f"--tokenizer_size 0: --data_dir {data_dir} holds the tokens of "
                                  f"a trained tokenizer ({meta['tokenizer']}); prepare GPT-2's in "
                                  f"a folder of its own (another --data_dir)")
    size = f"{vocab_size // 1024}k" if vocab_size % 1024 == 0 else str(vocab_size)
    elsewhere = re.sub(r"-bpe\d+k?$", "", str(data_dir)) + f"-bpe{size}"
    raise runtime.ConfigError(f"--tokenizer_size {vocab_size}: --data_dir {data_dir} holds the "
                              f"tokens of {meta['tokenizer']}, and checkpoints trained on them "
                              f"need them as they are: prepare it into a folder of its own, "
                              f"--data_dir {elsewhere}")


def check_vocab_size(n):
    if not 2 + 256 <= n <= 1 << 16:
        raise runtime.ConfigError(f"--tokenizer_size {n}: a byte-level BPE needs 256 byte tokens "
                                  f"and 2 special ones, and .bin files hold ids below 65,536: "
                                  f"give a number from 258 to 65536")
    return n


def text_files(text):
    """The .txt files --text names: one file, or every .txt file under a folder."""
    path = Path(text)
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    if not path.exists() or not files:
        raise DataError(f"--text {text}: no such file, or a folder without .txt files")
    if not any(f.stat().st_size for f in files):
        raise DataError(f"--text {text}: the files are empty; there is no text to learn from")
    return files


def report_cleaning(report, data_dir):
    """Print what cleaning removed and write it to data_dir/cleaning.json."""
    clean.print_report(report)
    path = Path(data_dir) / "cleaning.json"
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(f"cleaning: report in {path}")


def write_spool(stream, path):
    """Write a stream of text pieces to path as JSON lines (a document's end, data.END, as null);
    returns its number of characters."""
    chars = 0
    with open(path, "w", encoding="utf-8") as f:
        for item in stream:
            f.write(json.dumps(item) + "\n")
            chars += len(item) if item is not None else 0
    return chars


def read_spool(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)
