"""
data.py: from text on disk to blocks of token ids, and the exact evaluation pass over a split.

The pipeline, one function per step:
  1. Documents. WikiText-2 (Merity et al. 2016) is split into its articles (`wikitext_documents`);
     your own text is one document per .txt file, or per part between lines that hold only
     <|endoftext|>, cleaned, filtered and deduplicated first (clean.py; `--no_clean` reads it as
     it is: `text_stream`).
  2. Tokenize with a byte-pair encoding (`tokenizer`): frequent byte sequences are merged into
     single ids, so common words are one token and rare words a few; any text can be encoded.
     By default GPT-2's (tiktoken's "gpt2"); with --tokenizer_size N, one trained by bpe.py on the
     training text and saved beside the .bin files as tokenizer.bpe (`train_tokenizer`).
  3. Concatenate the documents with <|endoftext|> (GPT-2's id 50256) after each, so the model
     learns where one text ends and an unrelated one begins, and write the ids as uint16 (every
     id < 65536) to train.bin / val.bin / test.bin, with meta.json beside them (`prepare`).
  4. Read blocks of block_size tokens from the files through numpy.memmap: the OS pages in only
     the bytes a batch touches, so a corpus far bigger than RAM trains the same way (`get_batch`).
     An objective (clm.py, mlm.py) turns the blocks into inputs and targets.
  5. Evaluate: walk a split in order so that every token is scored exactly once (`eval_batches`,
     `evaluate`).

What WikiText-2 looks like. Each line of wiki.train.raw is a paragraph, a heading or blank:

     = Valkyria Chronicles III =
    (blank)
     Senjō no Valkyria 3 : Unrecorded Chronicles ( Japanese : 戦場のヴァルキュリア3 , ...
    (blank)
     = = Gameplay = =

The text was tokenized by its authors: spaces around punctuation (" , ", " 's"), and " @-@ ",
" @,@ ", " @.@ " for a hyphen, a thousands separator and a decimal point inside a word or number
("real @-@ time", "1 @,@ 000"). The v1 variant (wiki.*.tokens) also replaces rare words by <unk>.
A top-level heading " = Title = " starts a new article; "= = Section = =" does not. That rule
finds 629 / 60 / 62 documents in train / valid / test (the dataset has 600 / 60 / 60 articles; a
few contain a line formatted like a title).

What we keep: everything, byte for byte, except that articles become documents separated by
<|endoftext|> and whitespace-only documents are dropped. WikiText is a benchmark: perplexity means
something only on the published text, and a model that learns " @-@ " loses nothing by it (the
markers are cheap, frequent tokens). Undoing the artefacts is an exercise (EXERCISES.md).

Memory stays bounded whatever the corpus size: files are read line by line (WikiText) or in 1 MB
pieces (your text), tokenized a few MB at a time on several threads, and appended to the .bin
file; batches then read from the memmap. A 10 GB corpus is prepared in 10 GB of disk.

Getting WikiText-2 (download, line counts, SHA-256) is fetch.py's job.

Run:       python data.py                               (WikiText-2 into data/wikitext-2)
           python data.py --text notes.txt --data_dir data/notes   (your own text, 10% held out)
           python data.py --text notes.txt --data_dir data/notes-2k --tokenizer_size 2048
                                                        (the same, with a tokenizer of its own)
Read next: adamw.py, the update rule of the loop that consumes these blocks (train.py).
"""

import functools
import os
import re
import signal
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # Ctrl-C while torch loads ends quietly too (then: run_program)
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))

import numpy as np
import torch
from tqdm import tqdm

import bpe
import clean
import fetch
import prepared
import runtime
from fetch import SPLITS, DataError

WIKITEXT_DIR = "data/wikitext-2"  # WikiText-2 goes here by default; other folders copy it from here
TEXT_BATCH = 4 << 20  # characters of text handed to the tokenizer at once (some MB of ids)
END = None  # in a stream of text pieces: the end of a document, written as <|endoftext|>
SEPARATOR = "<|endoftext|>"  # in your text, a line holding only this ends a document


# 1. Documents -------------------------------------------------------------------------------------

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


CUT = re.compile(r"(?<=\S)(?= )")  # just before a space that follows a non-space


