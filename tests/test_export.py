"""export.py: our GPT in Hugging Face's layout. The weights survive the round trip exactly, the
safetensors file reads back bit for bit with a reader written here from the format's description,
and the vocab.json/merges.txt pair, applied by a BPE written here, encodes as tiktoken does."""

import json
import math
import re

import numpy as np
import pytest
import torch

import export
from model import BERT, GPT, ModelConfig
from runtime import ConfigError


def tiny_gpt(**kw):
    torch.manual_seed(0)
    return GPT(ModelConfig(**{**dict(vocab_size=96, block_size=16, n_layer=2, n_head=2,
                                     n_embd=32), **kw}))


@pytest.mark.parametrize("bias", [True, False])
def test_from_gpt2_of_to_gpt2_gives_back_the_same_model(bias):
    ours = tiny_gpt(bias=bias)
    back = GPT.from_gpt2(ours.to_gpt2(), n_head=2)
    idx = torch.randint(0, 96, (2, 16))
    if bias:  # the very same parameters, bit for bit
        assert back.state_dict().keys() == ours.state_dict().keys()
        for name, value in ours.state_dict().items():
            assert torch.equal(back.state_dict()[name], value), name
    assert torch.equal(back(idx), ours(idx))  # without biases: zero biases compute the same


def read_safetensors(path):
    """The format, read by hand: 8 bytes of little-endian header length, the JSON header, then the
    tensors' bytes at the offsets the header gives."""
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    body = raw[8 + n:]
    return n, header, body


def test_safetensors_file_reads_back_bit_for_bit(tmp_path):
    tensors = tiny_gpt().to_gpt2()
    export.write_safetensors(tmp_path / "m.safetensors", tensors)
    n, header, body = read_safetensors(tmp_path / "m.safetensors")
    assert n % 8 == 0  # the data starts 8-byte aligned
    assert header.pop("__metadata__") == {"format": "pt"}
    assert header.keys() == tensors.keys()
    spans = sorted(entry["data_offsets"] for entry in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(body)  # nothing before, nothing after
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, no overlap
    for name, entry in header.items():
        assert entry["dtype"] == "F32"
        start, end = entry["data_offsets"]
        values = np.frombuffer(body[start:end], dtype="<f4").reshape(entry["shape"])
        assert torch.equal(torch.from_numpy(values.copy()), tensors[name]), name


def test_gpt2_byte_map_is_printable_and_one_to_one():
    char = export.byte_to_unicode()
    assert sorted(char) == list(range(256))
    assert len(set(char.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in char.values())
    assert char[ord(" ")] == "Ġ" and char[ord("A")] == "A"  # as in GPT-2's vocab.json: "Ġthe"


# GPT-2's pre-tokenizer splits text into words before BPE. Its pattern uses \p{L} (letters) and
# \p{N} (numbers); Python's re has neither, so this test writes them as [^\W\d_] and \d, which
# agree on the text below.
PRETOKENIZE = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|"""
                         r"""\s+(?!\S)|\s+""")
TEXT = ("The Valkyria Chronicles III is a tactical role-playing game; it's Sega's, and they'll "
        "sell 1,000,000 copies in 2011!  Zoë's café serves crème brûlée.\n\n  東京 is Tokyo "
        "(日本). Emoji 🙂 and snake_case_names, x += 42 ... \"quoted\" text\twith tabs\n")


def reference_bpe(word, merge_rank, vocab):
    """Hugging Face's byte-level BPE: spell the word's bytes with GPT-2's characters, then keep
    joining the adjacent pair that comes first in merges.txt."""
    parts = list(word)
    while len(parts) > 1:
        rank, i = min((merge_rank.get(pair, math.inf), i)
                      for i, pair in enumerate(zip(parts, parts[1:])))
        if rank == math.inf:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return [vocab[p] for p in parts]


def hugging_face_ids(enc, text):
    """The ids of text by the vocab.json and merges.txt that export writes for enc."""
    ranks = {token: enc.encode_single_token(token) for token in enc.token_byte_values()}
    files = export.tokenizer_files(ranks, enc.eot_token, 128)
    vocab = json.loads(files["vocab.json"])
    lines = files["merges.txt"].splitlines()
    assert lines[0] == "#version: 0.2" and len(lines) - 1 == len(ranks) - 256  # one per merge
    assert len(vocab) == enc.eot_token + 1 and vocab["<|endoftext|>"] == enc.eot_token
    merge_rank = {tuple(line.split(" ")): r for r, line in enumerate(lines[1:])}
    char = export.byte_to_unicode()
    ids = []
    for word in PRETOKENIZE.findall(text):
        spelled = "".join(char[b] for b in word.encode("utf-8"))
        ids += reference_bpe(spelled, merge_rank, vocab)
    return ids


def test_exported_tokenizer_encodes_like_tiktoken():
    import data
    enc = data.tokenizer()
    assert enc.eot_token == 50256 and len(enc.token_byte_values()) - 256 == 50000  # GPT-2's merges
    assert hugging_face_ids(enc, TEXT) == enc.encode_ordinary(TEXT)


def test_a_trained_tokenizer_exports_too():
    import bpe
    enc = bpe.encoding(bpe.train(bpe.count_chunks([TEXT * 20]), 500))
    assert hugging_face_ids(enc, TEXT) == enc.encode_ordinary(TEXT)
    assert len(enc.encode_ordinary(TEXT)) < len(TEXT.encode()) / 3  # it did learn merges


def test_export_writes_a_loadable_folder_and_refuses_what_gpt2_cannot_hold(tmp_path, capsys):
    import data
    model = tiny_gpt(vocab_size=50304, n_embd=16)
    paths = export.export_hf(model, data.tokenizer(), tmp_path / "hf")
    names = {p.name for p in paths}
    assert names >= {"config.json", "model.safetensors", "vocab.json", "merges.txt"}
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    _, header, _ = read_safetensors(tmp_path / "hf" / "model.safetensors")
    assert header["transformer.wte.weight"]["shape"] == [config["vocab_size"], 16]
    assert config["vocab_size"] == data.tokenizer().n_vocab  # padded rows cut (export.py)
    assert "lm_head.weight" not in header  # tied: Hugging Face makes it from wte
    with pytest.raises(ConfigError, match="--position rope"):
        export.export_hf(tiny_gpt(vocab_size=50304, position="rope"), data.tokenizer(),
                         tmp_path / "rope")
    with pytest.raises(ConfigError, match="fewer than"):
        export.export_hf(tiny_gpt(), data.tokenizer(), tmp_path / "small")
    bert = BERT(ModelConfig(vocab_size=50304, block_size=8, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ConfigError, match="this checkpoint is a BERT"):
        export.export_hf(bert, data.tokenizer(), tmp_path / "bert")
    assert not (tmp_path / "bert").exists()  # refused before anything was written
    # A folder of our own export is written over; one that holds another model's tokenizer.json
    # is refused (a loader would prefer it to our vocab.json and merges.txt), and left as it was
    before = {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()}
    assert {p.name for p in export.export_hf(model, data.tokenizer(), tmp_path / "hf")} == names
    assert {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()} == before
    (tmp_path / "hf" / "tokenizer.json").write_text("{}")
    with pytest.raises(ConfigError, match=f"--export_hf {tmp_path / 'hf'} holds other files "
                                          f"\\(tokenizer.json\\), which a loader would read"):
        export.export_hf(model, data.tokenizer(), tmp_path / "hf")
    assert {p.name for p in (tmp_path / "hf").iterdir()} == names | {"tokenizer.json"}
