"""bpe.py: the trainer's merges (by hand and against a trainer that recounts everything), the
reference encoder against tiktoken on GPT-2's ranks, and round trips through a trained tokenizer."""

import random
from collections import Counter

import pytest

import bpe
import data
import prepared


def test_merges_on_a_tiny_corpus_are_the_ones_worked_out_by_hand():
    # Pairs, weighted by chunk counts: (a,b) 3+2+1 = 6 wins. Then (ab,c) 2 and (x,y) 2 tie: the
    # smaller pair of ids goes first, (x=120, y=121) before (ab=256, c=99). Then (ab,c), then
    # (" ",ab) once; then no pair is left, so a larger vocabulary stops there.
    counts = {"ab": 3, "abc": 2, " ab": 1, "xy": 2}
    assert bpe.train(counts, 256 + 4 + 2)[256:] == [b"ab", b"xy", b"abc", b" ab"]
    assert bpe.train(counts, 1000)[256:] == [b"ab", b"xy", b"abc", b" ab"]
    assert bpe.train(counts, 256 + 1 + 2)[256:] == [b"ab"]  # 2 ids kept for the special tokens
    # Overlaps: "aaaa" holds (a,a) three times, but merging left to right makes two "aa"s, whose
    # pair is then the only one: "aaaa". In "aaa", one "aa" and an "a" are left: "aaa".
    assert bpe.train({"aaaa": 1}, 300)[256:] == [b"aa", b"aaaa"]
    assert bpe.train({"aaa": 1}, 300)[256:] == [b"aa", b"aaa"]
    assert bpe.train({"é": 5}, 300)[256:] == ["é".encode()]  # bytes, not characters: 0xC3 0xA9


def recounting_bpe(counts, vocab_size):
    """The textbook trainer: recount every pair of every chunk before each merge."""
    vocab = [bytes([b]) for b in range(256)]
    words = {tuple(bytes([b]) for b in chunk.encode()): n for chunk, n in counts.items()}
    while len(vocab) < vocab_size - 2:
        pairs = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        a, b = min(pairs, key=lambda p: (-pairs[p], vocab.index(p[0]), vocab.index(p[1])))
        if a + b not in vocab:
            vocab.append(a + b)
        words = {merged(word, a, b): n for word, n in words.items()}
    return vocab


def merged(word, a, b):
    out, i = [], 0
    while i < len(word):
        if word[i : i + 2] == (a, b):
            out.append(a + b)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def test_incremental_pair_counts_give_the_merges_of_recounting_everything():
    rng = random.Random(0)  # a small alphabet: many ties, overlaps and repeated pairs
    counts = Counter("".join(rng.choice("aab c") for _ in range(rng.randint(1, 9)))
                     for _ in range(400))
    assert bpe.train(counts, 256 + 60) == recounting_bpe(counts, 256 + 60)


def test_chunks_follow_gpt2s_pattern_where_pythons_own_classes_differ():
    # GPT-2's \p{N} holds every number character (², ½, Ⅻ), but Python's \d only the decimal
    # digits and its \w counts the others as word characters; Python's \s holds the separators
    # \x1c-\x1f, Unicode's White_Space does not. Worked out from GPT-2's pattern by hand:
    assert bpe.pattern().findall("x² 2½ Ⅻa it's") == ["x", "²", " 2½", " Ⅻ", "a", " it", "'s"]
    assert bpe.pattern().findall("a \x1c\x1d\n\n b") == ["a", " \x1c\x1d", "\n\n", " b"]


@pytest.fixture(scope="module")
def gpt2():
    return data.tokenizer()


VARIED = [
    "The history of the Roman Empire. It's 2026; they'll say we'd've known. 'S and 'T stay.",
    "预训练的目标是在大规模、无标注的文本数据上训练模型，学习通用的语言规律。",
    "emoji: 👍🏽 👨‍👩‍👧 🇫🇷 ✨✨✨",
    "def f(x_1):\n\treturn {'a': [x_1 ** 2, -3.5e-7]}  # comment\n",
    "  leading and    inner   runs\t\t\ttabs \n\n\n   \n trailing   ",
    "numbers 1234567 x² ½ 2½ Ⅻ 〇 ٣٤ and marks naïve e\u0301 नमस्ते ไทย",
    "control \x00\x01\x1c\x1d\x1f\x7f, replacement \ufffd, a lone surrogate \ud800 here",
    "",
]


