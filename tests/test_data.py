"""data.py: text written by the tests goes in, exactly its tokens come out; batches are the windows
they claim to be; and getting WikiText-2 fails clearly, or works, against a local HTTP server."""

import http.server
import io
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import clean
import data
import fetch
from mlm import MLM
from model import EOT_ID

ARTICLES = [
    " = Alpha Centauri = \n \n Alpha Centauri is a star system 4 @.@ 37 light @-@ years away . "
    "\n \n"
    ' = = Name = = \n \n The name means " the foot of the centaur " . \n \n',
    " = Ödön von Horváth = \n \n Ödön von Horváth ( 1901 – 1938 ) wrote plays in German . \n \n",
    " = The 1 @,@ 000 Guineas = \n \n A horse race run over a mile , first held in 1814 . \n",
]


def write_wikitext(folder, variant="raw", articles=ARTICLES):
    """Three small split files in WikiText's format; returns the line counts to expect."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = {
        "train": " \n" + "".join(articles),
        "val": " \n" + articles[1],
        "test": " \n" + articles[2],
    }
    for split, name in zip(fetch.SPLITS, fetch.WIKITEXT[variant]["files"]):
        (folder / name).write_text(texts[split], encoding="utf-8")
    return texts, {"lines": {s: t.count("\n") for s, t in texts.items()}, "sha256": {}}


def tokens(path):
    return np.fromfile(path, dtype=np.uint16).tolist()


# 1. Text in, tokens out ---------------------------------------------------------------------------

def test_gpt2_bpe_round_trips_any_text():
    enc = data.tokenizer()
    text = "Naïve café — 東京 🚀 \n\n  tabs\tand  spaces, <unk> @-@ \"quotes\""
    ids = enc.encode_ordinary(text)
    assert enc.decode(ids) == text
    assert max(ids) < EOT_ID  # ordinary text never produces <|endoftext|>


def test_each_bin_holds_exactly_the_tokens_of_its_articles_separated_by_eot(tmp_path):
    texts, expected = write_wikitext(tmp_path)
    meta = data.prepare(tmp_path, expected=expected)
    enc = data.tokenizer()
    # the leading blank line forms a whitespace-only document, which is dropped
    train_docs = ARTICLES
    by_hand = [i for doc in train_docs for i in enc.encode_ordinary(doc) + [EOT_ID]]
    assert tokens(tmp_path / "train.bin") == by_hand
    assert tokens(tmp_path / "val.bin") == enc.encode_ordinary(ARTICLES[1]) + [EOT_ID]
    assert meta["tokens"] == {"train": len(by_hand), "val": len(tokens(tmp_path / "val.bin")),
                              "test": len(tokens(tmp_path / "test.bin"))}
    assert (
        enc.decode(tokens(tmp_path / "train.bin"))
        == "<|endoftext|>".join(ARTICLES) + "<|endoftext|>"
    )


def test_section_headings_do_not_start_documents():
    docs = list(data.wikitext_documents(io.StringIO(" \n" + "".join(ARTICLES))))
    assert docs[1:] == ARTICLES and docs[0] == " \n"


def test_a_second_prepare_does_not_tokenize_and_a_changed_source_does(tmp_path, monkeypatch):
    texts, expected = write_wikitext(tmp_path)
    data.prepare(tmp_path, expected=expected)
    calls = []
    real = data.tokenize_to_file
    monkeypatch.setattr(data, "tokenize_to_file", lambda *a: calls.append(a) or real(*a))
    data.prepare(tmp_path, expected=expected)
    assert calls == []
    changed = texts["val"].replace("plays", "novels")  # same number of lines, different text
    (tmp_path / "wiki.valid.raw").write_text(changed, encoding="utf-8")
    data.prepare(tmp_path, expected=expected)
    assert len(calls) == 3
    assert "novels" in data.tokenizer().decode(tokens(tmp_path / "val.bin"))


def test_a_second_folder_copies_wikitext_from_the_default_one(tmp_path, monkeypatch):
    """A second tokenization of WikiText-2 (BERT's trained tokenizer) copies the files that
    data/wikitext-2 holds instead of downloading them; the default folder is left as it was."""
    texts, expected = write_wikitext(tmp_path / "default")
    monkeypatch.setattr(data, "WIKITEXT_DIR", str(tmp_path / "default"))
    meta = data.prepare(tmp_path / "other", expected=expected, mirrors=("http://127.0.0.1:9/",))
    assert (tmp_path / "other" / "wiki.valid.raw").read_text(encoding="utf-8") == texts["val"]
    assert meta["tokens"]["val"] == len(data.tokenizer().encode_ordinary(ARTICLES[1])) + 1
    assert sorted(p.name for p in (tmp_path / "default").iterdir()) == sorted(
        fetch.WIKITEXT["raw"]["files"])  # nothing was written there


def test_the_v1_files_are_used_when_they_are_the_ones_present(tmp_path):
    texts, expected = write_wikitext(tmp_path, variant="v1")
    meta = data.prepare(tmp_path, variant="raw", expected=expected)
    assert meta["source"]["wikitext"]["train"] == "wiki.train.tokens"


def test_your_own_text_is_split_into_train_and_val(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("First file. " * 50, encoding="utf-8")
    (corpus / "b.txt").write_text("Second file, a little longer. " * 60, encoding="utf-8")
    meta = data.prepare(tmp_path / "prepared", text=str(corpus), val_fraction=0.2, clean_text=False)
    enc = data.tokenizer()
    everything = enc.encode_ordinary("First file. " * 50) + [EOT_ID] + enc.encode_ordinary(
        "Second file, a little longer. " * 60) + [EOT_ID]
    train, val = tokens(tmp_path / "prepared/train.bin"), tokens(tmp_path / "prepared/val.bin")
    assert train + val == everything
    assert len(val) == int(len(everything) * 0.2)
    assert meta["tokens"] == {"train": len(train), "val": len(val)}
    # the folder remembers its text: preparing it again without --text changes nothing
    assert data.prepare(tmp_path / "prepared") == meta


def test_a_folder_made_from_a_relative_path_is_up_to_date_for_train_py(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("notes.txt").write_text("Relative paths are resolved once. " * 40, encoding="utf-8")
    meta = data.prepare("prepared", text="notes.txt", clean_text=False)
    monkeypatch.setattr(data, "tokenize_to_file", None)  # tokenizing again would fail
    assert data.prepare("prepared") == meta  # as train.py calls it, from the remembered text


def test_long_text_read_in_pieces_tokenizes_like_the_whole(tmp_path):
    text = (
        "Line one,  with two spaces.\n\n\nThree newlines;\ttab \n word's end. 1,000 — ünïcode!  \n"
        * 40
    )
    path = tmp_path / "long.txt"
    path.write_text(text, encoding="utf-8")
    pieces = list(data.text_pieces(path, piece_chars=64))
    assert len(pieces) > 20 and "".join(pieces) == text
    enc = data.tokenizer()
    assert [i for p in pieces for i in enc.encode_ordinary(p)] == enc.encode_ordinary(text)


def test_text_as_it_is_ends_a_document_at_a_separator_line_as_cleaning_does(tmp_path):
    """--no_clean: a line holding only <|endoftext|> ends a document, as clean.documents splits
    them, and becomes the end-of-text id, not its characters; documents longer than a piece
    still tokenize exactly."""
    docs = ["First document,  two spaces.\n" * 9, "Second one;\ttab \n\n\nend.\n",
            "Third, \u00fcn\u00efcode!  \n" * 7]
    text = docs[0] + "<|endoftext|>\n" + docs[1] + "  <|endoftext|> \n\n<|endoftext|>\n" + docs[2]
    path = tmp_path / "docs.txt"
    path.write_text(text, encoding="utf-8")
    assert list(clean.documents(path)) == docs  # cleaning's split (a blank part is no document)
    enc = data.tokenizer()
    pieces = list(data.text_stream([path], piece_chars=64))
    assert len(pieces) > 10  # the long documents came in several pieces (and 3 END markers)
    ids = [i for p in pieces for i in (enc.encode_ordinary(p) if p is not data.END
                                        else [enc.eot_token])]
    expected = [i for d in docs for i in enc.encode_ordinary(d) + [enc.eot_token]]
    assert ids == expected
    data.prepare(tmp_path / "d", text=str(path), clean_text=False)
    written = [*data.open_split(tmp_path / "d", "train"), *data.open_split(tmp_path / "d", "val")]
    assert written == expected


@pytest.mark.parametrize("clean_text", [True, False])
def test_text_of_separators_only_is_refused_saying_so(tmp_path, clean_text):
    (tmp_path / "s.txt").write_text("<|endoftext|>\n\n<|endoftext|>\n", encoding="utf-8")
    with pytest.raises(data.DataError, match="hold no text to learn from: only lines of "
                                             "<\\|endoftext\\|> and blank ones"):
        data.prepare(tmp_path / "d", text=str(tmp_path / "s.txt"), clean_text=clean_text)
    assert not list((tmp_path / "d").glob("*.bin*"))


def test_text_that_is_not_utf8_gets_a_clear_error(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(data.DataError, match="not UTF-8"):
        data.prepare(tmp_path / "out", text=str(tmp_path / "latin1.txt"))


# 2. Batches ---------------------------------------------------------------------------------------

@pytest.fixture
def counting(tmp_path):
    """A split whose token at position i is i: every window shows where it came from."""
    np.arange(1000, dtype=np.uint16).tofile(tmp_path / "train.bin")
    return data.open_split(tmp_path, "train")


def test_training_windows_are_contiguous_slices_inside_the_file(counting):
    assert isinstance(counting, np.memmap)  # read from disk on demand, never loaded whole
    g = torch.Generator().manual_seed(0)
    x = data.get_batch(counting, 8, 32, g)
    assert x.shape == (8, 32) and x.dtype == torch.int64
    short = counting[:100]  # 69 possible windows of 32: 1,600 draws reach every one of them
    starts = torch.cat([data.get_batch(short, 8, 32, g) for _ in range(200)])
    assert torch.all(starts[:, 1:] - starts[:, :-1] == 1)  # consecutive tokens of the file
    # all inside, none missed
    assert sorted(set(starts[:, 0].tolist())) == list(range(100 - 32 + 1))


def test_the_same_generator_state_gives_the_same_batches(counting):
    g = torch.Generator().manual_seed(1)
    state = g.get_state()
    mlm = MLM()
    first = [data.get_batch(counting, 4, 16, g) for _ in range(3)]
    first += mlm.train_batch(data.get_batch(counting, 4, 16, g), g)
    g.set_state(state)
    second = [data.get_batch(counting, 4, 16, g) for _ in range(3)]
    second += mlm.train_batch(data.get_batch(counting, 4, 16, g), g)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_mlm_batches_are_masked_training_windows(counting):
    g = torch.Generator().manual_seed(2)
    objective = MLM()
    inputs, labels = objective.train_batch(data.get_batch(counting, 8, 64, g), g)
    chosen = labels != -100
    assert inputs.shape == labels.shape == (8, 64)
    assert torch.all(chosen.sum(1) == round(64 * objective.mask_prob))
    original = torch.where(chosen, labels, inputs)  # put the hidden tokens back
    assert torch.all(original[:, 1:] - original[:, :-1] == 1)


@pytest.mark.parametrize("n", [2, 5, 31, 32, 33, 63, 64, 65, 1000])
def test_clm_evaluation_predicts_every_token_but_the_first_exactly_once(n):
    targets = []
    for starts, length in data.eval_batches(n, block_size=32, batch_size=3, stride=31):
        assert len(starts) <= 3 and length <= 32
        for s in starts:  # a block [s, s + length) scores the tokens s+1 .. s+length-1
            targets += range(s + 1, s + length)
    assert sorted(targets) == list(range(1, n)) and len(targets) == n - 1


@pytest.mark.parametrize("n", [1, 31, 32, 33, 1000])
def test_mlm_evaluation_covers_every_token_exactly_once(n):
    covered = [t for starts, length in data.eval_batches(n, 32, 3, stride=32) for s in starts
               for t in range(s, s + length)]
    assert sorted(covered) == list(range(n))


# 3-4. Getting WikiText-2 --------------------------------------------------------------------------

class Handler(http.server.BaseHTTPRequestHandler):
    """Serves self.files: {path: (body, declared Content-Length)}; anything else is a 404."""

    def do_GET(self):
        if self.path not in self.files:
            self.send_error(404)
            return
        body, length = self.files[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    files = {}
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), type("H", (Handler,), {"files": files})
    )
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield files, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def wikitext_zip(tmp_path):
    texts, expected = write_wikitext(tmp_path / "made")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for name in fetch.WIKITEXT["raw"]["files"]:
            z.write(tmp_path / "made" / name, f"wikitext-2-raw/{name}")
    return buffer.getvalue(), expected


def leftovers(folder):
    return sorted(
        p.name for p in folder.iterdir() if p.name.startswith("wiki") or p.suffix == ".part"
    )


@pytest.mark.parametrize("slash", [True, False])  # --mirror: a folder's address, with or without /
def test_wikitext_is_downloaded_checked_and_extracted(tmp_path, server, slash):
    files, url = server
    body, expected = wikitext_zip(tmp_path)
    files["/wikitext-2-raw-v1.zip"] = (body, len(body))
    url = url if slash else url.rstrip("/")
    meta = data.prepare(tmp_path / "d", mirrors=(url,), expected=expected)
    assert leftovers(tmp_path / "d") == [
        "wiki.test.raw", "wiki.train.raw", "wiki.valid.raw", "wikitext-2-raw-v1.zip",
    ]
    assert tokens(tmp_path / "d/val.bin") == data.tokenizer().encode_ordinary(ARTICLES[1]) + [
        EOT_ID
    ]
    assert meta["source"]["wikitext"]["val"] == "wiki.valid.raw"


def test_a_missing_file_on_the_server_gives_the_clear_message(tmp_path, server):
    _, url = server
    with pytest.raises(
        data.DataError, match=r"could not be downloaded \(.*404.*Put wikitext-2-raw-v1.zip"
    ):
        data.prepare(tmp_path, mirrors=(url,))
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("how", ["truncated file", "connection closed early"])
def test_a_zip_cut_short_leaves_nothing_half_written(tmp_path, server, how):
    files, url = server
    body, expected = wikitext_zip(tmp_path)
    half = body[: len(body) // 2]
    files["/wikitext-2-raw-v1.zip"] = (half, len(half) if how == "truncated file" else len(body))
    with pytest.raises(
        data.DataError, match="could not be downloaded .*(damaged|got .* bytes|IncompleteRead)"
    ):
        fetch.wikitext(tmp_path / "d", mirrors=(url,), expected=expected)
    assert leftovers(tmp_path / "d") == []  # no split, no .part, and not the damaged zip either


def test_split_files_with_the_wrong_line_count_are_refused(tmp_path):
    texts, expected = write_wikitext(tmp_path)
    expected["lines"]["train"] += 1  # as if the file had lost its last line
    with pytest.raises(data.DataError, match="wiki.train.raw has .* lines.*truncated"):
        data.prepare(tmp_path, expected=expected)


def test_a_published_file_with_the_wrong_checksum_is_refused(tmp_path):
    write_wikitext(tmp_path, variant="v1")
    counts = {s: (tmp_path / n).read_text().count("\n")
              for s, n in zip(fetch.SPLITS, fetch.WIKITEXT["v1"]["files"])}
    with pytest.raises(data.DataError, match="wiki.train.tokens is not the published file"):
        fetch.wikitext(tmp_path, expected={"lines": counts, "sha256": fetch.SHA256})


def test_offline_with_no_data_exits_with_one_clear_line(tmp_path):
    closed = "http://127.0.0.1:9/"  # the discard port: nothing listens there
    result = subprocess.run(
        [sys.executable, str(Path(__file__).parents[1] / "data.py"), "--data_dir",
         str(tmp_path / "empty"), "--mirror", closed],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # where no data/wikitext-2 could be copied from
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert (
        message.startswith("error: WikiText-2 is not in")
        and "https://wikitext.smerity.com/wikitext-2-raw-v1.zip" in message
    )
