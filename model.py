"""
model.py: one Transformer block, two language models, GPT (decoder-only) and BERT (encoder-only).

What this file teaches
  * The Transformer block of GPT-2: pre-LayerNorm, multi-head self-attention, a 4x-wide MLP, and a
    residual connection around each of the two.
  * GPT and BERT are the same stack of those blocks. They differ in three places only:
      1. the attention mask: GPT's is causal (position t sees positions <= t), BERT's sees all;
      2. the head: GPT scores every position's next token; BERT's masked-LM head scores the hidden
         token at the positions mlm.py chose (and only there: "sparse prediction");
      3. the objective: clm.py for GPT, mlm.py for BERT.
    ELECTRA (electra.py) is built from the same parts: a Transformer and a small BERT that reads
    its embeddings (`Transformer(..., embeddings=...)`). T5 (t5.py) joins the two kinds: an
    encoder, and a decoder whose blocks also attend to the encoder's output (`CrossAttention`).
    XLNet (xlnet.py) runs the same blocks as two streams, rows of one attention whose mask comes
    from a random factorisation order (`Transformer(..., queries=, positions=, mask=)`).
  * Attention twice: the fused `F.scaled_dot_product_attention`, and an explicit version you can
    read (QK^T / sqrt(d), mask, softmax, dropout, times V). tests/test_model.py proves they agree.
  * Two ways to tell the model where a token is: a learned table of position vectors added to the
    token embeddings (GPT-2's), or rotary embeddings (RoPE, `apply_rope`), which rotate queries
    and keys so that attention scores depend on the distance between tokens. BERT needs the
    second to learn within a lesson (docs/bert.md).
  * The head and its loss in one pass (`HeadLoss`): the largest tensor of a training step is the
    (tokens, vocabulary) matrix of logits; computed a few rows at a time, with the gradient of
    softmax cross-entropy written down directly, it never exists whole.
  * GPT-2's initialisation, and what a training loop asks of a model: parameter counts,
    weight-decay groups, FLOPs per token (for MFU).

The layer names (`transformer.h.0.attn.c_attn`, ...) are GPT-2's, so OpenAI's weights load one to
one (`GPT.from_gpt2`).

Try it:    python -c "import model; m = model.GPT(model.ModelConfig()); print(model.num_params(m))"
Read next: clm.py, GPT's objective (then mlm.py, BERT's).
"""

import math
from dataclasses import dataclass, field, fields
from typing import Literal, get_args, get_origin

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# The vocabulary is a byte-pair encoding's (data.py), <|endoftext|> after its ordinary tokens, and
# [MASK] as the id after that. With GPT-2's BPE, the default, these are the two ids:
EOT_ID = 50256  # <|endoftext|>: GPT-2's last id; data.py puts it between documents
MASK_ID = 50257  # [MASK] for BERT (mlm.py): the first id after GPT-2's vocabulary
# Ids after [MASK] up to vocab_size - 1 never occur in data. They only round the embedding matrix
# up to a multiple of 64, a shape that matmul kernels tile without a ragged edge.
IGNORE = -100  # a target that does not count (F.cross_entropy's default ignore_index)


def setting(default, help):
    """A config field and its --help text: train.py turns every field into a --flag."""
    return field(default=default, metadata={"help": help})


def check(ok, name, value, rule):
    """Refuse a setting in one line that names its flag, its value and the rule it breaks."""
    if not ok:
        raise ValueError(f"--{name} {value}: {rule}")


def check_choices(config):
    """Refuse a value outside a Literal field's choices (dataclasses do not check types)."""
    for f in fields(config):
        value, choices = getattr(config, f.name), get_args(f.type)
        check(get_origin(f.type) is not Literal or value in choices, f.name, value,
              f"choose one of {', '.join(choices)}")