def test_the_reference_encoder_equals_tiktoken_on_gpt2s_ranks(gpt2):
    ranks = gpt2._mergeable_ranks  # GPT-2's table: token bytes -> rank (= id)
    for text in VARIED:
        assert bpe.encode(text, ranks) == gpt2.encode_ordinary(text), text
    rng = random.Random(1)  # random text from every plane of Unicode, spaces and ASCII
    for _ in range(300):
        text = "".join(chr(rng.choice([rng.randrange(0x110000), rng.randrange(0x20, 0x7F),
                                       rng.randrange(0x3000), 32, 10]))
                       for _ in range(rng.randint(1, 30)))
        assert bpe.encode(text, ranks) == gpt2.encode_ordinary(text), repr(text)


def test_bpe_of_one_chunk_equals_tiktoken_on_any_bytes_even_invalid_utf8(gpt2):
    rng = random.Random(2)
    pieces = [b"\xff\xfe\x80abc", b"\xe4\xbd", b"\xc3(", bytes(range(256)), b" the" * 5]
    pieces += [bytes(rng.randrange(256) for _ in range(rng.randint(1, 20))) for _ in range(300)]
    for piece in pieces:  # tiktoken's BPE of a single chunk, without its pattern
        assert bpe.encode_chunk(piece, gpt2._mergeable_ranks) == gpt2._encode_single_piece(piece)


def test_any_text_round_trips_through_a_trained_tokenizer_unseen_characters_as_bytes():
    english = "the cat sat on the mat. the dog sat on the log. " * 20
    vocab = bpe.train(bpe.count_chunks([english]), 300)
    enc = bpe.encoding(vocab)
    ranks = {token: i for i, token in enumerate(vocab)}
    assert len(enc.encode_ordinary(" the cat sat")) == 3  # learned words are one token each
    for text in VARIED:
        text = text.replace("\ud800", "")  # a lone surrogate is not text: no bytes to give back
        assert enc.decode(enc.encode_ordinary(text)) == text  # Chinese, emoji: never seen
        assert bpe.encode(text, ranks) == enc.encode_ordinary(text)  # the reference agrees
    rng = random.Random(3)
    for _ in range(300):
        text = "".join(chr(c) for c in (rng.randrange(0x110000) for _ in range(10))
                       if not 0xD800 <= c < 0xE000)  # surrogates are not text
        assert enc.decode_bytes(enc.encode_ordinary(text)) == text.encode()
    eot, mask = enc.encode("<|endoftext|>[MASK]", allowed_special="all")
    assert (eot, mask) == (enc.eot_token, enc.eot_token + 1) == (len(vocab), len(vocab) + 1)


def test_a_saved_tokenizer_loads_back_and_keeps_its_name(tmp_path):
    vocab = bpe.train(bpe.count_chunks(["low lower lowest newer wider " * 9]), 290)
    bpe.save(vocab, tmp_path / "tokenizer.bpe")
    assert bpe.load(tmp_path / "tokenizer.bpe") == vocab
    assert bpe.encoding(bpe.load(tmp_path / "tokenizer.bpe")).name == bpe.encoding(vocab).name
    assert bpe.encoding(vocab).name != bpe.encoding(vocab[:-1]).name  # the name tells them apart


# End to end: data.py --tokenizer_size, train.py, sample.py ---------------------------------------

