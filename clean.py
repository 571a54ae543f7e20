"""
clean.py: cleaning, filtering and deduplicating your own corpus before it is tokenized. It takes
that one job out of data.py, which runs it on `--text` (`--no_clean` skips it; WikiText-2 is never
cleaned: it is a benchmark, and its numbers mean something only on the published text).

Why. Scraped pages, notes and folders of copied files carry junk (menus, tables of numbers, lists
of links), boilerplate (the same cookie banner on every page) and duplicates. Training on them
wastes compute, and a model sees duplicated text many times and memorises it (Lee et al. 2022,
"Deduplicating Training Data Makes Language Models Better").

The pipeline, one document at a time (a document is a .txt file, or the part of one between lines
that hold only <|endoftext|>), in this order:
  1. Normalise (`normalise`): Unicode NFC, so that "é" is one code point however it was typed;
     control characters out; spaces and tabs collapsed, line ends tidied, runs of blank lines cut.
  2. Line rule (C4, Raffel et al. 2020): lines that mention javascript (the "please enable
     JavaScript" warnings of scraped pages) are dropped.
  3. Quality rules (`RULES`): Gopher's document filters (Rae et al. 2021, appendix A.1.1), each
     a small named function with its threshold. A document that breaks one is dropped.
  4. Exact duplicates: a document whose normalised text was seen before is dropped; the first
     copy is kept.
  5. Near duplicates (`NearDuplicates`, MinHash: Broder 1997): a document that shares most of
     its word 5-grams with an earlier one (estimated Jaccard similarity >= NEAR_DUPLICATE) is
     dropped.
  6. Boilerplate: in the documents that stay, a line of at least BOILERPLATE_WORDS words that an
     earlier document already had (a cookie banner, a footer) is dropped.
Steps 1 to 3, and the hashing that 4 to 6 need, look at one document alone (`examine`), so they
run on all cores; the decisions of 4 to 6 need the documents before, so they are made in order
(`Cleaner.decide`).

Words. Rules that count words must also work for text without spaces: in Chinese or Japanese,
each CJK character counts as a word (a common choice; a word segmenter would be better and is not
in the standard library), and other text is split at whitespace (`words`). A Chinese document
then has as many "words" as characters, and word-length rules, which assume spaces, are skipped
for it.

Memory stays bounded: documents are read and cleaned a batch at a time; what is kept across
documents is one 8-byte hash per document and per long line, and each kept document's MinHash
signature.

Run:       python data.py --text my_folder --data_dir data/mine      (cleans, then tokenizes)
Try it:    python -m pytest tests/test_clean.py
Read next: bpe.py, the tokenizer data.py can train on what is kept.
"""

import hashlib
import itertools
import multiprocessing
import re
import unicodedata
import zlib

import numpy as np

# 1. Normalise -------------------------------------------------------------------------------------

# Control characters out (all but tab, newline and return); tabs and no-break spaces to spaces.
TIDY = {**{c: None for c in [*range(0x00, 0x09), 0x0b, 0x0c, *range(0x0e, 0x20),
                             *range(0x7f, 0xa0)]},
        ord("\t"): " ", 0xa0: " ", 0x3000: " "}
SPACES = re.compile(r" {2,}")
BLANK_LINES = re.compile(r"\n{3,}")  # more than one blank line


def normalise(text):
    """NFC, no control characters, one space for each run of spaces and tabs, no spaces at line
    ends, at most one blank line in a row, no blank lines at the start or the end."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = SPACES.sub(" ", text.translate(TIDY))
    text = "\n".join(line.strip() for line in text.split("\n"))
    return BLANK_LINES.sub("\n\n", text).strip()


# Words: a CJK character is a word; other words are separated by whitespace.
CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
WORD = re.compile(rf"[{CJK}]|[^\s{CJK}]+")
CJK_CHARS = re.compile(rf"[{CJK}]")


def words(text, cjk=None):
    """The text's words; cjk: whether it has CJK characters, if known."""
    cjk = CJK_CHARS.search(text) if cjk is None else cjk
    return WORD.findall(text) if cjk else text.split()  # str.split: far cheaper than a regex


