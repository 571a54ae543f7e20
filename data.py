"""
data.py: from text on disk to batches of token ids.

The pipeline, one function per step:
  1. Get the corpus: WikiText-2 (Merity et al. 2016), downloaded once into the data folder
     (`fetch_wikitext`), or your own .txt file or folder of .txt files.
  2. Split it into documents (`wikitext_documents`).
  3. Tokenize with GPT-2's byte-pair encoding (tiktoken's "gpt2"): frequent byte sequences are merged
     into single ids, so common words are one token and rare words a few; any text can be encoded.
  4. Concatenate the documents with <|endoftext|> (id 50256) after each, so the model learns where
     one text ends and an unrelated one begins, and write the ids as uint16 (every id < 65536) to
     train.bin / val.bin / test.bin, with meta.json beside them (`prepare`).
  5. Read blocks of block_size tokens from the files through numpy.memmap: the OS pages in only the
     bytes a batch touches, so a corpus far bigger than RAM trains the same way (`get_batch`,
     `get_mlm_batch`, `eval_batches`).

What WikiText-2 looks like. Each line of wiki.train.raw is a paragraph, a heading or blank:

     = Valkyria Chronicles III =
    (blank)
     Senjō no Valkyria 3 : Unrecorded Chronicles ( Japanese : 戦場のヴァルキュリア3 , lit . ...
    (blank)
     = = Gameplay = =

The text was tokenized by its authors: spaces around punctuation (" , ", " 's"), and " @-@ ",
" @,@ ", " @.@ " for a hyphen, a thousands separator and a decimal point inside a word or number
("real @-@ time", "1 @,@ 000"). The v1 variant (wiki.*.tokens) also replaces rare words by <unk>.
A top-level heading " = Title = " starts a new article; "= = Section = =" does not. That rule finds
629 / 60 / 62 documents in train / valid / test (the dataset has 600 / 60 / 60 articles; a few
contain a line formatted like a title).

What we keep: everything, byte for byte, except that articles become documents separated by
<|endoftext|> and whitespace-only documents are dropped. WikiText is a benchmark: perplexity means
something only on the published text, and a model that learns " @-@ " loses nothing by it (the
markers are cheap, frequent tokens). Undoing the artefacts is an exercise (EXERCISES.md).

Memory stays bounded whatever the corpus size: files are read line by line (WikiText) or in 1 MB
pieces (your text), tokenized a few MB at a time on several threads, and appended to the .bin file;
batches then read from the memmap. The same code prepares a 10 GB corpus in 10 GB of disk.

Run:       python data.py                               (WikiText-2 into data/wikitext-2)
           python data.py --text notes.txt --data_dir data/notes   (your own text, 10% held out)
Read next: train.py, the loop that consumes these batches.
"""

import argparse
import functools
import hashlib
import http.client
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mlm import mask_tokens
from model import EOT_ID