TINY = ["--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--batch_size",
        "8", "--device", "cpu", "--dtype", "float32", "--lr", "3e-3", "--warmup_steps", "5",
        "--eval_iters", "2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A corpus of two sentences, prepared with a 300-id tokenizer trained on it."""
    folder = tmp_path_factory.mktemp("bpe")
    text = " ".join(["the cat sat on the mat.", "a dog ran in the park."] * 300)
    (folder / "t.txt").write_text(text, encoding="utf-8")
    data.main(["--text", str(folder / "t.txt"), "--data_dir", str(folder / "d"),
               "--tokenizer_size", "300", "--no_clean"])
    return folder, text


def test_the_bin_files_hold_the_trained_tokenizers_ids(trained):
    folder, text = trained
    vocab = data.read_vocab(folder / "d")
    enc, meta = bpe.encoding(vocab), prepared.read_meta(folder / "d")
    assert 256 < len(vocab) <= 298  # fewer, where the text runs out of pairs
    assert (meta["tokenizer"], meta["eot_id"]) == (enc.name, len(vocab))
    ids = [*data.open_split(folder / "d", "train"), *data.open_split(folder / "d", "val")]
    assert ids == enc.encode_ordinary(text) + [len(vocab)]  # the text, then <|endoftext|>


def test_a_gpt_and_a_bert_train_and_sample_with_a_trained_tokenizer(trained, capsys):
    import sample
    import train
    from checkpoint import load_checkpoint
    folder, _ = trained
    for model, steps in (("gpt", "300"), ("bert", "400")):  # a BERT step predicts 30%
        train.main(["--model", model, "--data_dir", str(folder / "d"), "--out_dir",
                    str(folder / model), "--max_steps", steps, *TINY])
        checkpoint = load_checkpoint(folder / model / "ckpt.pt")
        assert checkpoint["tokenizer"] == data.read_vocab(folder / "d")
        assert checkpoint["model_config"]["vocab_size"] == 320  # <= 298 ids, and 2: 64 x 5
    capsys.readouterr()
    sample.main(["--ckpt", str(folder / "gpt/ckpt.pt"), "--prompt", "a dog ran in", "--device",
                 "cpu", "--temperature", "0", "--max_new_tokens", "4"])
    assert "a dog ran in the park." in capsys.readouterr().out
    masked = {"the cat sat on the [MASK].": " mat", "a dog ran in the [MASK].": " park"}
    for prompt, word in masked.items():
        sample.main(["--ckpt", str(folder / "bert/ckpt.pt"), "--prompt", prompt, "--device", "cpu"])
        assert capsys.readouterr().out.startswith(f"[MASK] 1: {word!r}")


def test_a_bert_trains_its_own_tokenizer_for_a_new_folder_and_keeps_a_prepared_ones(tmp_path):
    """BERT's default --tokenizer_size (mlm.MLM.defaults) applies to a folder it prepares; a
    folder already prepared, here with GPT-2's tokens, is trained on as it is."""
    import runtime
    import train
    from mlm import MLM
    text = " ".join(["the cat sat on the mat.", "a dog ran in the park."] * 50)
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    for model, folder in (("bert", "own"), ("gpt", "gpt2")):
        train.main(["--model", model, "--text", str(tmp_path / "t.txt"), "--no_clean", "--data_dir",
                    str(tmp_path / folder), "--out_dir", str(tmp_path / model), "--max_steps", "5",
                    *TINY])
    own, gpt2 = prepared.read_meta(tmp_path / "own"), prepared.read_meta(tmp_path / "gpt2")
    assert own["source"]["vocab_size"] == MLM.defaults["tokenizer_size"]
    assert own["tokenizer"].startswith("bpe-") and data.read_vocab(tmp_path / "own") is not None
    assert gpt2["tokenizer"] == "gpt2" and "vocab_size" not in gpt2["source"]
    train.main(["--model", "bert", "--data_dir", str(tmp_path / "gpt2"), "--out_dir",
                str(tmp_path / "bert-gpt2"), "--max_steps", "5", *TINY])
    assert prepared.read_meta(tmp_path / "gpt2") == gpt2  # not tokenized again
    with pytest.raises(runtime.ConfigError, match="--tokenizer_size 0: --data_dir .* holds the "
                                                  "tokens of a trained tokenizer"):
        train.main(["--model", "bert", "--data_dir", str(tmp_path / "own"), "--tokenizer_size",
                    "0", "--out_dir", str(tmp_path / "bert-0"), "--max_steps", "5", *TINY])
    assert prepared.read_meta(tmp_path / "own") == own  # and the folder is as it was
