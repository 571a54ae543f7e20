"""model.py: what each model may see, that both attention paths agree, how big the models are, how
they start, and that GPT-2's weights load one to one."""

import math

import pytest
import torch
import torch.nn.functional as F

import model
from model import BERT, GPT, ModelConfig


def tiny(**overrides):
    cfg = dict(vocab_size=50304, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    cfg.update(overrides)
    return ModelConfig(**cfg)


def random_ids(B, T, high=50256, seed=0):
    return torch.randint(0, high, (B, T), generator=torch.Generator().manual_seed(seed))


# 1. What each position may see -------------------------------------------------------------------

@pytest.mark.parametrize("position", ["learned", "rope"])
def test_future_tokens_do_not_change_past_gpt_logits(position):
    torch.manual_seed(0)
    gpt = GPT(tiny(position=position)).eval()
    idx = random_ids(2, 16)
    before = gpt(idx)
    for t in (0, 5, 14):
        changed = idx.clone()
        changed[:, t + 1:] = random_ids(2, 15 - t, seed=t + 1)
        after = gpt(changed)
        torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], atol=1e-6, rtol=0)
        assert not torch.allclose(after[:, t + 1:], before[:, t + 1:])  # the future did change


def test_bert_sees_later_tokens():
    torch.manual_seed(0)
    bert = BERT(tiny()).eval()
    idx = random_ids(2, 16)
    changed = idx.clone()
    changed[:, -1] = (idx[:, -1] + 1) % 50256
    assert (bert(changed)[:, 0] - bert(idx)[:, 0]).abs().max() > 1e-4


def test_bert_ignores_the_ids_under_padding():
    torch.manual_seed(0)
    bert = BERT(tiny()).eval()
    idx = random_ids(2, 16)
    real = torch.ones(2, 16, dtype=torch.bool)
    real[0, 10:] = False  # row 0 is 10 real tokens and 6 padding
    real[1, 13:] = False
    repadded = torch.where(real, idx, random_ids(2, 16, seed=7))
    torch.testing.assert_close(bert(repadded, real)[real], bert(idx, real)[real], atol=1e-6, rtol=0)
    # ...whereas without the mask the same change reaches the real positions.
    assert (bert(repadded)[real] - bert(idx)[real]).abs().max() > 1e-4


# 2. Explicit attention equals F.scaled_dot_product_attention -------------------------------------

@pytest.mark.parametrize("cls, position", [(GPT, "learned"), (BERT, "learned"), (BERT, "rope")])
@pytest.mark.parametrize("padded", [False, True])
def test_explicit_attention_equals_sdpa(cls, position, padded):
    torch.manual_seed(0)
    fused = cls(tiny(position=position)).eval()
    explicit = cls(tiny(position=position, explicit_attention=True)).eval()
    explicit.load_state_dict(fused.state_dict())
    idx = random_ids(3, 16)
    if cls is GPT:
        # GPT takes no padding mask: padding only ever follows the real tokens it could see
        args = ()
        # instead: a cache-shaped call, 11 queries after 5 cached keys (the mask's offset)
        if padded:
            cache_f, cache_e = [{} for _ in range(2)], [{} for _ in range(2)]
            fused(idx[:, :5], cache=cache_f), explicit(idx[:, :5], cache=cache_e)
            torch.testing.assert_close(
                explicit(idx[:, 5:], cache=cache_e), fused(idx[:, 5:], cache=cache_f), atol=1e-5,
                rtol=0,
            )
    else:
        real = torch.ones(3, 16, dtype=torch.bool)
        if padded:
            real[0, 9:] = False
            real[2, 3:] = False
        args = (real,)
    torch.testing.assert_close(explicit(idx, *args), fused(idx, *args), atol=1e-5, rtol=0)