_crc = {}  # word -> its CRC-32: words come back often, and a lookup is cheaper than hashing


def word_ids(doc_words):
    """A 32-bit hash (CRC-32) of each word, as uint64 for the arithmetic below."""
    if len(_crc) > 1_000_000:  # bounded memory, whatever the corpus
        _crc.clear()
    _crc.update((w, zlib.crc32(w.encode("utf-8"))) for w in set(doc_words).difference(_crc))
    return np.fromiter(map(_crc.__getitem__, doc_words), np.uint64, len(doc_words))


def ngram_hashes(ids, n):
    """A 64-bit hash of each run of n words: a polynomial in the word hashes (uint64
    arithmetic wraps around, which is what hashing wants)."""
    h = np.zeros(len(ids) - n + 1, np.uint64)
    with np.errstate(over="ignore"):
        for i in range(n):
            h = h * np.uint64(1_000_003) + ids[i: len(ids) - n + 1 + i]
    return h


# 3. Quality rules (Gopher, Rae et al. 2021, appendix A.1.1) ---------------------------------------
# Each rule takes a document's statistics and returns the reason it fails, or None.

def too_few_or_too_many_words(doc):
    """Gopher: 50 to 100,000 words. Shorter is rarely a text; longer is rarely one document."""
    n = len(doc["words"])
    return None if 50 <= n <= 100_000 else f"{n} words (50 to 100,000)"


def odd_mean_word_length(doc):
    """Gopher: a mean word length of 3 to 10 characters; outside it, tables of numbers or strings
    of code. Counted over the words between spaces only, and skipped for text mostly in CJK
    scripts (a character is a word there)."""
    n_cjk = len(CJK_CHARS.findall(doc["text"])) if doc["cjk"] else 0  # words of length 1
    spaced = len(doc["words"]) - n_cjk
    if spaced < n_cjk:
        return None
    mean = (sum(map(len, doc["words"])) - n_cjk) / spaced
    return None if 3 <= mean <= 10 else f"mean word length {mean:.1f} (3 to 10)"


def many_symbols(doc):
    """Gopher: at most 0.1 hash signs or ellipses per word (hashtag lists, truncated snippets)."""
    text = doc["text"]
    symbols = text.count("#") + text.count("...") + text.count("…")
    ratio = symbols / len(doc["words"])
    return None if ratio <= 0.1 else f"{ratio:.2f} symbols per word (at most 0.1)"


BULLETS = ("•", "●", "○", "■", "□", "▪", "·", "-", "*")


def bullet_or_ellipsis_lines(doc):
    """Gopher: at most 90% of lines start with a bullet, at most 30% end with an ellipsis
    (menus, lists of links, teasers)."""
    lines = [line for line in doc["text"].split("\n") if line]
    bullets = sum(line.startswith(BULLETS) for line in lines)
    ellipses = sum(line.endswith(("...", "…")) for line in lines)
    if bullets > 0.9 * len(lines):
        return f"{bullets / len(lines):.0%} of lines start with a bullet (at most 90%)"
    if ellipses > 0.3 * len(lines):
        return f"{ellipses / len(lines):.0%} of lines end with an ellipsis (at most 30%)"
    return None


PUNCTUATION = re.compile(r"(?<!\S)[^\w\s]+(?!\S)")  # a "word" of punctuation only: " , "
NO_LETTER = re.compile(r"(?<!\S)[^\w\s]*[\d_](?:[^\w\s]|[\d_])*(?!\S)")  # "1901", "(1938)", "$5"