SPLITS = ("train", "val", "test")
WIKITEXT = {  # the two published variants: their zip and the names of the three split files in it
    "raw": {"zip": "wikitext-2-raw-v1.zip", "files": ("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw")},
    "v1": {"zip": "wikitext-2-v1.zip", "files": ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens")},
}
MIRRORS = ("https://wikitext.smerity.com/",)  # the dataset author's own host
LINE_COUNTS = {"train": 36718, "val": 3760, "test": 4358}  # as published, the same in both variants
SHA256 = {  # the v1 files (see ../shared/data/README.md); no offline copy of the raw ones to hash
    "wiki.train.tokens": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
    "wiki.valid.tokens": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
    "wiki.test.tokens": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
}
TEXT_BATCH = 4 << 20  # characters of text handed to the tokenizer at once (a few tens of MB of ids)


class DataError(Exception):
    """Something about the data the user must fix; the message says what and how."""


# 1. Getting WikiText-2 ----------------------------------------------------------------------------

def fetch_wikitext(data_dir, variant="raw", mirrors=MIRRORS, expected=None, download=True):
    """Paths of the train/val/test files of WikiText-2 in data_dir: the split files if they are
    there (either variant), else extracted from a zip that is there, else from a downloaded zip.
    expected: the line counts and SHA-256s to check against (default: the published ones).
    With download=False, return None instead of downloading."""
    expected = expected or {"lines": LINE_COUNTS, "sha256": SHA256}
    data_dir = Path(data_dir)
    variants = (variant, "v1" if variant == "raw" else "raw")  # the one asked for first
    for v in variants:
        paths = [data_dir / name for name in WIKITEXT[v]["files"]]
        if all(p.exists() for p in paths):
            return check_splits(dict(zip(SPLITS, paths)), expected)
    for v in variants:
        if (data_dir / WIKITEXT[v]["zip"]).exists():
            return extract_splits(data_dir / WIKITEXT[v]["zip"], v, expected)
    if not download:
        return None
    zip_path = data_dir / WIKITEXT[variant]["zip"]
    reasons = []
    for mirror in mirrors:
        try:
            download_file(mirror + zip_path.name, zip_path)
            return extract_splits(zip_path, variant, expected)
        except DataError as e:
            zip_path.unlink(missing_ok=True)  # a damaged download must not be found next time
            reasons.append(str(e))
    raise DataError(f"WikiText-2 is not in {data_dir}/ and could not be downloaded ({'; '.join(reasons)}). "
                    f"Put {zip_path.name} (or its files {', '.join(WIKITEXT[variant]['files'])}) into "
                    f"{data_dir}/; get it from {MIRRORS[0]}{zip_path.name}")


def download_file(url, dest, timeout=30, retries=3):
    """Fetch url into dest with a progress bar. Bytes go to dest.part, renamed only once complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    error = None
    for attempt in range(1, retries + 1):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as f:
                total = int(response.headers.get("Content-Length", 0)) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}") as bar:
                    while chunk := response.read(1 << 20):
                        f.write(chunk)
                        bar.update(len(chunk))
            if total is not None and part.stat().st_size != total:
                raise OSError(f"got {part.stat().st_size} of {total} bytes")
            os.replace(part, dest)
            return
        except urllib.error.HTTPError as e:  # the server answered: asking again will not help
            error = e
            break
        except (OSError, ValueError, http.client.HTTPException) as e:  # no connection, timeout, cut short
            error = e
            if attempt < retries:
                time.sleep(attempt / 2)
    part.unlink(missing_ok=True)
    raise DataError(f"{url}: {error}")


def extract_splits(zip_path, variant, expected):
    """Extract the three split files of `variant` from zip_path into its folder, checked."""
    names = WIKITEXT[variant]["files"]
    try:
        with zipfile.ZipFile(zip_path) as z:
            members = {Path(m).name: m for m in z.namelist()}
            if not all(n in members for n in names):
                raise DataError(f"{zip_path} does not hold {', '.join(names)}: not WikiText-2 ({variant})")
            paths = {}
            for split, name in zip(SPLITS, names):
                paths[split] = zip_path.parent / name
                part = paths[split].with_name(name + ".part")
                with z.open(members[name]) as src, open(part, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                os.replace(part, paths[split])
    except (zipfile.BadZipFile, EOFError, OSError) as e:  # a zip cut short or damaged
        for name in names:
            (zip_path.parent / (name + ".part")).unlink(missing_ok=True)
        raise DataError(f"{zip_path} is damaged ({e}); delete it and run again") from None
    try:
        return check_splits(paths, expected)
    except DataError:
        for p in paths.values():
            p.unlink(missing_ok=True)  # a wrong zip leaves no wrong split files behind
        raise


def check_splits(paths, expected):
    """Refuse split files with the wrong number of lines or, where one is known, the wrong SHA-256."""
    for split, path in paths.items():
        with open(path, "rb") as f:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        if lines != expected["lines"][split]:
            raise DataError(f"{path} has {lines} lines, WikiText-2's {split} split has {expected['lines'][split]}: "
                            f"the file is truncated or not WikiText-2; delete it and run again")
        if path.name in expected["sha256"] and sha256(path) != expected["sha256"][path.name]:
            raise DataError(f"{path} is not the published file (SHA-256 differs); delete it and run again")
    return paths


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# 2. Documents -------------------------------------------------------------------------------------

TITLE = re.compile(r" = [^=].* = \n?")  # " = Valkyria Chronicles III = ", not " = = Gameplay = = "


def wikitext_documents(lines):
    """Group WikiText lines into articles, each starting at a top-level title line."""
    doc = []
    for line in lines:
        if TITLE.fullmatch(line) and doc:
            yield "".join(doc)
            doc = []
        doc.append(line)
    yield "".join(doc)


def text_pieces(path, piece_chars=1 << 20):
    """A text file in pieces of about piece_chars characters, each cut just before a space that
    follows a non-space. GPT-2's pre-tokenizer never joins such a space to what precedes it, so the
    pieces tokenize to exactly the ids of the whole file (tests/test_data.py checks this)."""
    cut = re.compile(r"(?<=\S)(?= )")
    carry = ""
    with open(path, encoding="utf-8") as f:
        while block := read_utf8(f, piece_chars):
            text = carry + block
            last = None
            for last in cut.finditer(text, max(0, len(text) - piece_chars // 2)):
                pass
            if last is None:  # no cut point in the second half: keep reading
                carry = text
                continue
            yield text[: last.start()]
            carry = text[last.start():]
    if carry:
        yield carry


def read_utf8(f, n):
    try:
        return f.read(n)
    except UnicodeDecodeError:
        raise DataError(f"{f.name} is not UTF-8 text: convert it first (e.g. iconv -t utf-8)") from None


# 3-4. Tokenize and store --------------------------------------------------------------------------

@functools.cache
def tokenizer():
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # offline with no cached copy: requests/urllib errors from deep inside
        raise DataError(f"cannot load tiktoken's GPT-2 encoding ({type(e).__name__}); connect to the "
                        f"internet once, or set TIKTOKEN_CACHE_DIR to a folder holding its files") from None


def tokenize_to_file(stream, path):
    """Tokenize a stream of text pieces and EOT_ID markers (ints) into a uint16 file; returns the
    number of tokens. Pieces are encoded a few MB at a time, in parallel (tiktoken's batch API)."""
    enc = tokenizer()
    part = path.with_name(path.name + ".part")
    with open(part, "wb") as f, tqdm(desc=f"tokenizing {path.name}", unit="tok", unit_scale=True) as bar:
        batch, chars = [], 0

        def flush():
            texts = [item for item in batch if isinstance(item, str)]
            encoded = iter(enc.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1))
            ids = [i for item in batch for i in (next(encoded) if isinstance(item, str) else [item])]
            np.array(ids, dtype=np.uint16).tofile(f)
            bar.update(len(ids))
            batch.clear()

        for item in stream:
            batch.append(item)
            chars += len(item) if isinstance(item, str) else 0
            if chars >= TEXT_BATCH:
                flush()
                chars = 0
        flush()
        count = bar.n
    os.replace(part, path)  # a half-written .bin never has the final name
    return count


def wikitext_stream(path):
    """The split's articles, each followed by <|endoftext|>."""
    with open(path, encoding="utf-8") as f:
        for doc in wikitext_documents(f):
            if doc.strip():
                yield doc
                yield EOT_ID


def text_stream(files):
    """Your own text: each file one document, followed by <|endoftext|>."""
    for path in files:
        yield from text_pieces(path)
        yield EOT_ID


def text_files(text):
    path = Path(text)
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    if not path.exists() or not files:
        raise DataError(f"--text {text}: no such file, or a folder without .txt files")
    return files


def prepare(data_dir, text=None, val_fraction=None, variant="raw", mirrors=MIRRORS, expected=None):
    """Make sure data_dir holds train.bin, val.bin (and test.bin for WikiText) for the chosen corpus;
    tokenize only when they are missing or their source changed. Returns the contents of meta.json.
    A folder made from your text remembers it (and val_fraction, default 0.1): later calls need neither."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    meta_path = data_dir / "meta.json"
    old = json.loads(meta_path.read_text()) if meta_path.exists() else None
    prepared = old is not None and all(
        (data_dir / f"{s}.bin").exists() and (data_dir / f"{s}.bin").stat().st_size == 2 * n
        for s, n in old["tokens"].items())
    remembered = old["source"] if old else {}
    text = text or remembered.get("text")
    val_fraction = val_fraction if val_fraction is not None else remembered.get("val_fraction", 0.1)

    if text:
        files = text_files(text)
        source = {"text": str(Path(text).resolve()), "val_fraction": val_fraction,
                  "sha256": {str(f): sha256(f) for f in files}}
    else:
        paths = fetch_wikitext(data_dir, variant, mirrors, expected, download=not prepared)
        if paths is None:  # the source files are gone, but what was made from them is still here
            print(f"data: WikiText-2 files not in {data_dir}/; using the prepared .bin files")
            return old
        source = {"wikitext": {s: p.name for s, p in paths.items()},
                  "sha256": {s: sha256(p) for s, p in paths.items()}}
    if prepared and old["source"] == source:
        print(f"data: {data_dir}/*.bin are up to date")
        return old

    start = time.time()
    if text:
        tokens = split_train_val(text_stream(files), data_dir, val_fraction)
    else:
        tokens = {s: tokenize_to_file(wikitext_stream(paths[s]), data_dir / f"{s}.bin") for s in SPLITS}
    meta = {"tokenizer": "gpt2", "vocab_size": tokenizer().n_vocab, "eot_id": EOT_ID, "dtype": "uint16",
            "tokens": tokens, "source": source, "seconds": round(time.time() - start, 2)}
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def split_train_val(stream, data_dir, val_fraction):
    """Tokenize into train.bin, then move the last val_fraction of the tokens into val.bin."""
    train_path, val_path = data_dir / "train.bin", data_dir / "val.bin"
    n = tokenize_to_file(stream, train_path)
    n_val = int(n * val_fraction)
    if n_val < 2 or n - n_val < 2:
        raise DataError(f"{n} tokens cannot be split {1 - val_fraction:.0%}/{val_fraction:.0%} into train and "
                        f"val: give more text or another --val_fraction")
    tokens = np.memmap(train_path, dtype=np.uint16, mode="r")
    part = val_path.with_name("val.bin.part")
    tokens[n - n_val:].tofile(part)  # numpy streams the slice from the memmap
    del tokens
    os.replace(part, val_path)
    os.truncate(train_path, 2 * (n - n_val))
    return {"train": n - n_val, "val": n_val}


# 5. Batches ---------------------------------------------------------------------------------------

def open_split(data_dir, split):
    """A split's token ids as a read-only memmap: nothing is read until a batch needs it."""
    path = Path(data_dir) / f"{split}.bin"
    if not path.exists():
        raise DataError(f"{path} does not exist: prepare it with  python data.py --data_dir {data_dir}")
    return np.memmap(path, dtype=np.uint16, mode="r")


def read_blocks(data, starts, length):
    """Rows data[s : s + length] for each start s: a (len(starts), length) int64 tensor."""
    return torch.from_numpy(np.stack([data[s : s + length] for s in starts]).astype(np.int64))


def get_batch(data, batch_size, block_size, generator):
    """CLM training: batch_size windows of block_size tokens at random offsets, (B, T) int64.
    clm.clm_loss shifts targets inside the window, so no second tensor is needed."""
    if len(data) < block_size:
        raise DataError(f"the split has {len(data)} tokens, fewer than block_size={block_size}")
    starts = torch.randint(len(data) - block_size + 1, (batch_size,), generator=generator)
    return read_blocks(data, starts.tolist(), block_size)


def get_mlm_batch(data, batch_size, block_size, generator, mask_prob=0.15):
    """MLM training: the same windows, corrupted by mlm.mask_tokens. Returns (inputs, labels)."""
    return mask_tokens(get_batch(data, batch_size, block_size, generator), generator, mask_prob)


def eval_batches(n_tokens, block_size, batch_size, stride):
    """The plan of an in-order evaluation pass: a list of (starts, length), one per batch.

    Blocks start every `stride` tokens. For CLM use stride = block_size - 1: consecutive blocks share
    one token, the last input of a block being the first of the next, so every token but the very
    first is a target exactly once. For MLM use stride = block_size: every token is in one block.
    The tokens after the last full block form one shorter block, in a batch of its own."""
    full = range(0, n_tokens - block_size + 1, stride)
    plan = [(full[i : i + batch_size], block_size) for i in range(0, len(full), batch_size)]
    rest = len(full) * stride  # where the first block that would not fit starts
    if rest < n_tokens - (block_size - stride):
        plan.append((range(rest, rest + 1), n_tokens - rest))
    return plan


def to_device(x, device):
    """Move a CPU batch to the device; on CUDA through pinned memory, so the copy runs asynchronously."""
    if torch.device(device).type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Prepare a corpus: tokenize it into train/val(/test).bin.")
    parser.add_argument("--data_dir", default="data/wikitext-2", help="where the corpus and the .bin files live")
    parser.add_argument("--text", default=None, help="your own .txt file or folder of .txt files (default: WikiText-2)")
    parser.add_argument("--val_fraction", type=float, default=None, help="share of your text held out for val (0.1)")
    parser.add_argument("--variant", choices=("raw", "v1"), default="raw", help="WikiText-2 variant to download")
    parser.add_argument("--mirror", default=MIRRORS[0], help="where to download WikiText-2's zip from")
    args = parser.parse_args(argv)
    start = time.time()
    meta = prepare(args.data_dir, args.text, args.val_fraction, args.variant, mirrors=(args.mirror,))
    for split, n in meta["tokens"].items():
        print(f"{split:>5}: {n:>10,} tokens  -> {Path(args.data_dir) / (split + '.bin')}")
    print(f"done in {time.time() - start:.1f} s; tokenizing took {meta['seconds']} s; "
          f"meta: {Path(args.data_dir) / 'meta.json'}")


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        sys.exit(f"error: {e}")