def test_explicit_attention_matches_a_softmax_written_in_the_test():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 5, 8).unbind(0)  # (B=2, nh=4, T=5, hs=8) each
    causal = model.attention_mask(5, 5, True, None, "cpu")
    out = model.explicit_attention(q, k, v, causal, 0.0)
    for i in range(5):  # query i: a weighted mean of values 0..i
        # (2, 4, i+1)
        w = torch.softmax((q[:, :, i : i + 1] * k[:, :, : i + 1]).sum(-1) / math.sqrt(8), dim=-1)
        torch.testing.assert_close(
            out[:, :, i], (w[..., None] * v[:, :, : i + 1]).sum(2), atol=1e-6, rtol=0
        )


# 2b. Rotary position embeddings ------------------------------------------------------------------

def test_rope_rotates_each_channel_pair_like_a_complex_number():
    """RoPE written the other way round: channel pair (2i, 2i + 1) as the complex number
    x_2i + j x_2i+1, multiplied by e^(j p theta_i) with theta_i = 10000^(-2i / hs)."""
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pairs = torch.complex(x[..., 0::2], x[..., 1::2])  # (2, 3, 7, 4)
    theta = torch.tensor([10000 ** (-2 * i / 8) for i in range(4)], dtype=torch.float64)
    p = torch.arange(5, 12)  # positions 5..11
    turned = pairs * torch.exp(1j * p[:, None].double() * theta)
    expected = torch.stack([turned.real, turned.imag], dim=-1).flatten(-2)
    torch.testing.assert_close(model.apply_rope(x, p), expected, atol=1e-12, rtol=0)
    # Each row at positions of its own (XLNet's query stream): row b as if rotated alone.
    rows = torch.stack([p, torch.tensor([9, 0, 3, 3, 1, 2, 20])])  # (2, 7)
    for b in range(2):
        torch.testing.assert_close(model.apply_rope(x, rows)[b],
                                   model.apply_rope(x[b:b + 1], rows[b])[0], atol=1e-12, rtol=0)


def test_rope_scores_depend_only_on_the_distance_between_positions():
    q, k = torch.randn(2, 1, 2, 1, 16, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(1))  # one query, one key, 2 heads

    def score(m, n):  # query at position m, key at position n
        return (model.apply_rope(q, torch.tensor([m])) *
                model.apply_rope(k, torch.tensor([n]))).sum(-1).flatten()

    for m, n in ((3, 1), (10, 2), (40, 40), (0, 7)):
        for shift in (1, 17, 100):
            torch.testing.assert_close(score(m + shift, n + shift), score(m, n), atol=1e-10, rtol=0)
    assert not torch.allclose(score(3, 1), score(3, 2))  # another distance: another score
    assert not torch.allclose(score(3, 1), score(1, 3))  # and it knows left from right


def test_rope_has_no_position_table():
    rope, learned = GPT(tiny(position="rope")), GPT(tiny())
    assert rope.transformer.wpe is None
    assert model.num_params(rope) == model.num_params(learned) - 16 * 32  # block_size x n_embd
    assert model.num_params(rope, include_position=False) == model.num_params(rope)


# 2c. The head and its loss in one pass ------------------------------------------------------------

