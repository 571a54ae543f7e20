"""
sample.py: using a trained model. Generation with a KV cache, fill-mask, span filling, perplexity.

Generation (GPT). A causal LM gives a distribution over the next token; generating is drawing from
it, appending the draw, and asking again. How we draw shapes the text:
  * temperature T divides the logits: T < 1 sharpens the distribution, T > 1 flattens it, and T = 0
    means always the most likely token (greedy);
  * top-k keeps only the k most likely tokens, top-p ("nucleus", Holtzman et al. 2020) the smallest
    set whose probabilities add up to at least p; both cut off the long tail of unlikely tokens
    that, sampled a few times, derail a text.

The KV cache. Each step's forward pass recomputes keys and values for the whole prefix, yet
attention is causal: the keys and values of earlier tokens never change. So keep them (model.py's
`cache`) and feed only the newest token: each step then costs one token's worth of work plus
attention over the cache, instead of a forward pass over the whole prefix.
With learned absolute positions the cache has a limit: once the text is longer than block_size,
the window slides and every kept token moves to a new position, which invalidates all cached keys
and values; from then on each step recomputes the window. (With rotary positions, `--position
rope`, a cache could drop its oldest entries instead: EXERCISES.md, exercise 4, asks why.) With
and without the cache, the tokens are the same.

Fill-mask (BERT): put [MASK] in the prompt where a word is missing; the model scores every word it
can spell there, of one token or of several (`fill_mask`: a word of n tokens needs n [MASK]s).
ELECTRA: its generator fills [MASK]s; a prompt without one is judged by the discriminator, each
token with the probability that it was replaced (`print_replaced`).

XLNet (xlnet.py) does both: with [MASK]s in the prompt it fills them as a BERT does, the blanks
put last in its factorisation order so that each is predicted from every known token; without, it
continues the text, the identity order with the next position asked last (no KV cache here).

Filling spans (T5): each [MASK] is a blank of any length. The encoder reads the prompt once, each
blank as a sentinel; the decoder writes "<s0> span 0 <s1> span 1 ...", with the sampling above and
a KV cache of its own, and the encoder's keys and values for its cross-attention computed once per
prompt (`fill_spans`).

Perplexity: --eval val|test|file.txt runs data.evaluate, the exact pass over every token of
the text. For a BERT it reports the masked-LM loss with fixed masks and its exponential, a
"pseudo-perplexity" (not Salazar et al.'s, which masks one token at a time).

Export: --export_hf DIR writes a GPT in Hugging Face's format (export.py), for transformers.

Run:
    python sample.py --prompt "The history of the"                 (the GPT in out/ckpt.pt)
    python sample.py --ckpt out-bert/ckpt.pt --prompt "The capital of France is [MASK] ."
    python sample.py --ckpt out-electra/ckpt.pt --prompt "The capital of France is tennis ."
    python sample.py --ckpt out-t5/ckpt.pt --prompt "The film was released in the [MASK] in March ."
    python sample.py --ckpt out-xlnet/ckpt.pt --prompt "The capital of France is [MASK] ."
    python sample.py --eval test                                    perplexity on the test split
    python sample.py --ckpt out/ckpt.dcp --prompt "The"             a sharded run's (--fsdp)
    python sample.py --init_from gpt2 --prompt "Hello"              OpenAI's GPT-2 (124M)
    python sample.py --export_hf out/hf                             for transformers
Read next: export.py, then EXERCISES.md.
"""

import codecs
import itertools
import math
import re
import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path

if __name__ == "__main__":  # Ctrl-C while torch loads ends quietly too (then: run_program)
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))

import numpy as np
import torch
import torch.nn.functional as F

import data
import export
import runtime
from checkpoint import GPT2_PATH, checkpoint_path, load_checkpoint, load_gpt2, load_model
from checkpoint import objective_for
from mlm import word_edges
from model import MASK_ID
from t5 import T5, sentinel, sentinel_count
from xlnet import XLNet, blanks_last