@dataclass
class ModelConfig:
    vocab_size: int = setting(50304, "ids the model knows; when not given, the data's tokenizer's "
                              "and [MASK], rounded up to a multiple of 64 (GPT-2's: 50,304)")
    block_size: int = setting(128, "the longest sequence the model reads")
    position: Literal["learned", "rope"] = setting(
        "learned", "learned: a table of position vectors (GPT-2); rope: rotary (Su et al. 2021)")
    n_layer: int = setting(4, "Transformer blocks")
    n_head: int = setting(4, "attention heads per block; n_embd must divide by it")
    n_embd: int = setting(256, "width of the residual stream")
    dropout: float = setting(0.0, "on embeddings, attention weights and residual branches (0: off)")
    bias: bool = setting(True, "biases in Linear and LayerNorm layers, as in GPT-2 and BERT")
    embedding_layernorm: bool = setting(False, "a LayerNorm on the embeddings, as BERT has")
    generator_n_embd: int = setting(0, "ELECTRA: the generator's width (0: half of n_embd; "
                                    "electra.py)")
    # The two switches below change how the forward pass is computed, never what it computes.
    explicit_attention: bool = setting(False, "attention step by step instead of fused SDPA")
    grad_checkpointing: bool = setting(False, "keep only block inputs; recompute in backward")

    def __post_init__(self):
        check_choices(self)
        for name in ("vocab_size", "n_layer", "n_head", "n_embd"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "must be at least 1")
        check(self.block_size >= 2, "block_size", self.block_size,
              "must be at least 2: a token and the one after it")
        check(0 <= self.dropout < 1, "dropout", self.dropout, "must be at least 0 and below 1")
        check(self.n_embd % self.n_head == 0, "n_embd", self.n_embd,
              f"must be a multiple of --n_head {self.n_head}")
        check(self.position != "rope" or self.n_embd // self.n_head % 2 == 0, "n_head",
              self.n_head, "RoPE turns pairs of channels: --n_embd / --n_head must be even")
        check(self.generator_n_embd % 2 == 0 and self.generator_n_embd >= 0, "generator_n_embd",
              self.generator_n_embd, "must be even (its heads turn pairs of channels), or 0")


def attention_mask(T_q, T_k, causal, key_mask, device):
    """Boolean mask (B or 1, 1, T_q, T_k), True where a query may attend to a key; None: all keys.

    The T_q queries are the last T_q of the T_k positions: with a KV cache (sample.py) the earlier
    keys come from the cache. key_mask (B, T_k) is True at real tokens, False at padding.
    """
    mask = None
    # Query i sits at position T_k - T_q + i and may see keys up to there. One query (a cached
    # generation step) is the newest token and sees every key: no mask, so no slower masked kernel.
    if causal and T_q > 1:
        mask = torch.ones(T_q, T_k, dtype=torch.bool, device=device).tril(diagonal=T_k - T_q)
    if key_mask is not None:
        pad = key_mask[:, None, None, :]  # (B, 1, 1, T_k): no query attends to a padded key
        mask = pad if mask is None else mask & pad
    return mask


def apply_rope(x, positions):
    """Rotary position embedding (Su et al. 2021, "RoFormer"). x (B, nh, T, hs) holds queries or
    keys of the tokens at positions (T,), or (B, T) when each row has its own (XLNet's query
    stream: xlnet.py); each channel pair (2i, 2i + 1) at position p is
    rotated by the angle p * theta_i, with theta_i = 10000^(-2i / hs): fast turns in the first
    pairs, slow ones in the last. A rotation keeps lengths, and the dot product of a query rotated
    by angle a with a key rotated by b depends on a - b only, so attention scores depend on how far
    apart two tokens are, not on where they stand. Nothing is learned and nothing is added to the
    embeddings: position enters every layer's attention, from the first step of training."""
    hs, dtype = x.size(-1), torch.promote_types(x.dtype, torch.float32)  # angles in fp32 at least
    theta = 10000 ** (-torch.arange(0, hs, 2, device=x.device, dtype=dtype) / hs)
    p = positions.to(dtype)
    p = p[:, None] if p.dim() == 2 else p  # (B, 1, T): the same for every head
    angles = p[..., None] * theta  # (T, hs/2) or (B, 1, T, hs/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]  # the two channels of each pair, (B, nh, T, hs/2) each
    rotated = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (..., hs/2, 2)
    return rotated.flatten(-2)  # the pairs interleaved again: (B, nh, T, hs)