@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [7, 64, 1000])  # chunks that do not divide the rows, one chunk
def test_head_loss_equals_cross_entropy_on_the_full_logits(bias, rows):
    g = torch.Generator().manual_seed(0)
    N, C, V = 50, 8, 31
    x = torch.randn(N, C, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(V, C, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(V, dtype=torch.float64, generator=g, requires_grad=True) if bias else None
    targets = torch.randint(0, V, (N,), generator=g)
    targets[[3, 17, 49]] = model.IGNORE  # rows that do not count
    grads = {}
    for name, loss_fn in (("plain", lambda: F.cross_entropy(F.linear(x, w, b), targets)),
                          ("fused", lambda: model.head_loss(x, w, b, targets, rows))):
        loss = loss_fn()
        (3.0 * loss).backward()  # a gradient flowing in from above is scaled through
        grads[name] = [loss.detach()] + [t.grad.clone() for t in (x, w, b) if t is not None]
        for t in (x, w, b):
            if t is not None:
                t.grad = None
    for plain, fused in zip(grads["plain"], grads["fused"]):
        torch.testing.assert_close(fused, plain, atol=1e-12, rtol=0)
    with torch.no_grad():  # evaluation: the same loss, no gradients kept
        torch.testing.assert_close(model.head_loss(x, w, b, targets, rows), grads["plain"][0])


def test_head_loss_in_evaluation_computes_the_logits_only():
    """Training: the logits and the gradients of x and weight, three (N, C) x (C, V) matmuls of
    2·N·C·V FLOPs each; under torch.no_grad(): the logits only. FLOPs as PyTorch counts them."""
    from torch.utils.flop_counter import FlopCounterMode
    N, C, V = 64, 16, 1000
    x, w = torch.randn(N, C, requires_grad=True), torch.randn(V, C, requires_grad=True)
    targets = torch.randint(0, V, (N,))
    for grad, matmuls in ((True, 3), (False, 1)):
        with torch.set_grad_enabled(grad), FlopCounterMode(display=False) as flops:
            model.head_loss(x, w, None, targets)
        assert flops.get_total_flops() == matmuls * 2 * N * C * V


@pytest.mark.parametrize("cls", [GPT, BERT])
def test_each_model_computes_its_loss_as_its_objective_writes_it(cls):
    """model(inputs, targets) (the fused head) against clm_loss / mlm_loss on the logits."""
    from clm import clm_loss, next_token_targets
    from mlm import mask_tokens, mlm_loss
    torch.manual_seed(0)
    m = cls(tiny(vocab_size=300)).double()
    idx = random_ids(4, 16, high=256)
    if cls is GPT:
        inputs, targets = idx, next_token_targets(idx)
        reference = lambda: clm_loss(m(inputs), targets)
    else:
        inputs, targets = mask_tokens(idx, torch.Generator().manual_seed(0), 0.3, eot_id=256)
        chosen = targets != model.IGNORE
        reference = lambda: mlm_loss(m(inputs, positions=chosen), targets[chosen])
    results = []
    for loss_fn in (reference, lambda: m(inputs, targets=targets)):
        m.zero_grad()
        loss = loss_fn()
        loss.backward()
        results.append([loss.detach()] + [p.grad.clone() for p in m.parameters()])
    for plain, fused in zip(*results):
        torch.testing.assert_close(fused, plain, atol=1e-12, rtol=0)


# 3. Sizes, tying and parameter groups ------------------------------------------------------------

def block_params(C):
    # ln_1, ln_2: 2C each; c_attn: 3C*C + 3C; attn.c_proj: C*C + C; c_fc: 4C*C + 4C;
    # mlp.c_proj: 4C*C + C
    return 2 * 2 * C + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C)


@pytest.mark.parametrize("cls, options", [
    (GPT, {}), (BERT, {}), (BERT, {"position": "rope", "embedding_layernorm": True})])
def test_parameter_count_matches_closed_form(cls, options):
    cfg = tiny(vocab_size=1000, block_size=24, n_layer=3, n_embd=48, **options)
    m = cls(cfg)
    V, P, L, C = 1000, 24 if cfg.position == "learned" else 0, 3, 48  # RoPE: no position table
    expected = V * C + P * C + L * block_params(C) + 2 * C  # + ln_f; the LM head is the tied wte
    if cls is BERT:
        expected += (C * C + C) + 2 * C + V  # head dense, head LayerNorm, output bias
    if cfg.embedding_layernorm:
        expected += 2 * C
    assert model.num_params(m) == expected
    assert model.num_params(m, include_position=False) == expected - P * C


def test_lm_head_shares_storage_with_token_embedding():
    gpt = GPT(tiny())
    assert gpt.lm_head.weight.data_ptr() == gpt.transformer.wte.weight.data_ptr()
    with torch.no_grad():
        gpt.transformer.wte.weight[3, 0] = 1.5
    assert gpt.lm_head.weight[3, 0] == 1.5


@pytest.mark.parametrize("cls", [GPT, BERT])
def test_every_trainable_parameter_is_in_exactly_one_group(cls):
    m = cls(tiny())
    groups = model.param_groups(m, weight_decay=0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in m.parameters()}
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert id(m.transformer.h[0].attn.c_attn.weight) in decayed
    assert (
        id(m.transformer.h[0].ln_1.weight) not in decayed
        and id(m.transformer.h[0].attn.c_attn.bias) not in decayed
    )


@pytest.mark.parametrize("cls", [GPT, BERT])
def test_muon_gets_the_linear_layers_weights_and_adamw_keeps_the_embedding(cls):
    m = cls(tiny())
    groups = model.param_groups(m, weight_decay=0.1, muon=True)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in m.parameters()}
    muon = [g for g in groups if g.get("muon")]
    assert len(muon) == 1 and muon[0]["weight_decay"] == 0.1
    # by name, independently of how param_groups finds them: c_attn, c_proj (attention and MLP),
    # c_fc in every block, and BERT's head_dense; never wte, which GPT's lm_head shares
    names = {n for n, p in m.named_parameters() if id(p) in {id(q) for q in muon[0]["params"]}}
    expected = {f"transformer.h.{i}.{layer}.weight" for i in range(len(m.transformer.h))
                for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert names == expected | ({"head_dense.weight"} if cls is BERT else set())
    others = [p for g in groups if not g.get("muon") for p in g["params"]]
    assert any(p is m.transformer.wte.weight for p in others)


def test_flops_per_token_follows_palm_counted_by_hand():
    cfg = tiny(vocab_size=1000, block_size=24, n_layer=3, n_embd=48, n_head=4)
    V, L, C, T = 1000, 3, 48, 24
    # N: every parameter but the position table (a lookup, no multiply): the LM head (tied wte),
    # the blocks' matrices (12*C*C per layer) and their vectors (9*C biases + 4*C LayerNorm), ln_f.
    N = V * C + L * (12 * C * C + 9 * C + 4 * C) + 2 * C
    # attention per token and layer: QK^T and weights@V, T*C multiply-adds each = 4*T*C FLOPs
    # forward, three times that with the backward pass
    attention = 3 * 4 * T * C * L
    assert model.flops_per_token(GPT(cfg), T) == 6 * N + attention


# 4. Initialisation -------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [GPT, BERT])
def test_initial_loss_on_random_tokens_is_log_vocab(cls):
    torch.manual_seed(0)
    m = cls(tiny()).eval()
    idx = random_ids(8, 16)
    logits = m(idx)
    loss = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), random_ids(8, 16, seed=1).reshape(-1)
    )
    assert abs(loss.item() - math.log(50304)) < 0.1


