"""T5's span corruption and its encoder-decoder, checked against Raffel et al. (2020), section
3.1.4, and against attention and decoding written out here."""

import math
import re

import pytest
import torch
from conftest import learn_by_heart, train_small

import model
import runtime
import sample
import t5

EOT = 100  # a small vocabulary: ordinary ids 0..99, <|endoftext|> 100, [MASK] 101, sentinels after


def config(**changes):
    settings = dict(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=32,
                    position="rope", embedding_layernorm=True)
    return model.ModelConfig(**(settings | changes))


def documents(n_tokens, generator):
    """A stream of documents of 300 to 3,000 ordinary tokens, each followed by <|endoftext|>."""
    stream = []
    while len(stream) < n_tokens:
        length = int(torch.randint(300, 3000, (1,), generator=generator))
        stream += torch.randint(0, EOT, (length,), generator=generator).tolist() + [EOT]
    return torch.tensor(stream[:n_tokens])


def blocks(n, T, generator):
    """n blocks of T tokens, cut from such a stream as data.py cuts its token file."""
    return documents(n * T, generator).view(n, T)


def uncorrupt(inputs, targets):
    """The text back from one row's encoder input and target: each sentinel in the input
    replaced by what follows the same sentinel in the target, up to the next sentinel."""
    spans, current = {}, None
    for token in targets:
        if token > EOT + 1:  # a sentinel opens the next span (the last one opens nothing)
            current = spans.setdefault(token, [])
        else:
            current.append(token)
    text = []
    for token in inputs:
        text += spans[token] if token > EOT + 1 else [token]
    return text


def span_lengths(targets):
    """The length of each hidden span of one row, read from its target."""
    lengths = []
    for token in targets[:-1]:  # (the final sentinel ends the target)
        if token > EOT + 1:
            lengths.append(0)
        else:
            lengths[-1] += 1
    return lengths


# The corruption -------------------------------------------------------------------------------

def test_inputs_and_targets_give_back_the_text_exactly():
    generator = torch.Generator().manual_seed(0)
    idx = blocks(64, 128, generator)
    idx[3, 5], idx[7, :2], idx[9, -1] = EOT, EOT, EOT  # documents that end and begin anywhere
    inputs, key_mask, written, targets = t5.corrupt_spans(idx, [generator] * 64, eot_id=EOT)
    for b in range(64):
        row_inputs = inputs[b][key_mask[b]].tolist()
        row_targets = targets[b][targets[b] != model.IGNORE].tolist()
        assert uncorrupt(row_inputs, row_targets) == idx[b].tolist()
        # sentinels in order, each once: <s0> = [MASK] + 1, ...; the target ends with one more
        sentinels = [t for t in row_inputs if t > EOT + 1]
        assert sentinels == list(range(EOT + 2, EOT + 2 + len(sentinels)))
        assert [t for t in row_targets if t > EOT + 1] == sentinels + [EOT + 2 + len(sentinels)]
        # teacher forcing: the decoder reads the target moved one place right, behind EOT
        assert written[b, : len(row_targets)].tolist() == [EOT] + row_targets[:-1]


def test_the_corruption_hides_15_percent_in_spans_of_mean_3_and_never_an_end_of_text():
    """The paper's settings over many draws: noise density 15% of the ordinary tokens, mean span
    length 3; <|endoftext|> never hidden, so no span reaches from one document into the next."""
    generator = torch.Generator().manual_seed(1)
    idx = blocks(2000, 128, generator)
    inputs, key_mask, _, targets = t5.corrupt_spans(idx, [generator] * 2000, eot_id=EOT)
    hidden, spans = 0, 0
    for b in range(2000):
        row_targets = targets[b][targets[b] != model.IGNORE].tolist()
        lengths = span_lengths(row_targets)
        assert all(n >= 1 for n in lengths)  # a sentinel stands for a span of one token or more
        assert EOT not in row_targets  # <|endoftext|> is never hidden...
        assert inputs[b][key_mask[b]].tolist().count(EOT) == idx[b].tolist().count(EOT)
        hidden, spans = hidden + sum(lengths), spans + len(lengths)
    ordinary = (idx < EOT).sum().item()
    assert abs(hidden / ordinary - 0.15) < 0.01
    assert abs(hidden / spans - 3) < 0.2