def explicit_attention(q, k, v, mask, dropout_p):
    """softmax(Q K^T / sqrt(d) + mask) V, step by step. q (B, nh, T_q, hs); k, v (B, nh, T_k, hs)"""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, T_q, T_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # exp(-inf) = 0: no weight on hidden keys
    weights = F.softmax(scores, dim=-1)  # each row sums to 1 over the keys it may see
    weights = F.dropout(weights, p=dropout_p)
    return weights @ v  # (B, nh, T_q, hs)


class SelfAttention(nn.Module):
    """Multi-head self-attention; causal=True lets each position see only itself and earlier."""

    def __init__(self, config, causal):
        super().__init__()
        C = config.n_embd
        self.c_attn = nn.Linear(C, 3 * C, bias=config.bias)  # q, k and v at once
        self.c_proj = nn.Linear(C, C, bias=config.bias)  # back into the residual stream
        self.resid_dropout = nn.Dropout(config.dropout)
        self.config, self.causal = config, causal

    def forward(self, x, positions, key_mask=None, cache=None, mask=None):
        """x (B, T, C); positions (T,) or (B, T): where the tokens stand (Transformer.forward:
        0, 1, ... after the tokens in the cache); key_mask (B, T_k): True at real tokens; cache:
        the layer's dict of the KV cache; mask (B, 1, T, T_k): who sees whom, given whole
        (XLNet's, made from its factorisation order: xlnet.py), instead of the one causal and
        key_mask make."""
        B, T, C = x.shape
        hs = C // self.config.n_head
        q, k, v = self.c_attn(x).chunk(3, dim=2)  # each (B, T, C)
        # Each head works on its own slice of hs = C / nh channels. (Under tensor parallelism,
        # parallel.py, a process holds a share of the heads: C / tp channels, nh / tp heads; so
        # the head count is read off the tensors, -1, here and below.)
        q, k, v = (t.view(B, T, -1, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        cached = cache is not None and "k" in cache  # keys and values of earlier tokens kept
        if self.config.position == "rope":  # position enters here: rotate queries and keys
            q, k = apply_rope(q, positions), apply_rope(k, positions)
        if cache is not None:  # generation: this layer's keys and values of the earlier tokens
            if cached:
                k = torch.cat([cache["k"], k], dim=2)  # (B, nh, T_cached + T, hs)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        T_k = k.size(2)
        dropout_p = self.config.dropout if self.training else 0.0
        plain_causal = self.causal and key_mask is None and mask is None and T == T_k
        if plain_causal and not self.config.explicit_attention:
            # The causal mask stated as a flag, so that SDPA may pick a fused kernel.
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            if mask is None:
                mask = attention_mask(T, T_k, self.causal, key_mask, x.device)
            if self.config.explicit_attention:
                y = explicit_attention(q, k, v, mask, dropout_p)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, -1)  # heads side by side again: (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class CrossAttention(nn.Module):
    """Attention from a decoder to an encoder (Vaswani et al. 2017; T5, t5.py): the queries come
    from the decoder's positions, the keys and values from the encoder's output, the "memory". No
    causal mask: the encoder's whole text is known before the decoder writes a token. No rotation:
    a decoder position and an encoder position count in two different sequences, so the distance
    between them means nothing (T5's cross-attention has no position either)."""

    def __init__(self, config):
        super().__init__()
        C = config.n_embd
        self.c_q = nn.Linear(C, C, bias=config.bias)  # queries, from the decoder
        self.c_kv = nn.Linear(C, 2 * C, bias=config.bias)  # keys and values, from the encoder
        self.c_proj = nn.Linear(C, C, bias=config.bias)  # back into the decoder's stream
        self.resid_dropout = nn.Dropout(config.dropout)
        self.config = config

    def forward(self, x, memory, memory_mask=None, cache=None):
        """x (B, T, C): the decoder's stream; memory (B, S, C): the encoder's output; memory_mask
        (B, S): True at real tokens, False at padding. cache: the layer's dict of the KV cache,
        which keeps the encoder's keys and values from the first call on: a prompt's are computed
        once, however many tokens the decoder writes (sample.py)."""
        B, T, C = x.shape
        nh = self.config.n_head
        if cache is not None and "cross_k" in cache:
            k, v = cache["cross_k"], cache["cross_v"]
        else:
            S = memory.size(1)
            k, v = (t.view(B, S, nh, C // nh).transpose(1, 2)  # (B, nh, S, hs) each
                    for t in self.c_kv(memory).split(C, dim=2))
            if cache is not None:
                cache["cross_k"], cache["cross_v"] = k, v
        q = self.c_q(x).view(B, T, nh, C // nh).transpose(1, 2)  # (B, nh, T, hs)
        mask = None if memory_mask is None else memory_mask[:, None, None, :]  # (B, 1, 1, S)
        dropout_p = self.config.dropout if self.training else 0.0
        if self.config.explicit_attention:
            y = explicit_attention(q, k, v, mask, dropout_p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward network: widen 4x, GELU, project back."""

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # the tanh approximation GPT-2 and BERT used
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, 4C) inside, then C


class Block(nn.Module):
    """The one Transformer block every model uses. Pre-LayerNorm (GPT-2): x + f(LN(x)) keeps a
    clean residual path from the embeddings to the output, which trains stably without tuned
    warmups. cross=True: the decoder block of an encoder-decoder (t5.py), which reads the encoder
    through cross-attention between its self-attention and its MLP (GPT and BERT: cross=False,
    and the block has no such layers)."""

    def __init__(self, config, causal, cross=False):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)  # eps=1e-5, as GPT-2
        self.attn = SelfAttention(config, causal)
        self.ln_cross = nn.LayerNorm(config.n_embd, bias=config.bias) if cross else None
        self.cross = CrossAttention(config) if cross else None
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, positions, key_mask=None, cache=None, memory=None, memory_mask=None,
                mask=None):
        x = x + self.attn(self.ln_1(x), positions, key_mask, cache, mask)  # tokens read each other
        if self.cross is not None:  # ...read the encoder's text (memory: its output)...
            x = x + self.cross(self.ln_cross(x), memory, memory_mask, cache)
        x = x + self.mlp(self.ln_2(x))  # each token is processed on its own
        return x


class Transformer(nn.Module):
    """Embeddings, n_layer blocks and a final LayerNorm: token ids (B, T) -> features (B, T, C)."""

    def __init__(self, config, causal, embeddings=None, cross=False):
        """embeddings: None, or another Transformer whose embeddings (tokens, positions, their
        LayerNorm) this one reads too, as ELECTRA's generator reads its discriminator's
        (electra.py) and T5's decoder its encoder's (t5.py). Embeddings of another width than
        n_embd are projected to it. cross: blocks that read an encoder's output (Block)."""
        super().__init__()
        self.config = config
        if embeddings is None:
            self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings
            learned = config.position == "learned"  # else RoPE, inside attention: no table here
            self.wpe = nn.Embedding(config.block_size, config.n_embd) if learned else None
            # BERT (Devlin et al. 2019) normalises its embeddings before the first block; GPT-2
            # does not. Tokens then enter the residual stream at unit scale, not at 0.02 (init).
            layernorm = config.embedding_layernorm
            self.ln_emb = nn.LayerNorm(config.n_embd, bias=config.bias) if layernorm else None
        else:  # the same modules, so the same tensors: one table, trained by both models
            self.wte, self.wpe, self.ln_emb = embeddings.wte, embeddings.wpe, embeddings.ln_emb
        E, C = self.wte.embedding_dim, config.n_embd
        self.proj_in = nn.Linear(E, C, bias=config.bias) if E != C else None  # E -> C
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config, causal, cross) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)

    def forward(self, idx, key_mask=None, cache=None, memory=None, memory_mask=None,
                queries=None, positions=None, mask=None):
        """cache: None, or one dict per layer (start with [{} for each layer]) that attention fills
        with keys and values, so a later call only feeds the new tokens (sample.py). memory,
        memory_mask: the encoder's output (B, S, C) and where its real tokens are (B, S), for
        blocks made with cross=True. XLNet's two streams (xlnet.py): queries (B, P, E), vectors
        that enter as P more rows after the T tokens' embeddings; positions (B, T + P): where each
        row stands; mask (B, 1, T + P, T + P): who sees whom."""
        T = idx.size(1)
        start = cache[0]["k"].size(2) if cache and "k" in cache[0] else 0  # tokens in the cache
        if start + T > self.config.block_size:
            raise ValueError(f"{start + T} positions, but block_size is {self.config.block_size}")
        if positions is None:
            positions = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.embed(idx, positions, queries)
        for i in range(len(self.h)):
            x = self.block(i, x, positions, key_mask, None if cache is None else cache[i], memory,
                           memory_mask, mask)
        return self.ln_f(x)

    def embed(self, idx, positions, queries=None):
        """Where the stream starts: token ids (B, T) -> their embeddings (B, T, C), with positions
        (a pipeline's first stage runs this alone: parallel.py)."""
        x = self.wte(idx)  # (B, T, E)
        if queries is not None:
            x = torch.cat([x, queries], dim=1)  # (B, T + P, E)
        if self.wpe is not None:
            x = x + self.wpe(positions)  # + (T, E) or (B, T + P, E)
        if self.ln_emb is not None:
            x = self.ln_emb(x)
        if self.proj_in is not None:
            x = self.proj_in(x)  # (B, T, E) -> (B, T, C)
        return self.drop(x)

    def block(self, i, x, positions, key_mask=None, cache=None, memory=None, memory_mask=None,
              mask=None):
        """Block i on the stream x (B, T, C)."""
        if self.config.grad_checkpointing and self.training and torch.is_grad_enabled():
            # Activation checkpointing: keep only the block's input; backward runs it again.
            return checkpoint(self.h[i], x, positions, key_mask, None, memory, memory_mask, mask,
                              use_reentrant=False)
        return self.h[i](x, positions, key_mask, cache, memory, memory_mask, mask)


class GPT(nn.Module):
    """Decoder-only LM: a causal Transformer whose features at position t score the token t + 1."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = Transformer(config, causal=True)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (Press & Wolf 2017; GPT-2): one matrix both embeds tokens and scores them.
        self.lm_head.weight = self.transformer.wte.weight
        init_weights(self)

    def forward(self, idx, targets=None, cache=None):
        """Logits (B, T, vocab_size); or, given targets (B, T), their mean cross-entropy (IGNORE
        left out), without ever holding all the logits (HeadLoss)."""
        return self.head(self.transformer(idx, cache=cache), targets)  # from (B, T, C)

    def head(self, x, targets=None):
        """The features x (B, T, C) scored: logits (B, T, vocab_size), or the loss (forward)."""
        if targets is not None:
            return head_loss(x.flatten(0, 1), self.lm_head.weight, None, targets.flatten())
        return self.lm_head(x)  # (B, T, vocab_size)

    @classmethod
    def from_gpt2(cls, state_dict, n_head, dropout=0.0):
        """A GPT holding OpenAI's GPT-2 weights, from a state dict in Hugging Face's layout: either
        GPT2LMHeadModel's (`transformer.wte.weight`, ..., `lm_head.weight`) or the bare keys of
        OpenAI's original pytorch_model.bin (`wte.weight`, `h.0.attn.c_attn.weight`, ...).
        The sizes come from the tensors' shapes; n_head cannot, so it is given (64-wide heads in
        every GPT-2 size: n_head = n_embd // 64). dropout: for training on (GPT-2 used 0.1)."""
        sd = {k.removeprefix("transformer."): v for k, v in state_dict.items()
              if not k.endswith((".attn.bias", ".attn.masked_bias"))}  # mask buffers, not weights
        lm_head = sd.pop("lm_head.weight", None)
        vocab_size, n_embd = sd["wte.weight"].shape
        n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("h."))
        config = ModelConfig(vocab_size=vocab_size, block_size=sd["wpe.weight"].size(0),
                             n_layer=n_layer, n_head=n_head, n_embd=n_embd, dropout=dropout)
        model = cls(config)
        expected = {k.removeprefix("transformer.") for k in model.state_dict()} - {"lm_head.weight"}
        if set(sd) != expected:
            raise ValueError(f"not a GPT-2 state dict: missing {sorted(expected - set(sd))}, "
                             f"unexpected {sorted(set(sd) - expected)}")
        if lm_head is not None and not torch.equal(lm_head, sd["wte.weight"]):
            raise ValueError("lm_head.weight differs from wte.weight, but GPT-2 ties them")
        ours = {"transformer." + k: (v.t() if k.endswith(CONV1D) else v) for k, v in sd.items()}
        ours["lm_head.weight"] = ours["transformer.wte.weight"]
        model.load_state_dict(ours)
        return model

    def to_gpt2(self):
        """The inverse of from_gpt2: this GPT's weights under GPT2LMHeadModel's names and
        shapes, as Hugging Face saves them (the tied lm_head.weight left out). Only GPT-2's
        architecture has such a state dict: learned positions and no embedding LayerNorm. A model
        without biases gets zero ones, which compute the same."""
        c = self.config
        if c.position != "learned" or c.embedding_layernorm:
            raise ValueError("GPT-2 has learned positions and no embedding LayerNorm; this model "
                             f"has --position {c.position}"
                             + (" and --embedding_layernorm" if c.embedding_layernorm else ""))
        sd = {k: (v.t() if k.endswith(CONV1D) else v) for k, v in self.state_dict().items()
              if k != "lm_head.weight"}
        if not c.bias:  # Conv1D weights are (in, out) now and LayerNorm gains (C,): bias (out,)
            gains = CONV1D + ("ln_1.weight", "ln_2.weight", "ln_f.weight")
            sd |= {k.removesuffix("weight") + "bias": torch.zeros(v.size(-1), dtype=v.dtype)
                   for k, v in sd.items() if k.endswith(gains)}
        return {k: v.detach().clone() for k, v in sd.items()}


# GPT-2's code keeps its linear layers as "Conv1D", weight (in, out); nn.Linear's is (out, in):
# from_gpt2 and to_gpt2 transpose exactly these four per block.
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class BERT(nn.Module):
    """Encoder-only LM: the same blocks without the causal mask, and BERT's masked-LM head."""

    def __init__(self, config, embeddings=None):
        """embeddings: None, or a Transformer whose embeddings this BERT shares (ELECTRA's
        generator: electra.py)."""
        super().__init__()
        self.config = config
        self.transformer = Transformer(config, causal=False, embeddings=embeddings)
        # The MLM head of BERT (Devlin et al. 2019): dense -> GELU -> LayerNorm -> a decoder tied
        # to the token embedding, plus an output bias of its own. (Its dense layer ends at the
        # embeddings' width, which is n_embd unless they are shared.)
        width = self.transformer.wte.embedding_dim
        self.head_dense = nn.Linear(config.n_embd, width, bias=config.bias)
        self.head_gelu = nn.GELU(approximate="tanh")
        self.head_ln = nn.LayerNorm(width, bias=config.bias)
        self.head_bias = nn.Parameter(torch.zeros(config.vocab_size)) if config.bias else None
        init_weights(self)

    def forward(self, idx, attention_mask=None, positions=None, targets=None):
        """idx (B, T); attention_mask (B, T) bool, True at real tokens (padded keys are ignored);
        positions (B, T) bool: score only these. Returns logits (B, T, V), or (N, V) for the N
        positions; or, given targets (B, T) (IGNORE where nothing was chosen), the mean
        cross-entropy at the chosen positions, through HeadLoss."""
        return self.head(self.transformer(idx, key_mask=attention_mask), positions, targets)

    def head(self, x, positions=None, targets=None):
        """The features x (B, T, C) scored at positions: logits, or the loss (forward)."""
        if targets is not None:
            positions = targets != IGNORE
        if positions is not None:
            # Sparse prediction (Geiping & Goldstein 2023, "Cramming"): only the chosen positions
            # go through the head, so the 50k-way projection is never computed for the others.
            x = x[positions]  # (N, C)
        x = self.head_ln(self.head_gelu(self.head_dense(x)))
        if targets is not None:
            return head_loss(x, self.transformer.wte.weight, self.head_bias, targets[positions])
        return F.linear(x, self.transformer.wte.weight, self.head_bias)  # (B, T, V) or (N, V)

    def to_gpt2(self):
        """There is none: export.py writes GPT-2's format, which holds a decoder. (Hugging Face's
        BertModel would not do either: it is post-LayerNorm, ours pre-LayerNorm, and no config
        maps one onto the other.)"""
        raise ValueError("this checkpoint is a BERT, and Hugging Face's GPT-2 format holds a GPT "
                         "(BertModel is post-LayerNorm, ours pre-LayerNorm): only a GPT exports")


class HeadLoss(torch.autograd.Function):
    """Mean cross-entropy of the logits x @ weight^T + bias against targets, IGNORE left out, in
    one pass that computes the gradients too. Equal to F.cross_entropy on the full logits, in value
    and gradient (tests/test_model.py), but faster and smaller: most of the default GPT's step
    outside the matmuls goes to the (2,048 x 50,304) logits' softmax and its backward
    (docs/performance.md).

    The gradient of softmax cross-entropy with respect to one row's logits z is
    softmax(z) - onehot(target). So each chunk of rows computes its logits, turns them into that
    gradient in place, and multiplies it straight into the gradients of x, weight and bias; the
    chunk's logits are then freed. Backward only scales what forward computed."""

    @staticmethod
    def forward(ctx, x, weight, bias, targets, rows, grads):
        scored = targets != IGNORE  # (N,)
        n = scored.sum().clamp(min=1)
        chosen = targets.clamp(min=0)[:, None]  # (N, 1): an index for every row (IGNORE: 0)
        keep = grads and any(ctx.needs_input_grad[:3])  # evaluation: the loss only
        exact = torch.promote_types(weight.dtype, torch.float32)  # softmax and sums: fp32 at least
        loss = torch.zeros((), dtype=exact, device=x.device)
        if keep:
            grad_x, grad_w = torch.zeros_like(x), torch.zeros_like(weight)
            grad_b = None if bias is None else torch.zeros_like(bias, dtype=exact)
        for s in range(0, len(x), rows):
            r = slice(s, s + rows)
            logits = F.linear(x[r], weight, bias)  # (rows, V), bfloat16 under autocast
            p = F.softmax(logits.to(exact), dim=-1)
            p_target = p.gather(1, chosen[r]).squeeze(1)  # (rows,)
            loss -= p_target.log().masked_fill(~scored[r], 0).sum()
            if keep:
                p.scatter_add_(1, chosen[r], -torch.ones_like(p_target)[:, None])
                p[~scored[r]] = 0  # now p - onehot: d(this row's loss) / d(its logits)
                grad_x[r] = p @ weight  # (rows, C)
                grad_w += p.T @ x[r]  # (V, C)
                if bias is not None:
                    grad_b += p.sum(0)  # (V,)
        if keep:  # the mean over the scored rows
            ctx.grads = [None if g is None else g / n for g in (grad_x, grad_w, grad_b)]
        return loss / n

    @staticmethod
    def backward(ctx, grad_loss):
        grads = [None if g is None else g * grad_loss for g in ctx.grads]
        return *grads, None, None, None


def head_loss(x, weight, bias, targets, rows=1024):
    """HeadLoss on x (N, C) and targets (N,), `rows` rows at a time: 1,024 x 50,304 float32
    logits are 206 MB, half of the default GPT's whole (2,048 x 50,304) matrix; smaller chunks
    save more memory but make slower matmuls (docs/performance.md). Under torch.no_grad()
    (evaluation) only the loss is computed: one matmul, not three. That is asked here, because
    autograd runs a Function's forward with gradients off, and ctx.needs_input_grad only says
    which inputs require them."""
    return HeadLoss.apply(x, weight, bias, targets, rows, torch.is_grad_enabled())


def init_weights(model):
    """GPT-2's initialisation (Radford et al. 2019 and its released code): every Linear and
    Embedding weight ~ N(0, 0.02), biases 0, LayerNorm gain 1 and shift 0. The two projections per
    block that write into the residual stream (`c_proj`) get std 0.02 / sqrt(2 * n_layer): the
    stream is a sum of 2 * n_layer such branches, and the scaling keeps its variance from growing
    with depth."""
    residual_std = 0.02 / math.sqrt(2 * model.config.n_layer)
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            std = residual_std if name.endswith("c_proj") else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def num_params(model, include_position=True):
    """Number of parameters, the tied embedding/LM-head matrix counted once (.parameters() visits
    each tensor once). include_position=False leaves out the position table, as GPT-2's papers
    count."""
    n = sum(p.numel() for p in model.parameters())
    if include_position or model.transformer.wpe is None:
        return n
    return n - model.transformer.wpe.weight.numel()


def param_groups(model, weight_decay, muon=False):
    """Parameter groups for AdamW: weight decay on every matrix, none on vectors.

    Vectors (biases, LayerNorm gains and shifts) set offsets and scales; pulling them toward 0 is
    no regulariser, it only fights the LayerNorm gain's natural value of 1. Matrices, embeddings
    included, are decayed: the token embedding is also the output layer (tied), the largest matmul
    weight of all, and one rule ("2-D or more is decayed") is easy to check. The tied matrix
    appears once.

    muon=True: the weights of the Linear layers, decayed too, go into a third group marked "muon",
    for Muon (muon.py). Muon is for maps from one hidden vector to another; the token embedding is
    a table of rows, and as GPT's output layer it scores ids: it stays with AdamW (Jordan et al.
    2024 keep embeddings and the output layer on AdamW)."""
    params = [p for p in model.parameters() if p.requires_grad]
    embedding = getattr(model.transformer.wte, "weight", None)  # (none: a pipeline's middle)
    linear = {id(m.weight) for m in model.modules()  # (one output: a vector that scores, no map)
              if muon and isinstance(m, nn.Linear) and m.weight is not embedding
              and m.out_features > 1}
    groups = [
        {"params": [p for p in params if p.dim() >= 2 and id(p) not in linear],
         "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if muon:
        groups.append({"params": [p for p in params if id(p) in linear],
                       "weight_decay": weight_decay, "muon": True})
    return groups


def flops_per_token(model, seq_len, head_fraction=1.0):
    """Training FLOPs per token, 6N + 12·L·H·Q·T (PaLM, Chowdhery et al. 2022, appendix B).

    6N: each weight in a matmul does a multiply-add (2 FLOPs) per token forward and two backward.
    N counts the blocks and the head (the tied LM-head matrix is a matmul); position lookups cost
    nothing. 12·L·H·Q·T: attention's QK^T and weights·V, with L layers, H heads, Q = head size
    and T = seq_len. head_fraction: the share of positions the head scores (1 for GPT; the masking
    rate for BERT's sparse head). A model of two Transformers (ELECTRA's) counts the blocks of
    both; its small layers outside them (a projection, the discriminator's head) count as head.
    T5's decoder (t5.py) reads only the positions its head scores: its blocks count that share.
    XLNet's blocks (xlnet.py) run its query stream too, a row per scored position: 1 +
    head_fraction rows per token, attention over all of them."""
    rows = 1 + head_fraction if hasattr(model, "mask_emb") else 1.0  # (mask_emb: XLNet's w)
    stacks = [m for m in model.modules() if isinstance(m, Transformer)]
    share = [head_fraction if t.h[0].cross is not None else 1.0 for t in stacks]  # read by each
    n_blocks = [sum(p.numel() for p in t.h.parameters()) for t in stacks]
    n_head = num_params(model, include_position=False) - sum(n_blocks)  # embedding/LM head (+...)
    blocks = rows * sum(s * n for s, n in zip(share, n_blocks))
    attention = rows**2 * sum(s * 12 * t.config.n_layer * t.config.n_embd * seq_len  # H·Q = C
                    for s, t in zip(share, stacks))
    return 6 * (blocks + head_fraction * n_head) + attention
