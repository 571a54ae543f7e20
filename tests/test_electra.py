"""electra.py, checked against ELECTRA's definition (Clark et al. 2020), not against its own output:
the replacements are draws from the generator's distribution; the labels say "replaced" exactly
where a draw differs from the original, and nothing is scored at <|endoftext|>; the discriminator's
loss reaches the generator only through the shared embedding, which is one tensor; L = L_MLM +
λ·L_disc computed here from the formulas; the AUC and accuracies against pairs counted here."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import data
from checkpoint import load_model
from electra import ELECTRA, RTD, sample_tokens
from model import IGNORE, ModelConfig, num_params

EOT = 60  # a toy tokenizer: ordinary ids 0..59, <|endoftext|> 60, [MASK] 61
CONFIG = ModelConfig(vocab_size=64, block_size=24, n_layer=2, n_head=2, n_embd=32,
                     position="rope", embedding_layernorm=True)


def model_and_batch(seed=0, rows=6):
    torch.manual_seed(seed)
    model = ELECTRA(CONFIG)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, EOT, (rows, CONFIG.block_size), generator=g)
    tokens[:, ::7] = EOT  # documents end here and there
    return model, RTD(eot_id=EOT), tokens, g


def spy_on_the_discriminator(model):
    """({"input": what the discriminator reads next}, the discriminator itself)."""
    seen, real_discriminate = {}, model.discriminate

    def spy(idx, attention_mask=None):
        seen["input"] = idx
        return real_discriminate(idx, attention_mask)
    model.discriminate = spy
    return seen, real_discriminate


def evaluate_batch(model, objective, batch):
    """The objective's metrics of one evaluation batch, as data.evaluate makes them of a split."""
    with torch.no_grad():
        sums = objective.eval_sums(model, *batch)
    return objective.summarize({name: torch.stack([torch.as_tensor(v) for v in value]).double()
                                for name, value in sums.items()})


def test_sampling_draws_each_ordinary_token_as_often_as_the_softmax_says():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 5.0, 9.0]])  # ids 4, 5: special, never drawn
    n = 200_000
    draws = sample_tokens(logits.expand(n, -1), torch.rand(n, generator=torch.Generator()
                                                           .manual_seed(0)), eot_id=4)
    p = F.softmax(logits[0, :4], dim=0).numpy()
    counts = np.bincount(draws.numpy(), minlength=6)
    assert counts[4:].sum() == 0
    assert np.all(np.abs(counts[:4] - n * p) < 4 * np.sqrt(n * p * (1 - p)))  # 4 sigmas


def test_the_labels_mark_exactly_the_draws_that_differ_and_never_an_end_of_text():
    model, objective, tokens, g = model_and_batch()
    tokens = tokens.where(tokens == EOT, tokens % 4)  # a text of four words, and a generator
    with torch.no_grad():  # that knows them: its draws are often, not always, the original
        model.generator.head_bias[:4] += 6
    inputs, targets, noise = objective.train_batch(tokens, g)
    hidden = targets != IGNORE
    assert hidden.any() and not hidden[tokens == EOT].any()
    seen, real_discriminate = spy_on_the_discriminator(model)
    with torch.no_grad():
        logits = model.generator(inputs, positions=hidden).float()
        loss = objective.loss(model, inputs, targets, noise)
    corrupted = seen["input"]
    assert torch.equal(corrupted[~hidden], tokens[~hidden])  # only hidden positions change
    # the draws, by inverse transform sampling written here with numpy
    probs = F.softmax(logits[:, :EOT], dim=-1).double().numpy()
    u = noise[hidden].double().numpy()
    draws = [int(np.searchsorted(np.cumsum(p), x * p.sum(), side="right"))
             for p, x in zip(probs, u)]
    assert corrupted[hidden].tolist() == draws
    assert (corrupted[hidden] == tokens[hidden]).any()  # some draws give back the original...
    assert (corrupted[hidden] != tokens[hidden]).any()  # ...others do not
    # L = L_MLM + λ L_disc, each from its formula; the labels: 1 where the draw differs
    mlm = -torch.log_softmax(logits, -1).gather(1, tokens[hidden][:, None]).mean()
    with torch.no_grad():
        z = real_discriminate(corrupted).double()
    labels = (corrupted != tokens).double()
    scored = tokens != EOT  # never <|endoftext|>
    bce = -(labels * torch.log(torch.sigmoid(z)) + (1 - labels) * torch.log(1 - torch.sigmoid(z)))
    assert loss.item() == pytest.approx(mlm.item() + 50 * bce[scored].mean().item(), rel=1e-5)
    assert objective.terms["disc_loss"].item() == pytest.approx(bce[scored].mean().item(),
                                                                 rel=1e-5)


def test_a_generator_that_is_always_right_leaves_nothing_replaced(monkeypatch):
    model, objective, tokens, g = model_and_batch()
    inputs, targets, noise = objective.train_batch(tokens, g)

    def certain(idx, positions):  # all probability on the original token
        return F.one_hot(targets[positions], CONFIG.vocab_size).float() * 100
    monkeypatch.setattr(model.generator, "forward", certain)
    seen = []
    monkeypatch.setattr(model, "discriminate", lambda idx: seen.append(idx)
                        or torch.zeros(idx.shape, requires_grad=True))
    loss = objective.loss(model, inputs, targets, noise)
    assert torch.equal(seen[0], tokens)
    assert loss.item() == pytest.approx(50 * math.log(2), rel=1e-4)  # all labels 0, logits 0