def few_words_with_letters(doc):
    """Gopher: at least 80% of words contain a letter, in any script (tables of numbers fail). A
    CJK character is a letter, so it never counts against a document. Punctuation standing alone
    is not a word here, as a word tokenizer would split it off anyway: text tokenized like
    WikiText's (" , ", " @,@ ", " ( ") passes like the same text written as prose."""
    n_words = len(doc["words"]) - len(PUNCTUATION.findall(doc["text"]))
    share = 1 - len(NO_LETTER.findall(doc["text"])) / n_words if n_words else 0.0
    return None if share >= 0.8 else f"{share:.0%} of words have a letter (at least 80%)"


def repeated_lines_or_paragraphs(doc):
    """Gopher: duplicated lines at most 30% of lines and 20% of characters; the same for
    paragraphs (separated by blank lines). Spam and broken pages repeat themselves."""
    for kind, parts in (("lines", [p for p in doc["text"].split("\n") if p]),
                        ("paragraphs", [p for p in doc["text"].split("\n\n") if p])):
        seen, dup_count, dup_chars = set(), 0, 0
        for part in parts:
            if part in seen:
                dup_count, dup_chars = dup_count + 1, dup_chars + len(part)
            seen.add(part)
        if dup_count > 0.3 * len(parts) or dup_chars > 0.2 * sum(map(len, parts)):
            return f"duplicated {kind}: {dup_count} of {len(parts)}, {dup_chars} characters"
    return None


TOP_NGRAM = {2: 0.20, 3: 0.18, 4: 0.16}  # Gopher's thresholds for the most frequent n-gram


def dominant_ngram(doc):
    """Gopher: the most frequent word 2-, 3- or 4-gram covers at most 20%, 18%, 16% of the
    characters (a phrase said over and over). Counted over n-gram hashes in numpy."""
    ids, lengths = doc["ids"], np.fromiter(map(len, doc["words"]), np.int64, len(doc["words"]))
    for n, limit in TOP_NGRAM.items():
        if len(ids) < n:
            continue
        grams = ngram_hashes(ids, n)
        values, counts = np.unique(grams, return_counts=True)
        top = counts.argmax()
        start = (grams == values[top]).argmax()  # where the most frequent n-gram first occurs
        covered = counts[top] * lengths[start:start + n].sum()
        if counts[top] > 1 and covered > limit * lengths.sum():
            gram = " ".join(doc["words"][start:start + n])
            return f"the {n}-gram {gram!r} covers over {limit:.0%} of the characters"
    return None


RULES = (too_few_or_too_many_words, odd_mean_word_length, many_symbols,
         bullet_or_ellipsis_lines, few_words_with_letters, repeated_lines_or_paragraphs,
         dominant_ngram)


def describe(text):
    """What the rules read: the text, its words and their hashes."""
    cjk = CJK_CHARS.search(text) is not None
    doc_words = words(text, cjk)
    return {"text": text, "cjk": cjk, "words": doc_words, "ids": word_ids(doc_words)}


def quality_problem(doc):
    """(rule name, reason) of the first rule the document (`describe`) breaks, or None."""
    if not doc["words"]:
        return "too_few_or_too_many_words", "no words"
    for rule in RULES:
        reason = rule(doc)
        if reason:
            return rule.__name__, reason
    return None


# 4. Exact duplicates ------------------------------------------------------------------------------

BOILERPLATE_WORDS = 10  # shorter lines (headings, "References", dates) repeat for good reasons


def long_line(line):
    return line.count(" ") >= BOILERPLATE_WORDS - 1 or (
        CJK_CHARS.search(line) is not None and len(WORD.findall(line)) >= BOILERPLATE_WORDS)