def test_spans_start_anywhere_in_a_text_the_last_token_included():
    """T5's mask order (kept, hidden, kept, ...) would always hide a text's last token; the
    random turn (T5's random_roll) puts spans anywhere: each position hidden about 15% of the
    time, the first and the last too."""
    generator = torch.Generator().manual_seed(2)
    masks = torch.stack([t5.noise_mask(40, 0.15, 3.0, generator) for _ in range(20000)])
    assert masks.sum(1).eq(6).all()  # round(40 x 0.15) in every draw
    share = masks.float().mean(0)  # (40,)
    assert (share - 0.15).abs().max() < 0.02


def test_a_split_into_segments_is_uniform_over_all_splits():
    """random_segmentation: 6 items in 3 parts of at least one: C(5, 2) = 10 splits, each 1/10."""
    generator = torch.Generator().manual_seed(3)
    seen = {}
    for _ in range(20000):
        split = tuple(t5.random_segmentation(6, 3, generator).tolist())
        seen[split] = seen.get(split, 0) + 1
    assert len(seen) == 10 and all(sum(s) == 6 and min(s) >= 1 for s in seen)
    assert all(abs(n / 20000 - 0.1) < 4 * math.sqrt(0.1 * 0.9 / 20000) for n in seen.values())


# The model --------------------------------------------------------------------------------------

def test_cross_attention_equals_a_softmax_written_in_the_test():
    """Each decoder position's output: softmax(q k^T / sqrt(hs)) v over the encoder's real
    positions only, q from the decoder's stream and k, v from the encoder's output."""
    torch.manual_seed(0)
    cfg = config()
    layer = model.CrossAttention(cfg).eval()
    x, memory = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    memory_mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    out = layer(x, memory, memory_mask)
    Wq, Wkv, Wo = layer.c_q.weight, layer.c_kv.weight, layer.c_proj.weight
    for b in range(2):
        real = memory[b][memory_mask[b]]  # (S_b, 32)
        heads = []
        for h in range(2):
            cols = slice(16 * h, 16 * (h + 1))
            q = x[b] @ Wq[cols].T + layer.c_q.bias[cols]  # (5, 16)
            k = real @ Wkv[:32][cols].T + layer.c_kv.bias[:32][cols]  # (S_b, 16)
            v = real @ Wkv[32:][cols].T + layer.c_kv.bias[32:][cols]
            heads.append(torch.softmax(q @ k.T / 4.0, dim=-1) @ v)  # sqrt(16) = 4
        expected = torch.cat(heads, dim=1) @ Wo.T + layer.c_proj.bias
        torch.testing.assert_close(out[b], expected, atol=1e-5, rtol=0)


def test_the_decoder_never_sees_a_target_after_its_position_and_the_encoder_sees_all():
    torch.manual_seed(0)
    m = t5.T5(config()).eval()
    idx = torch.randint(0, EOT, (2, 20))
    written = torch.randint(0, EOT, (2, 9))
    logits = m(idx, None, written)  # (2, 9, V)
    for t in range(8):
        changed = written.clone()
        changed[:, t + 1:] = (changed[:, t + 1:] + 1) % EOT  # every target after t changes
        torch.testing.assert_close(m(idx, None, changed)[:, : t + 1], logits[:, : t + 1])
        assert not torch.allclose(m(idx, None, changed)[:, t + 1:], logits[:, t + 1:])
    later = idx.clone()
    later[:, -1] = (later[:, -1] + 1) % EOT  # the encoder's last token: every position reads it
    assert (m(later, None, written) - logits).abs().amax(-1).gt(1e-6).all()