def test_initial_weight_std_follows_gpt2():
    torch.manual_seed(0)
    gpt = GPT(ModelConfig())  # default size: 256-wide matrices give tight estimates
    n_layer = gpt.config.n_layer
    block = gpt.transformer.h[1]
    for w in (block.attn.c_attn.weight, block.mlp.c_fc.weight, gpt.transformer.wte.weight):
        assert w.std().item() == pytest.approx(0.02, rel=0.03)
    for w in (block.attn.c_proj.weight, block.mlp.c_proj.weight):
        assert w.std().item() == pytest.approx(0.02 / math.sqrt(2 * n_layer), rel=0.03)
    assert torch.all(block.attn.c_attn.bias == 0) and torch.all(block.ln_1.weight == 1)


# 5. Dropout only in training mode ----------------------------------------------------------------

@pytest.mark.parametrize("cls", [GPT, BERT])
def test_dropout_is_random_in_training_and_off_in_eval(cls):
    torch.manual_seed(0)
    m = cls(tiny(dropout=0.2))
    idx = random_ids(2, 16)
    m.eval()
    torch.testing.assert_close(m(idx), m(idx), atol=0, rtol=0)
    m.train()
    assert not torch.allclose(m(idx), m(idx))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = GPT(tiny(dropout=0.1))
    ckpt = GPT(tiny(dropout=0.1, grad_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    idx = random_ids(2, 16)
    for m in (plain, ckpt):
        # the same dropout masks: checkpoint() replays the RNG when it recomputes
        torch.manual_seed(1)
        m(idx).square().mean().backward()
    for p, q in zip(plain.parameters(), ckpt.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-5)


# 8. GPT-2's weights ------------------------------------------------------------------------------

def gpt2_state_dict(V=50, P=8, C=16, prefix="transformer.", seed=0):
    """A one-layer state dict with the key names and shapes of Hugging Face's GPT2LMHeadModel."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.5
    sd = {prefix + "wte.weight": r(V, C), prefix + "wpe.weight": r(P, C)}
    h = prefix + "h.0."
    sd.update(
        {
            h + "ln_1.weight": 1 + r(C),
            h + "ln_1.bias": r(C),
            h + "attn.bias": torch.tril(torch.ones(1, 1, P, P)),
            h + "attn.masked_bias": torch.tensor(-1e4),
            # Conv1D: (in, out)
            h + "attn.c_attn.weight": r(C, 3 * C), h + "attn.c_attn.bias": r(3 * C),
            h + "attn.c_proj.weight": r(C, C), h + "attn.c_proj.bias": r(C),
            h + "ln_2.weight": 1 + r(C), h + "ln_2.bias": r(C), h + "mlp.c_fc.weight": r(C, 4 * C),
            h + "mlp.c_fc.bias": r(4 * C), h + "mlp.c_proj.weight": r(4 * C, C),
            h + "mlp.c_proj.bias": r(C), prefix + "ln_f.weight": 1 + r(C),
            prefix + "ln_f.bias": r(C),
        }
    )
    if prefix:
        sd["lm_head.weight"] = sd[prefix + "wte.weight"].clone()
    return sd


def gpt2_forward_by_hand(sd, idx, n_head, prefix="transformer."):
    """GPT-2's forward pass for one layer, written out from the raw tensors (float64)."""
    w = {k.removeprefix(prefix): v.double() for k, v in sd.items()}
    T = idx.size(1)

    def layer_norm(x, name):
        mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-5) * w[name + ".weight"] + w[name + ".bias"]

    def gelu(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    x = w["wte.weight"][idx] + w["wpe.weight"][:T]
    qkv = layer_norm(x, "h.0.ln_1") @ w["h.0.attn.c_attn.weight"] + w["h.0.attn.c_attn.bias"]
    q, k, v = qkv.chunk(3, dim=-1)
    heads = []
    for hd in range(n_head):
        s = slice(hd * (q.size(-1) // n_head), (hd + 1) * (q.size(-1) // n_head))
        scores = q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(s.stop - s.start)
        scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
        heads.append(torch.softmax(scores, -1) @ v[..., s])
    x = x + torch.cat(heads, -1) @ w["h.0.attn.c_proj.weight"] + w["h.0.attn.c_proj.bias"]
    hidden = gelu(layer_norm(x, "h.0.ln_2") @ w["h.0.mlp.c_fc.weight"] + w["h.0.mlp.c_fc.bias"])
    x = x + hidden @ w["h.0.mlp.c_proj.weight"] + w["h.0.mlp.c_proj.bias"]
    return layer_norm(x, "ln_f") @ w["wte.weight"].T


# GPT2LMHeadModel's keys, or the original file's
@pytest.mark.parametrize("prefix", ["transformer.", ""])
def test_from_gpt2_matches_a_forward_pass_written_from_the_raw_tensors(prefix):
    sd = gpt2_state_dict(prefix=prefix)
    gpt = GPT.from_gpt2(sd, n_head=2).double()
    cfg = gpt.config
    assert (cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_embd) == (50, 8, 1, 16)
    idx = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        gpt(idx), gpt2_forward_by_hand(sd, idx, n_head=2, prefix=prefix), atol=1e-10, rtol=0
    )
    assert gpt.lm_head.weight.data_ptr() == gpt.transformer.wte.weight.data_ptr()


def test_from_gpt2_refuses_missing_or_unexpected_tensors():
    sd = gpt2_state_dict()
    del sd["transformer.h.0.mlp.c_fc.bias"]
    with pytest.raises(ValueError, match="missing.*h.0.mlp.c_fc.bias"):
        GPT.from_gpt2(sd, n_head=2)
    sd = gpt2_state_dict()
    sd["transformer.h.0.attn.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="unexpected.*h.0.attn.extra.weight"):
        GPT.from_gpt2(sd, n_head=2)


# 9. Forward, loss and backward fit together: each model memorises one batch ----------------------

def test_gpt_overfits_one_batch():
    from clm import clm_loss, next_token_targets
    torch.manual_seed(0)
    gpt = GPT(tiny(vocab_size=64))
    idx = random_ids(4, 16, high=64)
    opt = torch.optim.AdamW(gpt.parameters(), lr=3e-3)
    for _ in range(150):
        loss = clm_loss(gpt(idx), next_token_targets(idx))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def random_walks(n, generator, T=16, V=64):
    """Sequences in which each token is 1, 2 or 3 above the one before it (mod V): a hidden token
    is pinned down by its neighbours, not by which other tokens the sequence contains."""
    steps = torch.randint(1, 4, (n, T), generator=generator)
    return (torch.randint(0, V, (n, 1), generator=generator) + steps.cumsum(1)) % V


def test_a_trained_bert_uses_word_order():
    """BERT's default positions (RoPE, mlm.MLM.defaults) let it learn from its neighbours: shuffle
    the visible tokens and its loss at [MASK] goes up. A bag of words would not care."""
    from mlm import MLM
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    scheme = {k: MLM.defaults[k] for k in ("position", "embedding_layernorm")}  # not its width
    bert = BERT(tiny(vocab_size=128, **scheme))  # ids 0..63 are text
    objective = MLM(mask_prob=0.3, eot_id=64)  # <|endoftext|> 64, [MASK] 65
    opt = torch.optim.AdamW(bert.parameters(), lr=3e-3)
    for _ in range(150):
        loss = objective.loss(bert, *objective.train_batch(random_walks(64, g), g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    bert.eval()
    tokens = random_walks(512, torch.Generator().manual_seed(1))
    hidden = torch.zeros_like(tokens, dtype=torch.bool)
    hidden[:, [5, 10]] = True
    inputs = tokens.masked_fill(hidden, 65)
    visible = (~hidden[0]).nonzero().flatten()
    shuffled = inputs.clone()
    for row in shuffled:  # the same visible tokens, in another order; [MASK]s stay where they are
        row[visible] = row[visible[torch.randperm(len(visible), generator=g)]]
    with torch.no_grad():
        ordered, unordered = (F.cross_entropy(bert(x, positions=hidden), tokens[hidden]).item()
                              for x in (inputs, shuffled))
    assert ordered < math.log(64) - 1.5  # it learned: far below guessing among 64 ids
    assert unordered > ordered + 1.5  # and what it learned is where its neighbours are


def test_bert_overfits_one_batch_through_the_sparse_head():
    from mlm import mask_tokens, mlm_loss
    torch.manual_seed(0)
    bert = BERT(tiny())
    inputs, labels = mask_tokens(
        random_ids(4, 16, high=64), torch.Generator().manual_seed(0), mask_prob=0.3
    )
    chosen = labels != -100
    opt = torch.optim.AdamW(bert.parameters(), lr=3e-3)
    for _ in range(150):
        loss = mlm_loss(bert(inputs, positions=chosen), labels[chosen])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1