def key(text):
    """An 8-byte fingerprint: two different texts share one with probability about 2^-64."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()


# 5. Near duplicates: MinHash and locality-sensitive hashing ---------------------------------------
# The Jaccard similarity of two documents is |A ∩ B| / |A ∪ B| over their sets of word 5-grams
# ("shingles"). MinHash (Broder 1997) estimates it without comparing the sets: hash every
# shingle with a random hash function and keep the smallest value. Two documents get the same
# minimum with probability exactly their Jaccard similarity, so over PERMUTATIONS independent
# hash functions, the share of equal minima estimates it.
#
# To find similar pairs without comparing every pair, LSH cuts the signature into BANDS bands of
# ROWS values: documents that agree on a whole band become candidates. A pair of similarity s
# agrees on one band with probability s^ROWS, so it becomes a candidate with probability
# 1 - (1 - s^ROWS)^BANDS, an S-curve. With 20 bands of 5: 0.047 at s = 0.3, 0.47 at s = 0.5,
# 0.9996 at s = 0.8. Changing 2% of a document's words changes about 1 - 0.98^5 = 10% of its
# 5-grams, for a similarity of about 0.82: caught almost surely. Candidates are then checked on
# the whole signature (estimated similarity >= NEAR_DUPLICATE), which drops the S-curve's
# chance hits.

SHINGLE, BANDS, ROWS = 5, 20, 5
PERMUTATIONS = BANDS * ROWS
NEAR_DUPLICATE = 0.7
_rng = np.random.default_rng(0)  # fixed: the same corpus is always cleaned the same way
HASH_A = _rng.integers(1, 2**63, PERMUTATIONS, dtype=np.uint64) | np.uint64(1)  # odd: one-to-one
HASH_B = _rng.integers(0, 2**63, PERMUTATIONS, dtype=np.uint64)


def shingles(ids):
    """The set of a document's word 5-gram hashes (a short text is one shingle)."""
    if len(ids) < SHINGLE:
        ids = np.concatenate([ids, np.zeros(SHINGLE - len(ids), np.uint64)])
    return np.unique(ngram_hashes(ids, SHINGLE))


def signature(ids, chunk=4096):
    """(PERMUTATIONS,) uint32 from a document's word hashes: for each of the hash functions
    x -> a * x + b (mod 2^64, a one-to-one map for odd a; its top 32 bits kept), the minimum over
    the document's shingles. (With 32-bit arithmetic, tests/test_clean.py finds the estimates
    biased.)"""
    x = shingles(ids)
    low = np.full(PERMUTATIONS, np.iinfo(np.uint64).max, np.uint64)
    with np.errstate(over="ignore"):
        for s in range(0, len(x), chunk):  # (chunk, PERMUTATIONS) at a time: bounded memory
            low = np.minimum(low, (x[s: s + chunk, None] * HASH_A + HASH_B).min(axis=0))
    return (low >> np.uint64(32)).astype(np.uint32)


def similarity(sig_a, sig_b):
    """The MinHash estimate of the Jaccard similarity: the share of equal minima."""
    return float(np.mean(sig_a == sig_b))


class NearDuplicates:
    """The signatures of the documents kept so far, indexed by band."""

    def __init__(self):
        self.signatures = []
        self.bands = [{} for _ in range(BANDS)]  # band bytes -> indices of documents

    def find(self, sig):
        """The index of a kept document this one nearly duplicates, or None."""
        for b in range(BANDS):
            for i in self.bands[b].get(sig[b * ROWS:(b + 1) * ROWS].tobytes(), ()):
                if similarity(sig, self.signatures[i]) >= NEAR_DUPLICATE:
                    return i
        return None

    def add(self, sig):
        for b in range(BANDS):
            self.bands[b].setdefault(sig[b * ROWS:(b + 1) * ROWS].tobytes(), []).append(
                len(self.signatures))
        self.signatures.append(sig)


# The pipeline ---------------------------------------------------------------------------------

def documents(path, separator="<|endoftext|>"):
    """A file's documents: the whole file, or its parts between lines that hold only
    <|endoftext|>. Read line by line: one document in memory at a time."""
    lines = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip() == separator:
                yield from ["".join(lines)] if any(map(str.strip, lines)) else []
                lines = []
            else:
                lines.append(line)
    yield from ["".join(lines)] if any(map(str.strip, lines)) else []