def test_padding_of_the_encoder_changes_nothing():
    torch.manual_seed(0)
    m = t5.T5(config()).eval()
    idx, written = torch.randint(0, EOT, (1, 12)), torch.randint(0, EOT, (1, 6))
    padded = torch.cat([idx, torch.full((1, 5), 7)], dim=1)
    key_mask = torch.arange(17)[None] < 12
    torch.testing.assert_close(m(padded, key_mask, written), m(idx, None, written),
                               atol=1e-5, rtol=0)


def test_gpt_and_bert_have_the_parameters_they_had():
    """Cross-attention is the decoder's alone: a GPT's and a BERT's blocks hold no new layers."""
    names = {n.split(".", 3)[-1] for n, _ in model.GPT(config()).named_parameters() if ".h.0." in n}
    assert names == {f"{layer}.{p}" for layer in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2",
                                                  "mlp.c_fc", "mlp.c_proj")
                     for p in ("weight", "bias")}
    bert_names = {n for n, _ in model.BERT(config()).named_parameters()}
    assert not any("cross" in n for n in bert_names)
    decoder = {n for n, _ in t5.T5(config()).named_parameters() if n.startswith("decoder.h.0.")}
    assert {"decoder.h.0.cross.c_q.weight", "decoder.h.0.cross.c_kv.weight",
            "decoder.h.0.ln_cross.weight"} <= decoder


def test_one_embedding_for_the_encoder_the_decoder_and_the_output():
    m = t5.T5(config())
    assert m.decoder.wte is m.transformer.wte
    assert model.num_params(m) == sum(p.numel() for p in {id(p): p for p in m.parameters()}
                                      .values())


# Generation and span accuracy -------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained():
    """A T5 that learned to fill the spans of one short text it sees over and over."""
    torch.manual_seed(0)
    objective = t5.SpanCorruption(eot_id=EOT, block_size=64)
    text = (torch.arange(24) * 7 % EOT)[None].repeat(8, 1)  # (8, 24)
    return learn_by_heart(t5.T5(config()), objective, text), objective, text


def test_cached_span_filling_equals_uncached_and_reads_the_encoder_once(trained):
    m, _, text = trained
    ids = text[0].tolist()
    ids = ids[:3] + [EOT + 2] + ids[6:12] + [EOT + 3] + ids[14:]  # two blanks
    calls = []
    hooks = [block.cross.c_kv.register_forward_hook(lambda *_: calls.append(1))
             for block in m.decoder.h]
    sampling = sample.Sampling(temperature=1.0, top_k=20)
    runs = []
    for use_cache in (True, False):
        calls.clear()
        generator = torch.Generator().manual_seed(5)
        runs.append(sample.fill_spans(m, ids, EOT, sampling, generator, use_cache=use_cache)[0])
        runs.append(len(calls))
    for hook in hooks:
        hook.remove()
    spans, cached_calls, uncached_spans, uncached_calls = runs
    assert spans == uncached_spans and len(spans) == 2
    assert cached_calls == len(m.decoder.h)  # once per layer for the whole prompt
    assert uncached_calls > cached_calls


def test_span_accuracy_is_what_greedy_decoding_writes(trained):
    """The evaluation's count of spans written exactly equals the count of spans that greedy
    decoding (sample.fill_spans at temperature 0) writes exactly, each from the true target
    before it."""
    m, objective, text = trained
    generator = torch.Generator().manual_seed(9)
    inputs, key_mask, written, targets = objective.train_batch(text, generator)
    with torch.no_grad():
        right, spans = t5.greedy_spans(m(inputs, key_mask, written), targets, EOT)
    by_hand, total = 0, 0
    for b in range(len(text)):
        row_targets = targets[b][targets[b] != model.IGNORE].tolist()
        starts = [i for i, t in enumerate(row_targets) if t > EOT + 1][:-1]
        for n, start in enumerate(starts):  # span n: decode greedily after the true prefix
            truth = row_targets[start + 1:]
            truth = truth[: next(i for i, t in enumerate(truth) if t > EOT + 1) + 1]
            prefix = [EOT] + row_targets[: start + 1]
            out = []
            memory = m.encode(inputs[b : b + 1], key_mask[b : b + 1])
            while len(out) < len(truth):
                logits = m.decode(torch.tensor([prefix + out]), memory, key_mask[b : b + 1])[0, -1]
                allowed = torch.arange(len(logits)) < EOT  # ordinary tokens...
                allowed[EOT + 3 + n] = True  # ...and the sentinel after span n
                out.append(int(logits.masked_fill(~allowed, float("-inf")).argmax()))
                if out[-1] > EOT + 1:
                    break
            by_hand += out == truth
            total += 1
    assert (int(right), int(spans)) == (by_hand, total)
    assert 0 < by_hand < total  # the model knows some spans and not others: the count can fail