def last_cut(text, piece_chars):
    """Where to cut text into a piece and the rest: the last place in its last piece_chars / 2
    characters just before a space that follows a non-space (None: there is none). GPT-2's
    pre-tokenizer never joins such a space to what precedes it, so the pieces tokenize to exactly
    the ids of the whole text (tests/test_data.py checks this)."""
    last = None
    for last in CUT.finditer(text, max(0, len(text) - piece_chars // 2)):
        pass
    return last.start() if last else None


def text_pieces(path, piece_chars=1 << 20):
    """A text file in pieces of about piece_chars characters (last_cut says where they are cut)."""
    carry = ""
    with open(path, encoding="utf-8") as f:
        while block := read_utf8(f, piece_chars):
            text = carry + block
            at = last_cut(text, piece_chars)
            if at is None:  # no cut point in the second half: keep reading
                carry = text
                continue
            yield text[:at]
            carry = text[at:]
    if carry:
        yield carry


def wikitext_stream(path):
    """The split's articles, each followed by <|endoftext|>."""
    with open(path, encoding="utf-8") as f:
        for doc in wikitext_documents(f):
            if doc.strip():
                yield doc
                yield END


def text_stream(files, piece_chars=1 << 20):
    """Your own text as it is: its documents, each followed by <|endoftext|>. A document is a file,
    or a part of one between lines that hold only <|endoftext|>, as clean.documents splits them
    when cleaning; it comes in pieces of about piece_chars characters (cut as last_cut says)."""
    for path in files:
        text, started = "", False  # the document's text not yet yielded; whether some was
        for line in read_lines(path):
            if line.strip() == SEPARATOR:
                if started or text.strip():
                    yield from [text, END] if text else [END]
                text, started = "", False
                continue
            text += line
            if len(text) >= piece_chars and (at := last_cut(text, piece_chars)) is not None:
                yield text[:at]
                text, started = text[at:], True
        if started or text.strip():
            yield from [text, END] if text else [END]


def read_lines(path):
    try:
        with open(path, encoding="utf-8") as f:
            yield from f
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def cleaned_stream(files, cleaner):
    """Your own text through clean.py: the documents it keeps, each followed by <|endoftext|>."""
    for kept in clean.clean_all(read_documents(files), cleaner):
        yield kept
        yield END
    if not cleaner.report["documents"]:
        raise no_text(files)
    if not cleaner.report["kept_documents"]:
        clean.print_report(cleaner.report)
        raise DataError(f"cleaning kept none of the {cleaner.report['documents']} documents (the "
                        f"table above says why): train on the text as it is with --no_clean")


def read_documents(files):
    for path in tqdm(files, desc="cleaning", unit="file", disable=None):
        try:
            yield from clean.documents(path)
        except UnicodeDecodeError:
            raise not_utf8(path) from None


def read_utf8(f, n):
    try:
        return f.read(n)
    except UnicodeDecodeError:
        raise not_utf8(f.name) from None


def no_text(files):
    return DataError(f"{', '.join(map(str, files[:3]))}{' ...' if len(files) > 3 else ''} hold "
                     f"no text to learn from: only lines of {SEPARATOR} and blank ones")


def not_utf8(path):
    return DataError(f"{path} is not UTF-8 text: convert it first (e.g. iconv -t utf-8)")


# 2. Byte-pair encoding ----------------------------------------------------------------------------

@functools.cache
def gpt2_tokenizer():
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # offline with no cached copy: requests/urllib errors from deep inside
        raise DataError(f"cannot load tiktoken's GPT-2 encoding ({type(e).__name__}): connect to "
                        f"the internet once, or offline put GPT-2's vocab.bpe and encoder.json "
                        f"into a folder under the names tiktoken gives them and set "
                        f"TIKTOKEN_CACHE_DIR to it (docs/guide.md, Offline)") from None


def tokenizer(vocab=None):
    """A tiktoken.Encoding: GPT-2's, or (vocab: the tokens bpe.train learned) a trained one. Its
    eot_token is <|endoftext|>; [MASK] is the id after it (model.py)."""
    return gpt2_tokenizer() if vocab is None else bpe.encoding(vocab)


def read_vocab(data_dir):
    """The tokens of data_dir's trained tokenizer, or None: the folder uses GPT-2's."""
    path = Path(data_dir) / "tokenizer.bpe"
    try:
        return bpe.load(path) if path.exists() else None
    except ValueError as e:  # a line that is not "<base64 token> <id>", or not UTF-8 at all
        raise DataError(f"{path} is damaged ({str(e)[:80]}): delete {data_dir} and prepare it "
                        f"again (the same text trains the same tokenizer)") from None


def train_tokenizer(stream, data_dir, vocab_size, max_chars=float("inf")):
    """Train a BPE (bpe.py) on the text of a stream, its first max_chars characters only (the
    part that becomes the training split), and save it as data_dir/tokenizer.bpe."""
    def training_text():
        chars = 0
        for item in stream:
            if chars >= max_chars:
                return
            if item is not END:
                chars += len(item)
                yield item
    vocab = bpe.train(bpe.count_chunks(training_text()), vocab_size)
    bpe.save(vocab, Path(data_dir) / "tokenizer.bpe")
    return tokenizer(vocab)


# 3. Tokenize and store ----------------------------------------------------------------------------

def tokenize_to_file(stream, path, enc):
    """Tokenize a stream of text pieces and END markers into a uint16 file with the tokenizer enc;
    returns the number of tokens. Pieces are encoded a few MB at a time, in parallel (tiktoken's
    batch API)."""
    part = path.with_name(path.name + ".part")
    try:
        with open(part, "wb") as f, tqdm(desc=f"tokenizing {path.name}", unit="tok",
                                         unit_scale=True, disable=None) as bar:  # (None: no bar
            count = write_tokens(stream, f, enc, bar)                          # in a log file)
    except BaseException:  # a full disk, a refusal from the stream, Ctrl-C: no .part is left
        part.unlink(missing_ok=True)
        raise
    os.replace(part, path)  # a half-written .bin never has the final name
    return count


def write_tokens(stream, f, enc, bar):
    """The ids of a stream's pieces, written to the open file f a batch at a time; their number."""
    batch, chars, count = [], 0, 0

    def flush():
        texts = [item for item in batch if isinstance(item, str)]
        encoded = iter(enc.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1))
        ids = [i for item in batch
               for i in (next(encoded) if isinstance(item, str) else [enc.eot_token])]
        np.array(ids, dtype=np.uint16).tofile(f)
        bar.update(len(ids))
        batch.clear()
        return len(ids)

    for item in stream:
        batch.append(item)
        chars += len(item) if isinstance(item, str) else 0
        if chars >= TEXT_BATCH:
            count += flush()
            chars = 0
    return count + flush()


def prepare(data_dir, text=None, *, val_fraction=None, clean_text=None, vocab_size=None,
            variant="raw", mirrors=fetch.MIRRORS, expected=None):
    """Make sure data_dir holds train.bin, val.bin (and test.bin for WikiText) for the chosen
    corpus; tokenize only when they are missing or their source changed. Returns meta.json's
    contents. A folder remembers what it was made from: your text, with val_fraction (default
    0.1) and clean_text (default True: clean.py before tokenizing), and vocab_size (default: GPT-2's
    tokenizer, none trained). Later calls need none of them, and a folder never silently changes
    what it holds: another source is refused, with the folder to use instead (prepared.py keeps
    that record)."""
    data_dir = runtime.make_folder(data_dir, "data_dir")
    with prepared.lock(data_dir):  # a second run preparing the folder waits for this one
        old, source, files = prepared.plan(
            data_dir, text, val_fraction=val_fraction, clean_text=clean_text,
            vocab_size=vocab_size, wikitext=dict(variant=variant, mirrors=mirrors,
                                                 expected=expected, copy_from=WIKITEXT_DIR))
        if source is None:  # up to date, or the source is gone and its .bin files serve
            return old
        start = time.time()
        (data_dir / "tokenizer.bpe").unlink(missing_ok=True)  # made again below, if there is one
        tokens, enc = (prepare_text(files, data_dir, source) if "text" in source
                       else prepare_wikitext(files, data_dir, source))
        return prepared.write_meta(data_dir, enc, tokens, source, time.time() - start)


def prepare_wikitext(paths, data_dir, source):
    """Each WikiText split tokenized into its .bin file; a trained tokenizer learns from the train
    split."""
    enc = tokenizer()
    if "vocab_size" in source:
        enc = train_tokenizer(wikitext_stream(paths["train"]), data_dir, source["vocab_size"])
    return {s: tokenize_to_file(wikitext_stream(paths[s]), data_dir / f"{s}.bin", enc)
            for s in SPLITS}, enc


def prepare_text(files, data_dir, source):
    """Your text cleaned (clean.py), tokenized, and the last val_fraction of the tokens held out:
    cut after deduplication, so that no near-copy crosses the split. A tokenizer is trained on the
    part before that cut: the cleaned text is kept in a spool file meanwhile, cleaned only once."""
    cleaner = clean.Cleaner() if source["clean"] else None
    stream = cleaned_stream(files, cleaner) if cleaner else text_stream(files)
    enc, spool = tokenizer(), data_dir / "text.jsonl.part"
    if "vocab_size" in source:
        chars = prepared.write_spool(stream, spool)
        enc = train_tokenizer(prepared.read_spool(spool), data_dir, source["vocab_size"],
                              max_chars=chars * (1 - source["val_fraction"]))
        stream = prepared.read_spool(spool)
    tokens = split_train_val(stream, data_dir, source["val_fraction"], enc, source["text"])
    spool.unlink(missing_ok=True)
    if cleaner:
        prepared.report_cleaning(cleaner.report, data_dir)
    return tokens, enc


def split_train_val(stream, data_dir, val_fraction, enc, text):
    """Tokenize into train.bin, then move the last val_fraction of the tokens into val.bin."""
    train_path, val_path = data_dir / "train.bin", data_dir / "val.bin"
    n = tokenize_to_file(stream, train_path, enc)
    if n == 0:
        train_path.unlink()
        raise no_text([text])
    n_val = int(n * val_fraction)
    if n_val < 2 or n - n_val < 2:
        raise DataError(f"{n} tokens cannot be split {1 - val_fraction:.0%}/{val_fraction:.0%} "
                        f"into train and val: give more text, or another share with  python "
                        f"data.py --text {text} --data_dir {data_dir} --val_fraction 0.5")
    tokens = np.memmap(train_path, dtype=np.uint16, mode="r")
    part = val_path.with_name("val.bin.part")
    tokens[n - n_val:].tofile(part)  # numpy streams the slice from the memmap
    del tokens
    os.replace(part, val_path)
    os.truncate(train_path, 2 * (n - n_val))
    return {"train": n - n_val, "val": n_val}


# 4. Blocks for training ---------------------------------------------------------------------------

def open_split(data_dir, split):
    """A split's token ids as a read-only memmap: nothing is read until a batch needs it."""
    path = Path(data_dir) / f"{split}.bin"
    if not path.exists():
        meta = prepared.read_meta(data_dir)
        if meta and split not in meta["tokens"]:
            raise DataError(f"{data_dir} has no {split} split: it holds {', '.join(meta['tokens'])}"
                            f" (your own text is split into train and val only)")
        raise DataError(f"{path} does not exist: prepare it with  python data.py --data_dir "
                        f"{data_dir}")
    return np.memmap(path, dtype=np.uint16, mode="r")


def read_blocks(data, starts, length):
    """Rows data[s : s + length] for each start s: a (len(starts), length) int64 tensor."""
    return torch.from_numpy(np.stack([data[s : s + length] for s in starts]).astype(np.int64))


def get_batch(data, batch_size, block_size, generator):
    """batch_size windows of block_size tokens at random offsets: (B, T) int64 token blocks."""
    if len(data) < block_size:
        raise DataError(f"the split has {len(data)} tokens, fewer than block_size={block_size}")
    starts = torch.randint(len(data) - block_size + 1, (batch_size,), generator=generator)
    return read_blocks(data, starts.tolist(), block_size)


def unigram_entropy(tokens, most=10_000_000):
    """The loss of a model that knows only how often each token occurs: the entropy of the token
    frequencies of a split (its first `most` tokens: plenty to know them), -sum p log p, in nats.
    A masked LM learns exactly this first, and stays there until attention learns to use the
    context (docs/bert.md); train.py ends with where a run stands against it."""
    counts = np.bincount(tokens[:most]).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# 5. The exact evaluation pass ---------------------------------------------------------------------

def eval_batches(n_tokens, block_size, batch_size, stride):
    """The plan of an in-order evaluation pass: a list of (starts, length), one per batch.

    Blocks start every `stride` tokens. For CLM use stride = block_size - 1: consecutive blocks
    share one token, the last input of a block being the first of the next, so every token but
    the very first is a target exactly once. For MLM use stride = block_size: every token is in
    one block. The tokens after the last full block form one shorter block, in a batch of its
    own."""
    full = range(0, n_tokens - block_size + 1, stride)
    plan = [(full[i : i + batch_size], block_size) for i in range(0, len(full), batch_size)]
    rest = len(full) * stride  # where the first block that would not fit starts
    if rest < n_tokens - (block_size - stride):
        plan.append((range(rest, rest + 1), n_tokens - rest))
    return plan


@torch.no_grad()
def evaluate(model, objective, tokens, batch_size, autocast, max_batches=0):
    """{metric: its value, "tokens": number predicted} over a split read in order
    (eval_batches): the objective makes each batch (a tuple of tensors) and says what it counts,
    {metric: (sum, count)}, which are added up over the split, and turned into metrics (means, for
    most). max_batches > 0 stops early. With several processes, each takes every world-th batch,
    and the sums are added up across them: the same numbers as one process gets. Each process runs
    as many batches as the others (one past the end repeats the last batch, uncounted): a sharded
    model (shard.py) gathers its weights from all processes at every forward. Under model
    parallelism (parallel.py) a group of processes reads the same batches: a pipeline's stages
    compute the sums together."""
    rank, world = runtime.data_rank_and_world()
    T, device = model.config.block_size, next(model.parameters()).device
    stage = hasattr(model, "eval_sums")  # a pipeline's stage (parallel.py): they sum together
    plan = eval_batches(len(tokens), T, batch_size, T - objective.eval_overlap)
    plan = plan[: max_batches or None]
    was_training = model.training
    model.eval()
    totals = {}  # {metric: float64 tensor}, summed over the batches
    for i in tqdm(range(rank, len(plan) + (-len(plan)) % world, world), desc="evaluating",
                  leave=False, disable=None if runtime.is_main() else True):
        starts, length = plan[min(i, len(plan) - 1)]
        batch = objective.eval_batch(read_blocks(tokens, starts, length), starts)
        with autocast:
            batch = [runtime.to_device(x, device) for x in batch]
            sums = (model.eval_sums(objective, *batch) if stage
                    else objective.eval_sums(model, *batch))
        for name, value in sums.items():  # (a repeated last batch adds zeros)
            value = torch.stack([torch.as_tensor(v) for v in value]).to(device, torch.float64)
            totals[name] = totals.get(name, 0) + value * (i < len(plan))
    model.train(was_training)
    if world > 1:
        for name in sorted(totals):  # the same order in every process
            torch.distributed.all_reduce(totals[name], group=runtime.data_group())
    counted = next(iter(totals.values()))[1] if totals else 0  # the first metric's count
    if counted == 0:
        raise DataError(f"nothing to score: {len(tokens)} tokens, none of them a target")
    return {**objective.summarize(totals), "tokens": int(counted)}


def main(argv=None):
    parser = runtime.Parser(prog="data.py", description="Prepare a corpus: tokenize it into "
                                                        "train/val(/test).bin.")
    parser.add_argument("--data_dir", default=WIKITEXT_DIR,
                        help="where the corpus and the .bin files live")
    parser.add_argument("--text", default=None,
                        help="your own .txt file or folder of .txt files (default: WikiText-2)")
    parser.add_argument("--val_fraction", type=float, default=None,
                        help="share of your text held out for val (0.1)")
    parser.add_argument("--no_clean", action="store_true",
                        help="keep your text as it is: no cleaning, filtering or deduplication")
    parser.add_argument("--tokenizer_size", type=int, default=None,
                        help="train a tokenizer of this many ids on the training text (bpe.py); "
                             "default: GPT-2's")
    parser.add_argument("--variant", choices=("raw", "v1"), default="raw",
                        help="WikiText-2 variant to download")
    parser.add_argument("--mirror", default=fetch.MIRRORS[0],
                        help="the address of a folder that holds WikiText-2's zip "
                             "(wikitext-2-raw-v1.zip or wikitext-2-v1.zip)")
    args = parser.parse_args(argv)
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        raise runtime.ConfigError(f"--val_fraction {args.val_fraction}: must be between 0 and 1")
    start = time.time()
    meta = prepare(args.data_dir, args.text, val_fraction=args.val_fraction,
                   clean_text=False if args.no_clean else None, vocab_size=args.tokenizer_size,
                   variant=args.variant, mirrors=(args.mirror,))
    for split, n in meta["tokens"].items():
        print(f"{split:>5}: {n:>10,} tokens  -> {Path(args.data_dir) / (split + '.bin')}")
    trained = read_vocab(args.data_dir) is not None
    print(f"tokenizer: {meta['tokenizer']}, {meta['vocab_size']:,} ids"
          + (f" -> {Path(args.data_dir) / 'tokenizer.bpe'}" if trained else " (GPT-2's)"))
    print(f"done in {time.time() - start:.1f} s; preparing took {meta['seconds']} s; "
          f"meta: {Path(args.data_dir) / 'meta.json'}")


if __name__ == "__main__":
    runtime.run_program(main)
