"""
export.py: a GPT trained here, written in Hugging Face's format, so that `transformers`, the Hub
and the tools built on them (text-generation servers, llama.cpp's converters) can use it. It takes
one job out of sample.py, which runs it (`--export_hf DIR`).

What a model folder holds
  * config.json: the architecture by name (GPT2LMHeadModel) and its sizes. Our GPT is GPT-2's
    architecture, so the numbers map one to one: n_positions is our block_size, "gelu_new" is
    GPT-2's tanh approximation of GELU (ours too), LayerNorm eps 1e-5, tied embeddings.
  * model.safetensors: the weights. The format is simple enough to write by hand
    (`write_safetensors`): 8 bytes giving the header's length (little-endian), a JSON header
    naming each tensor with its dtype, shape and byte range, then the raw bytes. Unlike a pickled
    torch file it runs no code when loaded, and it can be memory-mapped. The names and shapes are
    GPT-2's: `model.GPT.to_gpt2`, the inverse of `GPT.from_gpt2`.
  * vocab.json and merges.txt: the tokenizer (GPT-2's, or one bpe.py trained) in the form
    Hugging Face reads it (`tokenizer_files`). tiktoken stores a byte-level BPE as ranks: token
    bytes -> id, lower ranks merged first. Hugging Face stores the same BPE as the list of
    merges in order, written with a printable character standing for each byte
    (`byte_to_unicode`).

The vocabulary is cut from our 50,304 rows (GPT-2's 50,257, [MASK], padding to a multiple of 64)
to the tokenizer's 50,257 (up to <|endoftext|>): no text encodes to the others, sample.py never
draws them, and a pipeline that could draw one would have nothing to decode it to.

Run:       python sample.py --ckpt out/ckpt.pt --export_hf out/hf
Read next: EXERCISES.md, nine exercises with checks. (Loading the exported folder with
           transformers: docs/guide.md, "Take your GPT elsewhere".)
"""

import json
from pathlib import Path

import torch

import bpe
from runtime import ConfigError


WEIGHTS = "model.safetensors"


def export_hf(model, enc, out_dir):
    """Write model (a GPT: a BERT's to_gpt2 refuses) and its tokenizer enc (tiktoken's) to out_dir
    in Hugging Face's layout; returns the paths written. A folder that holds other files is
    refused: a loader would find them beside ours (an earlier export of ours is overwritten)."""
    n_vocab = enc.eot_token + 1  # the tokenizer's ids, <|endoftext|> the last of them
    if model.config.vocab_size < n_vocab:
        raise ConfigError(f"--export_hf: the model knows {model.config.vocab_size} ids, fewer than "
                          f"its tokenizer ({n_vocab}): it was not trained with this tokenizer")
    try:
        weights = model.to_gpt2()
    except ValueError as e:
        raise ConfigError(f"--export_hf: {e}") from None
    wte = weights["transformer.wte.weight"]
    weights["transformer.wte.weight"] = wte[:n_vocab]  # the rows no text encodes to: cut
    out_dir = Path(out_dir)
    ranks = {token: enc.encode_single_token(token) for token in enc.token_byte_values()}
    files = {"config.json": json.dumps(gpt2_config(model.config, n_vocab, enc.eot_token),
                                       indent=2),
             **tokenizer_files(ranks, enc.eot_token, model.config.block_size)}
    others = sorted(p.name for p in out_dir.glob("*") if p.name not in {*files, WEIGHTS})
    if others:  # e.g. another model's tokenizer.json, which a loader would prefer to ours
        raise ConfigError(f"--export_hf {out_dir} holds other files ({', '.join(others[:4])}"
                          f"{', ...' if len(others) > 4 else ''}), which a loader would read "
                          f"beside ours: export into an empty or new folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out_dir / name).write_text(text, encoding="utf-8")
    write_safetensors(out_dir / WEIGHTS, weights)
    return [out_dir / name for name in (*files, WEIGHTS)]


def gpt2_config(config, vocab_size, eot_id):
    """config.json for transformers' GPT2LMHeadModel, our ModelConfig's numbers under its names."""
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": vocab_size, "n_positions": config.block_size,
            "n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head,
            "n_inner": 4 * config.n_embd,  # model.MLP widens 4x
            "activation_function": "gelu_new",  # GELU, tanh approximation (model.MLP)
            "layer_norm_epsilon": 1e-5,  # nn.LayerNorm's default, as GPT-2's
            "resid_pdrop": config.dropout, "embd_pdrop": config.dropout,
            "attn_pdrop": config.dropout, "initializer_range": 0.02,
            "bos_token_id": eot_id, "eos_token_id": eot_id, "tie_word_embeddings": True,
            "torch_dtype": "float32"}


def write_safetensors(path, tensors):
    """{name: tensor} to a .safetensors file. Every tensor is written as float32 (a model trained
    in bfloat16 keeps float32 weights anyway), little-endian, one after another; the header gives
    each one's byte range. The header is padded with spaces to a multiple of 8 bytes, so that the
    data starts 8-byte aligned (the format's advice for memory-mapping)."""
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name, tensor in tensors.items():
        values = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
        blob = values.astype("<f4").tobytes()  # little-endian, whatever this machine's order
        header[name] = {"dtype": "F32", "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header).encode("utf-8")
    text += b" " * (-len(text) % 8)
    part = Path(str(path) + ".part")
    with open(part, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for blob in blobs:
            f.write(blob)
    part.replace(path)  # never a half-written model.safetensors


def byte_to_unicode():
    """{byte: character}, GPT-2's printable stand-in for each byte (its encoder.py). The 188 bytes
    that are printable Latin-1 characters stand for themselves; the other 68 (controls, space,
    ...) take the characters from 256 on, in order. So every token is a string of visible
    characters: " the" is written "Ġthe" (Ġ is 256 + 32, the space's stand-in)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def tokenizer_files(ranks, eot_id, max_length):
    """{file name: text} of a byte-level BPE (GPT-2's or bpe.py's) in Hugging Face's form, from
    tiktoken's ranks ({token bytes: id}). Each multi-byte token was made by one merge, of the two
    tokens that BPE stops at when it may use only the merges ranked below the token's own."""
    char = byte_to_unicode()

    def spell(token):
        return "".join(char[b] for b in token)

    vocab = {spell(token): rank for token, rank in ranks.items()}
    vocab["<|endoftext|>"] = eot_id
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:
            parts = bpe.merge_parts(token, ranks, below=rank)
            if len(parts) != 2:  # never for GPT-2's tokens; possible, if rare, for a trained BPE
                raise ConfigError(f"--export_hf: the tokenizer's token {token!r} is not one merge "
                                  f"of two earlier tokens; Hugging Face's format cannot hold it")
            merges.append(f"{spell(parts[0])} {spell(parts[1])}")
    special = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": max_length,
              "add_prefix_space": False, **special}
    return {"vocab.json": json.dumps(vocab, ensure_ascii=False),
            "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
            "tokenizer_config.json": json.dumps(config, indent=2),
            "special_tokens_map.json": json.dumps(special, indent=2)}
