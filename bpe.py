"""
bpe.py: a tokenizer trained by hand, byte-level byte-pair encoding (BPE). It takes one job out of
data.py, which runs it: `python data.py --text FILE --data_dir OUT --tokenizer_size 2048`.

What BPE does (Sennrich et al. 2016; the byte-level variant of GPT-2, Radford et al. 2019)
  Start from the 256 byte values: every text in every script is a sequence of UTF-8 bytes, so no
  character is ever unknown. Then repeat: find the pair of adjacent tokens that occurs most often
  in the training text, make it a new token, and write every occurrence of the pair as that one
  token. Each merge shortens the text. After vocab_size - 256 - 2 merges (2 ids are kept for
  <|endoftext|> and [MASK]), frequent words are one token, rarer ones a few pieces, and text
  never seen in training falls back to bytes.

Chunks. Merges never cross the boundaries of the chunks that GPT-2's pattern cuts a text into: a
word with the space before it, a run of digits, a run of punctuation, a run of whitespace. So
" the" becomes a token, but "the." or "ing the" never do: the vocabulary is spent on pieces that
recombine. Python's `re` has no \\p{L} (letter) or \\p{N} (number), so `pattern` spells those two
classes out from the Unicode tables, and \\s as Unicode's 25 White_Space characters (Python's \\s
also takes the control characters \\x1c-\\x1f). What is left differs only where Python's Unicode
tables (unicodedata.unidata_version) are older or newer than tiktoken's.

Training (`train`). Each distinct chunk is stored once with its count (WikiText-2's 11 MB hold
about 70,000 distinct chunks), and pair counts are weighted by it. A merge rewrites only the chunks
that contain the pair, and updates the counts of the pairs it destroyed and created, instead of
counting everything again. A heap finds the most frequent pair; ties go to the smallest pair of
ids, so the same text always gives the same tokenizer.

Encoding. `encode` is the reference: cut the text into chunks, then in each chunk merge the
adjacent pair whose joined bytes have the lowest rank (the earliest merge), until no adjacent pair
is a token. tiktoken does exactly this in Rust (tests/test_bpe.py compares them on GPT-2's own
ranks), so the trained tokens become a tiktoken.Encoding (`encoding`) that encodes at full speed.

The file (`save`, `load`): one token per line in id order, its bytes in base64 and its id:
tiktoken's own format for its ranks, readable by tiktoken.load.load_tiktoken_bpe.

Try it:    python -m pytest tests/test_bpe.py
Read next: data.py, where the tokenizer is trained and used.
"""

import base64
import functools
import hashlib
import heapq
import re
import sys
import unicodedata
from collections import Counter, defaultdict

import tiktoken
from tqdm import tqdm

# GPT-2's pre-tokenisation pattern, as tiktoken (Rust's regex syntax) reads it.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
WHITE_SPACE = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
SPECIALS = ("<|endoftext|>", "[MASK]")  # their ids follow the merges, in this order


def category_classes():
    """The bodies of [...] classes for \\p{L} and \\p{N}: every code point whose Unicode category
    starts with L (letters) or N (numbers), as ranges."""
    ranges = {"L": [], "N": []}
    run, start = None, 0
    for c in range(sys.maxunicode + 2):
        kind = unicodedata.category(chr(c))[0] if c <= sys.maxunicode else None
        if kind != run:
            if run in ranges:
                ranges[run].append(f"\\U{start:08x}-\\U{c - 1:08x}")
            run, start = kind, c
    return "".join(ranges["L"]), "".join(ranges["N"])


@functools.cache
def pattern():
    """GPT2_PATTERN for Python's re: the same pattern, its classes spelled out (about 0.3 s)."""
    letters, numbers = category_classes()
    other = f"[^{WHITE_SPACE}{letters}{numbers}]"  # not space, not letter, not number
    return re.compile(GPT2_PATTERN.replace(r"[^\s\p{L}\p{N}]", other)
                      .replace(r"\p{L}", f"[{letters}]").replace(r"\p{N}", f"[{numbers}]")
                      .replace(r"\s", f"[{WHITE_SPACE}]").replace(r"\S", f"[^{WHITE_SPACE}]"))


def count_chunks(texts):
    """{chunk: how often it occurs} over an iterable of texts."""
    counts = Counter()
    for text in texts:
        counts.update(pattern().findall(text))
    return counts


# Training -----------------------------------------------------------------------------------------