def test_evaluation_scores_the_hidden_tokens_apart_from_the_sentinels(trained):
    """The loss per target token, and the loss at the hidden tokens alone, each the mean of
    -log p(target) picked out here by hand from the softmax of the logits."""
    m, objective, text = trained
    batch = objective.eval_batch(text, range(len(text)))
    with torch.no_grad():
        sums = objective.eval_sums(m, *batch)
        log_p = torch.log_softmax(m(*batch[:3]), dim=-1)  # (B, L, V)
    targets = batch[3]
    picked = [(-log_p[b, t, targets[b, t]].item(), targets[b, t].item() > EOT)
              for b in range(len(text)) for t in range(targets.size(1))
              if targets[b, t] != model.IGNORE]
    everything = [loss for loss, _ in picked]
    text_only = [loss for loss, sentinel in picked if not sentinel]
    assert 0 < len(text_only) < len(everything)
    for name, losses in (("loss", everything), ("hidden_loss", text_only)):
        total, count = sums[name]
        assert int(count) == len(losses)
        assert float(total) / int(count) == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_a_trained_t5_writes_the_hidden_span(trained):
    m, _, text = trained
    ids = text[0].tolist()
    hidden = ids[10:14]  # four tokens, as it was trained to write: round(24 x 0.15)
    ids = ids[:10] + [EOT + 2] + ids[14:]
    (span,), finished = sample.fill_spans(m, ids, EOT, sample.Sampling(temperature=0))
    assert span == hidden
    assert finished  # it wrote the sentinel that ends the blank
    # max_tokens counts what it writes: the four tokens and the closing sentinel are five
    for n, written, ended in ((5, hidden, True), (4, hidden, False), (2, hidden[:2], False)):
        assert sample.fill_spans(m, ids, EOT, sample.Sampling(temperature=0), max_tokens=n) == \
            ([written], ended)


@pytest.fixture(scope="module")
def t5_checkpoint(tmp_path_factory):
    """A T5 trained by train.py for a few steps on a small text (a tokenizer of 300 ids)."""
    return train_small(tmp_path_factory.mktemp("t5"), "t5", "--n_layer", "1", "--block_size",
                       "64", "--batch_size", "4", "--max_steps", "40")


def test_sample_fills_each_blank_and_refuses_a_prompt_without_one_or_with_too_many(
        t5_checkpoint, capsys):
    capsys.readouterr()
    sample.main(["--ckpt", t5_checkpoint, "--prompt", "The king [MASK] by the river and [MASK] .",
                 "--temperature", "0", "--num_samples", "2"])
    shown = capsys.readouterr().out.splitlines()
    assert (shown[0], shown[2]) == ("--- sample 1 ---", "--- sample 2 ---")
    assert shown[1] == shown[3]  # greedy: the same filling twice
    # the prompt, each blank's span in brackets (empty where a decoder of 40 steps ran out of room)
    assert re.fullmatch(r"The king ?\[.*\] by the river and ?\[.*\] \.", shown[1]), shown[1]
    with pytest.raises(runtime.ConfigError, match="this checkpoint is a T5: put .MASK. in the "):
        sample.main(["--ckpt", t5_checkpoint, "--prompt", "The king stood by the river ."])
    # block_size 64: 33 sentinels, for 32 blanks and the one that ends the target
    with pytest.raises(runtime.ConfigError, match="has 33 blanks, but the model has 33 sentinels"):
        sample.main(["--ckpt", t5_checkpoint, "--prompt", "[MASK]" * 33])