def examine(raw):
    """Everything about one document that does not depend on the others, so that it can run on
    all cores (`clean_all`): its normalised text without javascript lines (C4's line rule), those
    lines, the quality rule it breaks, its fingerprint, its MinHash signature, and the
    fingerprints of its long lines."""
    text = normalise(raw)
    lines = text.split("\n")
    dropped = [line for line in lines if "javascript" in line.lower()]
    if dropped:
        lines = [line for line in lines if "javascript" not in line.lower()]
        text = "\n".join(lines)
    doc = describe(text)
    problem = quality_problem(doc)
    if problem:
        return {"raw": len(raw), "text": text, "dropped": dropped, "problem": problem}
    return {"raw": len(raw), "text": text, "dropped": dropped, "problem": None, "key": key(text),
            "signature": signature(doc["ids"]),
            "lines": {line: key(line) for line in lines if long_line(line)}}


class Cleaner:
    """What must be remembered across documents (hashes and signatures), and the report: for
    each rule, the documents (or lines) and characters it removed, and the first example."""

    def __init__(self):
        self.doc_keys, self.line_keys = set(), set()
        self.near = NearDuplicates()
        self.report = {"documents": 0, "characters": 0, "kept_documents": 0,
                       "kept_characters": 0, "rules": {}}

    def removed(self, rule, text, reason=None, unit="documents"):
        entry = self.report["rules"].setdefault(rule, {unit: 0, "characters": 0})
        entry[unit] += 1
        entry["characters"] += len(text)
        if "example" not in entry:  # one short example per rule
            entry["example"] = text[:80] + ("..." if len(text) > 80 else "")
            if reason:
                entry["reason"] = reason

    def clean(self, raw):
        """The document as it should be trained on, or None where it is dropped."""
        return self.decide(examine(raw))

    def decide(self, doc):
        """Steps 3 to 5 for a document examined by `examine`, in corpus order: drop it, or keep
        it without the boilerplate lines an earlier document had."""
        self.report["documents"] += 1
        self.report["characters"] += doc["raw"]
        for line in doc["dropped"]:
            self.removed("javascript_line", line, unit="lines")
        text = doc["text"]
        if doc["problem"]:
            return self.removed(doc["problem"][0], text, doc["problem"][1])
        if doc["key"] in self.doc_keys:
            return self.removed("exact_duplicate", text)
        self.doc_keys.add(doc["key"])
        if self.near.find(doc["signature"]) is not None:
            return self.removed("near_duplicate", text)
        self.near.add(doc["signature"])
        kept = []
        for line in text.split("\n"):
            if line in doc["lines"] and doc["lines"][line] in self.line_keys:
                self.removed("boilerplate_line", line, unit="lines")
            else:
                kept.append(line)
        self.line_keys.update(doc["lines"].values())
        text = "\n".join(kept)
        self.report["kept_documents"] += 1
        self.report["kept_characters"] += len(text)
        return text


def clean_all(documents, cleaner, processes=None, batch=64):
    """The documents the cleaner keeps, in order. `examine` runs on `processes` cores (default:
    all), a batch of documents at a time, so that memory stays bounded however long the corpus;
    the decisions that need the earlier documents are made here, in order."""
    documents = iter(documents)
    with multiprocessing.Pool(processes) as pool:
        while docs := list(itertools.islice(documents, batch)):
            for doc in pool.map(examine, docs):
                kept = cleaner.decide(doc)
                if kept:
                    yield kept


def print_report(report):
    """The report as a table: what each rule removed, and what was kept."""
    print(f"{'cleaning: rule':34} {'removed':>14} {'characters':>12}  example")
    for rule, entry in report["rules"].items():
        unit = "lines" if "lines" in entry else "documents"
        print(f"  {rule:32} {entry[unit]:>8,} {unit[:5]:5} {entry['characters']:>12,}  "
              f"{entry['example'][:40]!r}")
    print(f"cleaning: kept {report['kept_documents']:,} of {report['documents']:,} documents, "
          f"{report['kept_characters']:,} of {report['characters']:,} characters")