def grads(model, objective, batch, disc_weight):
    model.zero_grad()
    objective.disc_weight = disc_weight
    objective.loss(model, *batch).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_the_discriminator_loss_reaches_the_generator_only_through_the_shared_embedding():
    model, objective, tokens, g = model_and_batch()
    batch = objective.train_batch(tokens, g)
    one, many = grads(model, objective, batch, 1.0), grads(model, objective, batch, 50.0)
    generator_own = [name for name in one if name.startswith("generator.")]
    assert generator_own  # its blocks, head, projection: the same gradient whatever λ is
    for name in generator_own:
        assert torch.equal(one[name], many[name]), name
    # the embedding is shared: the discriminator's loss changes its gradient
    assert not torch.allclose(one["transformer.wte.weight"], many["transformer.wte.weight"])


def test_the_shared_embedding_is_one_tensor_also_after_a_checkpoint(tmp_path):
    model, *_ = model_and_batch()
    assert model.generator.transformer.wte.weight is model.transformer.wte.weight
    assert model.generator.transformer.ln_emb is model.transformer.ln_emb
    every = dict(model.named_parameters(remove_duplicate=False))  # the shared ones twice
    shared = [every["transformer.wte.weight"], *model.transformer.ln_emb.parameters()]
    assert num_params(model) == sum(p.numel() for p in every.values()) - sum(
        p.numel() for p in shared)  # counted once
    assert model.generator.config.n_embd == CONFIG.n_embd // 2  # half the width, by default
    torch.save({"model": model.state_dict()}, tmp_path / "m.pt")
    checkpoint = {"model": torch.load(tmp_path / "m.pt", weights_only=True)["model"],
                  "model_config": vars(CONFIG),
                  "train_config": {"model": "electra", "mask_prob": 0.15, "disc_weight": 50.0}}
    loaded, objective, _ = load_model(checkpoint)
    assert loaded.generator.transformer.wte.weight is loaded.transformer.wte.weight
    assert torch.equal(loaded.transformer.wte.weight, model.transformer.wte.weight)
    assert isinstance(objective, RTD)


def test_auc_and_accuracies_against_pairs_counted_here():
    model, objective, tokens, g = model_and_batch(rows=8)
    with torch.no_grad():  # spread the discriminator's scores over several units
        model.disc_out.weight.mul_(300)
    starts = list(range(0, 8 * 100, 100))
    seen, real_discriminate = spy_on_the_discriminator(model)
    metrics = evaluate_batch(model, objective, objective.eval_batch(tokens, starts))
    with torch.no_grad():
        scores = real_discriminate(seen["input"]).double()
    labels, scored = seen["input"] != tokens, tokens != EOT
    s, y = scores[scored], labels[scored]
    replaced, original = s[y], s[~y]
    assert len(replaced) > 10 and len(original) > 10
    wins = (replaced[:, None] > original[None, :]).double()
    ties = (replaced[:, None] == original[None, :]).double()
    assert metrics["auc"] == pytest.approx((wins + ties / 2).mean().item(), abs=2e-3)
    assert metrics["replaced_acc"] == pytest.approx((replaced > 0).double().mean().item())
    assert metrics["original_acc"] == pytest.approx((original <= 0).double().mean().item())


def test_evaluation_draws_the_same_replacements_whatever_the_batch_size():
    model, objective, _, _ = model_and_batch()
    tokens = np.random.default_rng(0).integers(0, EOT, 24 * 9).astype(np.uint16)
    autocast = torch.autocast("cpu", enabled=False)
    two, five = (data.evaluate(model, objective, tokens, b, autocast) for b in (2, 5))
    assert two == pytest.approx(five, rel=1e-6)  # (sums in another order)
    assert 0 <= two["auc"] <= 1 and two["loss"] == pytest.approx(
        two["mlm_loss"] + 50 * two["disc_loss"])


def test_the_discriminator_learns_to_flag_what_the_generator_puts_in():
    """A generator that always draws the one token the texts never hold: a few dozen steps on L
    teach the discriminator to flag it, and to call every other token original."""
    torch.manual_seed(0)
    model, objective = ELECTRA(CONFIG), RTD(eot_id=EOT)
    always = F.one_hot(torch.tensor(EOT - 1), CONFIG.vocab_size).float() * 100
    model.generator.forward = lambda idx, positions: always.expand(int(positions.sum()), -1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def texts(rows):  # every token but the last ordinary one
        return torch.randint(0, EOT - 1, (rows, CONFIG.block_size), generator=g)

    def metrics():
        return evaluate_batch(model, objective, objective.eval_batch(texts(32),
                                                                     range(0, 3200, 100)))
    before = metrics()
    for _ in range(40):
        objective.loss(model, *objective.train_batch(texts(16), g)).backward()
        optimizer.step()
        optimizer.zero_grad()
    after = metrics()
    assert before["original_acc"] < 0.9  # at first a coin toss (the replaced: one token, one score)
    assert after["auc"] > 0.99 and after["replaced_acc"] > 0.9 and after["original_acc"] > 0.99