def top_k_filter(logits, k):
    """Keep the k largest logits of each row (exactly k, ties or not); the rest become -inf."""
    values, indices = torch.topk(logits, min(k, logits.size(-1)), dim=-1)
    return torch.full_like(logits, float("-inf")).scatter(-1, indices, values)


def top_p_filter(logits, p):
    """Keep the smallest set of most likely tokens whose probabilities sum to at least p (always at
    least the most likely one); the rest become -inf."""
    sorted_logits, indices = torch.sort(logits, descending=True, dim=-1)
    probs = F.softmax(sorted_logits, dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability of all tokens ranked above this one
    sorted_logits[before >= p] = float("-inf")  # already reached p without this token: drop it
    return torch.full_like(logits, float("-inf")).scatter(-1, indices, sorted_logits)


@dataclass(frozen=True)
class Sampling:
    """How to draw the next token; checked when made, so a bad setting fails before any work."""
    temperature: float = 1.0  # 0: always the most likely token
    top_k: int | None = None  # keep the k most likely tokens
    top_p: float | None = None  # keep the smallest set with probability >= p
    text_ids: int = MASK_ID  # draw only ids below this: the tokenizer's, not [MASK] or padding

    def __post_init__(self):
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise runtime.ConfigError(f"--temperature must be a finite number >= 0 (0 = greedy), "
                                      f"not {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise runtime.ConfigError(f"--top_k must be at least 1, not {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise runtime.ConfigError(f"--top_p must be in (0, 1], not {self.top_p}")


def next_token(logits, sampling=Sampling(), generator=None):
    """Draw one token per row from logits (B, V). Returns (B, 1)."""
    logits = logits.float().clone()
    logits[:, sampling.text_ids:] = float("-inf")  # [MASK] and padding are not text
    if sampling.temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / sampling.temperature
    if sampling.top_k is not None:
        logits = top_k_filter(logits, sampling.top_k)
    if sampling.top_p is not None:
        logits = top_p_filter(logits, sampling.top_p)
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)


@torch.no_grad()
def stream(model, idx, max_new_tokens, sampling=Sampling(), generator=None, use_cache=True):
    """Generate from a GPT (or an XLNet), yielding each new token (B, 1) as soon as it is
    drawn."""
    window = model.config.block_size
    cache = None
    for _ in range(max_new_tokens):
        if isinstance(model, XLNet):  # no cache: the window, and the new position asked last
            logits = model.next_token_logits(idx[:, 1 - window:])  # (B, V)
        else:
            if use_cache and cache is not None and idx.size(1) <= window:
                x = idx[:, -1:]  # only the newest token: the cache has the rest's keys and values
            else:  # the first step, no cache, or a window that slid: run the whole window
                cache = [{} for _ in model.transformer.h] if use_cache else None
                x = idx[:, -window:]  # a prompt longer than the window is cropped from the left
            features = model.transformer(x, cache=cache)  # (B, len(x), C)
            logits = model.lm_head(features[:, -1, :])  # (B, V): the last position's prediction
        token = next_token(logits, sampling, generator)
        idx = torch.cat([idx, token], dim=1)
        yield token


def generate(model, idx, max_new_tokens, sampling=Sampling(), generator=None, use_cache=True):
    """idx (B, T) -> (B, T + max_new_tokens): the prompt followed by the generated tokens."""
    return torch.cat([idx, *stream(model, idx, max_new_tokens, sampling, generator, use_cache)],
                     dim=1)


@torch.no_grad()
def fill_mask(model, ids, enc, top_k=5, max_pieces=3):
    """For each [MASK] in ids (a list), the top_k words a BERT puts there: (text, probability).

    A [MASK] hides a word, and a word may be one token or several (a tokenizer of 8,192 ids
    writes " Commons" as " Comm" + "ons"). So each [MASK] is asked max_pieces questions: for n = 1,
    2, ..., put n [MASK]s in its place (the other [MASK]s stay as they are): which n tokens spell
    one word there? `spell` fills them left to right, each scored with the ones before it in view:
    p(t1) p(t2 | t1) ... A word gets the probability from the question with its own number of
    tokens (its BPE split), so a one-token word's is the softmax at a single [MASK]. A word starts
    anew (after "United", " s" may come but not "s"), and its later tokens carry it on ("ons").
    The answers of all the questions are ranked together, though each question's add up to one."""
    mask_id = enc.eot_token + 1
    joins, open_end = word_edges(enc)  # "ons" goes on the token before; " Comm" can go on
    found = []
    for where in [i for i, t in enumerate(ids) if t == mask_id]:
        after_word = 0 < where and ids[where - 1] < enc.eot_token and open_end[ids[where - 1]]
        starts = ~joins if after_word else torch.ones_like(joins)
        words = {}
        for n in range(1, max_pieces + 1):
            if len(ids) + n - 1 > model.config.block_size:
                break
            first = starts if n == 1 else starts & open_end
            for tokens, p in spell(model, ids, where, n, first, joins, beam=2 * top_k):
                word = enc.decode(tokens)
                if p > 0 and enc.encode_ordinary(word) == tokens:  # BPE's own split of the word
                    words[word] = p
        found.append(sorted(words.items(), key=lambda w: -w[1])[:top_k])
    return found


def spell(model, ids, where, n, first, then, beam):
    """The `beam` most likely fillings [(tokens, probability)] of n [MASK]s put in place of
    ids[where], left to right: the first token among `first`, the others among `then` (boolean
    masks over the ordinary ids); a beam search, one batched forward pass per token."""
    mask_id, device, V = ids[where], next(model.parameters()).device, len(then)
    beams = [([], 1.0)]
    for i in range(n):
        rows = [ids[:where] + t + [mask_id] * (n - len(t)) + ids[where + 1:] for t, _ in beams]
        idx = torch.tensor(rows, device=device)  # (beams, T + n - 1)
        at = torch.zeros_like(idx, dtype=torch.bool)
        at[:, where + i] = True
        if isinstance(model, XLNet):  # its order: the known tokens, then the blanks (xlnet.py)
            logits = model(idx, blanks_last(idx == mask_id), positions=at).float()
        else:
            logits = model(idx, positions=at).float()  # (beams, vocabulary): one row each
        logits[:, V:] = float("-inf")  # candidates are ordinary tokens
        probs = F.softmax(logits, dim=-1)[:, :V] * (first if i == 0 else then).to(device)
        joint = torch.tensor([p for _, p in beams], device=device)[:, None] * probs  # (beams, V)
        best = joint.flatten().topk(beam)
        beams = [(beams[k // V][0] + [k % V], p)
                 for k, p in zip(best.indices.tolist(), best.values.tolist())]
    return beams


@torch.no_grad()
def fill_spans(model, ids, eot_id, sampling=Sampling(), generator=None, max_tokens=None,
               use_cache=True):
    """What a T5 writes into the blanks of ids (a list; the blanks are sentinels, <s0> first), all
    in one pass of its decoder, "<s0> span 0 <s1> span 1 ... <sN>": (one list of token ids per
    blank, whether it ended them all). The decoder starts from <|endoftext|> and <s0>, given; then
    it may write ordinary tokens, or the sentinel that ends the span it is writing (nothing else:
    the other ids are not text, and the blanks come in order). It stops after the last blank's
    sentinel, or after max_tokens new tokens, or once it has read block_size: that span is then
    cut short, and the blanks after it stay empty."""
    device, block_size = next(model.parameters()).device, model.config.block_size
    max_tokens = max_tokens or block_size
    blanks = sum(t >= sentinel(0, eot_id) for t in ids)
    memory = model.encode(torch.tensor([ids], device=device))  # (1, S, C): read once
    cache = [{} for _ in model.decoder.h] if use_cache else None
    sampling = replace(sampling, text_ids=model.config.vocab_size)  # the ids are chosen here
    written, fed, spans = [eot_id, sentinel(0, eot_id)], 0, [[]]  # the start and <s0>, given
    while len(spans) <= blanks and len(written) - 2 < max_tokens and len(written) <= block_size:
        x = torch.tensor([written[fed:]], device=device)  # with a cache, only what it lacks
        logits = model.decode(x, memory, cache=cache)[0, -1].float()  # (V,): the next token's
        fed = len(written) if use_cache else 0
        closing = sentinel(len(spans), eot_id)  # the sentinel that ends the span being written
        allowed = torch.arange(len(logits), device=device) < eot_id
        allowed[closing] = True
        token = next_token(logits.masked_fill(~allowed, float("-inf"))[None], sampling,
                           generator).item()
        written.append(token)
        if token == closing:
            spans.append([])
        else:
            spans[-1].append(token)
    finished = len(spans) > blanks  # (the last blank's sentinel opened an empty list)
    return (spans + [[] for _ in range(blanks)])[:blanks], finished


BLANK = r" ?\[MASK\]"  # a [MASK] in a prompt, and the space before it: the hidden word's


def encode_prompt(prompt, enc):
    """Token ids of a prompt with the tokenizer enc; "<|endoftext|>" becomes its id, "[MASK]" the
    id after it. GPT-2's BPE starts a word with its space (" Paris" is one token), so a space
    before [MASK] belongs to the hidden word."""
    pieces = re.split(BLANK, prompt)
    ids = []
    for i, piece in enumerate(pieces):
        ids += enc.encode(piece, allowed_special={"<|endoftext|>"})
        ids += [enc.eot_token + 1] if i < len(pieces) - 1 else []
    return ids


def load(args, device):
    """(model in eval mode, its objective, its tokenizer, its data folder): a checkpoint's or
    GPT-2's."""
    if args.init_from == "gpt2":
        model = load_gpt2(args.gpt2_path, 1024, 0.0)
        return model.to(device).eval(), objective_for("gpt"), data.tokenizer(), args.data_dir
    checkpoint = load_checkpoint(args.ckpt or checkpoint_path("out"))
    model, objective, enc = load_model(checkpoint)
    data_dir = args.data_dir or checkpoint["train_config"]["data_dir"]
    return model.to(device).eval(), objective, enc, data_dir


def perplexity(model, objective, enc, what, data_dir, device, dtype="auto"):
    """The exact loss over every token of a split or a text file (data.evaluate), printed."""
    if what in ("val", "test"):
        tokens = data.open_split(data_dir, what)
        if data.tokenizer(data.read_vocab(data_dir)).name != enc.name:
            raise runtime.ConfigError(f"--eval {what}: {data_dir} is tokenized with another "
                                      f"tokenizer than the model's: name its --data_dir")
    elif Path(what).is_file():  # a text file: its tokens
        ids = [i for piece in data.text_pieces(Path(what)) for i in enc.encode_ordinary(piece)]
        tokens = np.array(ids, dtype=np.uint16)
    else:
        raise runtime.ConfigError(f"--eval {what}: give val, test or the path of a text file")
    if len(tokens) < 2:
        raise runtime.ConfigError(f"--eval {what} holds {len(tokens)} token(s): a perplexity "
                                  f"needs at least 2")
    autocast = runtime.autocast(device, runtime.pick_dtype(dtype, device.type))
    metrics = data.evaluate(model, objective, tokens, 16, autocast)
    print(f"{what}: {len(tokens):,} tokens, {metrics['tokens']:,} predicted; "
          f"{objective.describe(metrics)}")


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(runtime.pick_device(args.device))
    if device.type == "cpu":
        runtime.keep_freed_memory()
    model, objective, enc, data_dir = load(args, device)
    if args.export_hf:
        paths = export.export_hf(model.cpu(), enc, args.export_hf)
        return print(f"exported to {args.export_hf}/: {', '.join(p.name for p in paths)}")
    if args.eval:
        return perplexity(model, objective, enc, args.eval, data_dir, device, args.dtype)
    ids = encode_prompt(args.prompt, enc)
    if not ids:
        raise runtime.ConfigError("--prompt: the prompt has no tokens: give some text, or "
                                  "<|endoftext|> to start from nothing")
    fills = not objective.causal or (isinstance(model, XLNet) and enc.eot_token + 1 in ids)
    if fills and len(ids) > model.config.block_size:  # (a GPT's window slides)
        raise runtime.ConfigError(f"--prompt has {len(ids)} tokens, more than the model's "
                                  f"block_size {model.config.block_size}")
    if isinstance(model, T5):  # blanks of any length, written by its decoder
        sampling = Sampling(args.temperature, args.top_k, args.top_p)
        return print_spans(model, ids, sampling, args, enc, device)
    if hasattr(model, "generator") and enc.eot_token + 1 not in ids:  # ELECTRA, text to judge
        return print_replaced(model, ids, enc, device)
    if fills:  # a BERT fills in masks (ELECTRA: its generator; an XLNet too); a GPT continues
        return print_fill_mask(getattr(model, "generator", model), ids, args.top_k or 5, enc)
    if enc.eot_token + 1 in ids:
        raise runtime.ConfigError("[MASK] in a prompt is for BERT checkpoints; this one is a GPT: "
                                  "give text to continue")
    sampling = Sampling(args.temperature, args.top_k, args.top_p, text_ids=enc.eot_token + 1)
    window = model.config.block_size - isinstance(model, XLNet)  # (its next position: a row)
    if len(ids) > window:
        print(f"note: the prompt has {len(ids)} tokens; the model sees only the last {window}",
              file=sys.stderr)
    print_samples(model, ids, sampling, args, enc, device)


def print_samples(model, ids, sampling, args, enc, device):
    """Stream args.num_samples continuations of the prompt, each token as soon as it is drawn."""
    generator = torch.Generator(device).manual_seed(args.seed)
    for n in range(args.num_samples):
        # A character may span several tokens: decode the bytes as they come.
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        print(f"--- sample {n + 1} ---\n{args.prompt}", end="", flush=True)
        idx = torch.tensor([ids], device=device)
        for token in stream(model, idx, args.max_new_tokens, sampling, generator,
                            use_cache=not args.no_cache):
            if token.item() == enc.eot_token and not args.no_stop:
                break
            print(utf8.decode(enc.decode_single_token_bytes(token.item())), end="", flush=True)
        print(utf8.decode(b"", final=True))


def print_fill_mask(model, ids, top_k, enc):
    if enc.eot_token + 1 not in ids:
        raise runtime.ConfigError("this checkpoint is a BERT: put [MASK] in the prompt (--prompt) "
                                  "where a word should be filled in")
    for n, words in enumerate(fill_mask(model, ids, enc, top_k), start=1):
        print(f"[MASK] {n}: " + ", ".join(f"{word!r} {p:.3f}" for word, p in words))


def number_blanks(ids, eot_id):
    """ids with its [MASK]s (the id after <|endoftext|>) made T5's sentinels, <s0>, <s1>, ... in
    order."""
    numbered = itertools.count(sentinel(0, eot_id))
    return [next(numbered) if t == eot_id + 1 else t for t in ids]


def print_spans(model, ids, sampling, args, enc, device):
    """A T5's fillings of the prompt's blanks, args.num_samples of them: the prompt with what the
    decoder wrote in each blank, in brackets."""
    mask_id, sentinels = enc.eot_token + 1, sentinel_count(model.config.block_size)
    blanks = ids.count(mask_id)
    if blanks == 0:
        raise runtime.ConfigError("this checkpoint is a T5: put [MASK] in the prompt (--prompt) "
                                  "where text is missing, of any length")
    if blanks >= sentinels:
        raise runtime.ConfigError(f"--prompt has {blanks} blanks, but the model has {sentinels} "
                                  f"sentinels, one per blank and one to end with: give at most "
                                  f"{sentinels - 1}")
    ids = number_blanks(ids, enc.eot_token)
    pieces = re.split(BLANK, args.prompt)  # the text around the blanks
    generator = torch.Generator(device).manual_seed(args.seed)
    for n in range(args.num_samples):
        spans, finished = fill_spans(model, ids, enc.eot_token, sampling, generator,
                                     args.max_new_tokens, use_cache=not args.no_cache)
        text = pieces[0]
        for span, piece in zip(spans, pieces[1:]):
            words = enc.decode(span)  # a blank's span starts with its space, as the word would
            text += (" [" + words[1:] if words.startswith(" ") else "[" + words) + "]" + piece
        print(f"--- sample {n + 1} ---\n{text}")
        if not finished:
            print(f"note: the decoder stopped before it ended every blank: at --max_new_tokens "
                  f"{args.max_new_tokens}, or at its block_size {model.config.block_size}",
                  file=sys.stderr)


def print_replaced(model, ids, enc, device):
    """ELECTRA's discriminator on a text: each token, and the probability it gives that the token
    was put there by the generator, not by the writer."""
    with torch.no_grad():
        replaced = torch.sigmoid(model(torch.tensor([ids], device=device)).float())[0]  # (T,)
    for token, p in zip(ids, replaced.tolist()):
        flag = "  <- replaced?" if p > 0.5 else ""
        print(f"{enc.decode([token])!r:>16} {p:.3f}{flag}")


def parse_args(argv):
    parser = runtime.Parser(prog="sample.py", description="Sample from a GPT or an XLNet, fill "
                                                          "masks with a BERT or an XLNet, fill "
                                                          "blanks with a T5, or measure "
                                                          "perplexity.")
    add = parser.add_argument
    add("--ckpt", default=None, help="checkpoint written by train.py (default: out/ckpt.pt, or "
                                     "the folder out/ckpt.dcp of a --fsdp run)")
    add("--init_from", choices=("ckpt", "gpt2"), default="ckpt",
        help="gpt2: OpenAI's weights instead of --ckpt")
    add("--gpt2_path", default=GPT2_PATH, help="GPT-2's pytorch_model.bin")
    add("--prompt", default="<|endoftext|>", help="text to continue (GPT, XLNet), or with "
        "[MASK]s: words (BERT, XLNet) or blanks of any length (T5)")
    add("--max_new_tokens", type=int, default=200)
    add("--temperature", type=float, default=0.8, help="0 = always the most likely token")
    add("--top_k", type=int, default=None, help="sample among the k most likely tokens only")
    add("--top_p", type=float, default=0.95, help="sample in the smallest set with probability "
                                                  ">= p")
    add("--num_samples", type=int, default=1)
    add("--seed", type=int, default=1337)
    add("--no_cache", action="store_true", help="recompute the whole prefix at every step")
    add("--no_stop", action="store_true", help="go on past <|endoftext|>")
    add("--eval", default=None, help="val, test or a .txt file: print the loss and perplexity")
    add("--data_dir", default=None, help="for --eval val/test (default: the checkpoint's)")
    add("--export_hf", default=None, metavar="DIR",
        help="write the GPT and its tokenizer to DIR in Hugging Face's format (export.py)")
    add("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    add("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
        help="number format of --eval's pass, as train.py's --dtype (float32: the same figure on "
             "every CPU)")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1 or args.num_samples < 1:
        flag, value = (("--max_new_tokens", args.max_new_tokens) if args.max_new_tokens < 1
                       else ("--num_samples", args.num_samples))
        raise runtime.ConfigError(f"{flag} {value}: must be at least 1")
    if not 0 <= args.seed < 2**63:
        raise runtime.ConfigError(f"--seed {args.seed}: must be in [0, 2**63)")
    try:  # bytes that are not UTF-8 reach Python as lone surrogates, which tokenizers mangle
        args.prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise runtime.ConfigError("--prompt is not valid UTF-8: give it as UTF-8 text (your "
                                  "terminal's encoding, or the file it came from)") from None
    return args


if __name__ == "__main__":
    runtime.run_program(main)