def train(counts, vocab_size):
    """The tokens of a byte-level BPE learned from {chunk: count}, a list of byte strings whose
    positions are the ids: the 256 single bytes, then one token per merge, vocab_size - 2 in all
    (or fewer, if the text runs out of pairs). Deterministic: ties go to the smallest id pair."""
    vocab = [bytes([b]) for b in range(256)]
    ids = {token: i for i, token in enumerate(vocab)}
    words = [list(chunk.encode("utf-8")) for chunk in counts]  # each distinct chunk, as ids
    freq = list(counts.values())
    pairs, where = Counter(), defaultdict(set)  # pair -> occurrences; pair -> words holding it
    for w, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pairs[pair] += freq[w]
            where[pair].add(w)
    heap = [(-n, pair) for pair, n in pairs.items()]  # the most frequent pair on top
    heapq.heapify(heap)
    with tqdm(total=vocab_size - len(SPECIALS), initial=256, desc="training BPE", unit="token",
              disable=None) as bar:  # None: no bar where stderr is not a terminal (a log file)
        while len(vocab) < vocab_size - len(SPECIALS) and heap:
            n, pair = heapq.heappop(heap)
            if -n != pairs[pair]:
                continue  # an old entry: this pair's count has changed since it was pushed
            joined = vocab[pair[0]] + vocab[pair[1]]
            if joined not in ids:  # (rarely, two different pairs join to the same bytes)
                ids[joined] = len(vocab)
                vocab.append(joined)
                bar.update(1)
            changed = merge_everywhere(pair, ids[joined], words, freq, pairs, where)
            for p in changed:
                if pairs[p] > 0:
                    heapq.heappush(heap, (-pairs[p], p))
    return vocab


def merge_everywhere(pair, new, words, freq, pairs, where):
    """Rewrite each word holding `pair` with the token `new` in its place, moving the pair counts
    from the old word's pairs to the new word's. Returns the pairs whose counts changed."""
    changed = set()
    for w in where.pop(pair):
        old = words[w]
        words[w] = merge(old, pair, new)
        for p in zip(old, old[1:]):
            pairs[p] -= freq[w]
            changed.add(p)
        for p in zip(words[w], words[w][1:]):
            pairs[p] += freq[w]
            where[p].add(w)
            changed.add(p)
    return changed


def merge(word, pair, new):
    """word (a list of ids) with each occurrence of pair, left to right, replaced by new."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


# Encoding -----------------------------------------------------------------------------------------

def merge_parts(piece, ranks, below=sys.maxsize):
    """BPE of one chunk (bytes), as a list of tokens: merge the adjacent pair whose joined bytes
    have the lowest rank, the leftmost of equals, until no adjacent pair joins to a token (of a
    rank below `below`: export.py asks which two tokens a token was merged from)."""
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        joined = [ranks.get(a + b, below) for a, b in zip(parts, parts[1:])]
        best = min(range(len(joined)), key=joined.__getitem__)
        if joined[best] >= below:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts


def encode_chunk(piece, ranks):
    """The ids of one chunk (bytes)."""
    return [ranks[part] for part in merge_parts(piece, ranks)]


def encode(text, ranks):
    """The ids of a text, by hand: chunks, then BPE within each. ranks: {token bytes: id}.
    A lone surrogate (not encodable as UTF-8) becomes U+FFFD first, as tiktoken does."""
    text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return [i for chunk in pattern().findall(text) for i in encode_chunk(chunk.encode(), ranks)]


def encoding(vocab):
    """A tiktoken.Encoding for trained tokens (train's list): GPT-2's pattern, the tokens as
    mergeable_ranks, then <|endoftext|> and [MASK]. Its name, e.g. "bpe-2048-1a2b3c4d", gives the
    number of ids and a digest of the tokens: two tokenizers with the same name are the same."""
    specials = {token: len(vocab) + i for i, token in enumerate(SPECIALS)}
    digest = hashlib.sha256(repr(vocab).encode()).hexdigest()[:8]
    return tiktoken.Encoding(f"bpe-{len(vocab) + len(specials)}-{digest}", pat_str=GPT2_PATTERN,
                             mergeable_ranks={token: i for i, token in enumerate(vocab)},
                             special_tokens=specials)


# The file -----------------------------------------------------------------------------------------

def save(vocab, path):
    path.write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(vocab)))


def load(path):
    """The tokens save wrote, in id order."""
    vocab = []
    for i, line in enumerate(path.read_text().splitlines()):
        token, rank = line.split()
        if int(rank) != i:
            raise ValueError(f"{path}, line {i + 1}: id {rank}, expected {i}")
        vocab.append(base64.b64decode(token))
    return vocab
