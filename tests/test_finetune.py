"""finetune.py: the task is what its definition says (a sentence as written, or with two
neighbouring words swapped; no article in both train and dev), padding changes nothing, a GPT or a
wrong task file is refused in one line, and a fine-tuning run resumes exactly."""

import json
import random

import pytest
import torch

import data
import finetune
import train
from runtime import UserError

WORDS = ["river", "stone", "castle", "army", "king", "song", "album", "storm", "city", "ship",
         "road", "bridge", "church", "battle", "station"]


def wikitext(path, articles, seed):
    """A file in WikiText's form: " = Title = " headings, sections, lines of sentences that end
    with " . "."""
    rng, lines = random.Random(seed), []
    for a in range(articles):
        lines += ["", f" = Article {a} = ", ""]
        for _ in range(4):
            sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(9, 20))) + " ."
                         for _ in range(3)]
            lines += [" " + " ".join(sentences) + " ", " = = Section = = "]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wikitext")
    for split, seed in (("valid", 1), ("test", 2)):
        wikitext(folder / f"wiki.{split}.tokens", 10, seed)
    finetune.make_task(folder, folder / "task")
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A GPT, a BERT, a T5 and an XLNet, each trained for two steps on a small text (300 ids)."""
    folder = tmp_path_factory.mktemp("pretrained")
    (folder / "text.txt").write_text(" ".join(f"The {w} stood by the {v} ." for w in WORDS
                                              for v in WORDS), encoding="utf-8")
    data.prepare(folder / "prepared", text=str(folder / "text.txt"), clean_text=False,
                 vocab_size=300)
    for kind in ("gpt", "bert", "t5", "xlnet"):
        train.main(["--model", kind, "--data_dir", str(folder / "prepared"), "--out_dir",
                    str(folder / kind), "--n_layer", "1", "--n_head", "2", "--n_embd", "32",
                    "--block_size", "64", "--batch_size", "2", "--max_steps", "2",
                    "--device", "cpu", "--dtype", "float32", "--eval_iters", "1"])
    return folder


def test_the_task_holds_each_sentence_once_as_written_or_with_two_neighbours_swapped(task):
    originals = {}
    for split in ("valid", "test"):
        for n, article in enumerate(finetune.articles(task / f"wiki.{split}.tokens")):
            assert len(article) == 12  # 4 lines of 3 sentences; headings are not sentences
            for words in article:
                originals.setdefault(len(words), []).append(words)
    rows = {name: [json.loads(line) for line in (task / "task" / f"{name}.jsonl").open()]
            for name in ("train", "dev")}
    assert not {r["article"] for r in rows["train"]} & {r["article"] for r in rows["dev"]}
    assert len(rows["dev"]) * 3 < len(rows["train"]) < len(rows["dev"]) * 5  # about 4 to 1
    every = rows["train"] + rows["dev"]
    assert len(every) == sum(map(len, originals.values()))  # every sentence, once
    for row in every:
        words = row["text"].split()
        assert row["text"].startswith(" ")
        candidates = originals[len(words)]
        if row["label"] == 1:
            assert words in candidates
        else:  # differs from a sentence in exactly two neighbouring places, swapped
            def swapped_from(original):
                diff = [i for i, (a, b) in enumerate(zip(words, original)) if a != b]
                return len(diff) == 2 and diff[1] == diff[0] + 1 and \
                    words[diff[0]] == original[diff[1]] and words[diff[1]] == original[diff[0]]
            assert any(swapped_from(o) for o in candidates), row
    share = sum(r["label"] for r in every) / len(every)
    assert 0.35 < share < 0.65  # a coin flip per sentence


@pytest.mark.parametrize("kind", ["bert", "t5", "xlnet"])  # (T5: its encoder)
def test_padding_changes_no_score(checkpoints, kind):
    checkpoint = torch.load(checkpoints / kind / "ckpt.pt", weights_only=True)
    model = finetune.Classifier(finetune.encoder(checkpoint, scratch=False)).eval()
    enc = data.tokenizer(checkpoint["tokenizer"])
    ids, real, _ = finetune.encode([(" The river stood by the king .", 1),
                                    (" The song .", 0)], enc, 64)
    assert not real[1].all()  # the short one is padded
    both = model(ids, real)
    alone = model(ids[1:, :real[1].sum()], real[1:, :real[1].sum()])
    assert torch.allclose(both[1], alone[0], atol=1e-6)


def run(argv):
    finetune.main([*argv, "--device", "cpu", "--dtype", "float32"])


def test_a_gpt_and_a_wrong_task_file_are_refused_in_one_line(checkpoints, task, tmp_path):
    with pytest.raises(UserError, match="this checkpoint is a GPT, which reads left to right") \
            as refused:
        run(["--ckpt", str(checkpoints / "gpt" / "ckpt.pt"), "--task", str(task / "task"),
             "--out_dir", str(tmp_path / "a")])
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "train.jsonl").write_text('{"text": " a b", "label": 2}\n')
    (wrong / "dev.jsonl").write_text('{"text": " a b", "label": 1}\n')
    messages = [str(refused.value)]
    for folder, expected in ((wrong, "--task " + str(wrong) + ": train.jsonl: line 1 is not"),
                             (tmp_path, f"--task {tmp_path}: it holds no train.jsonl")):
        with pytest.raises(UserError) as refused:
            run(["--ckpt", str(checkpoints / "bert" / "ckpt.pt"), "--task", str(folder),
                 "--out_dir", str(tmp_path / "b")])
        assert str(refused.value).startswith(expected)
        messages.append(str(refused.value))
    (wrong / "train.jsonl").write_text("not json\n")
    with pytest.raises(UserError, match="train.jsonl: Expecting value") as refused:
        run(["--ckpt", str(checkpoints / "bert" / "ckpt.pt"), "--task", str(wrong),
             "--out_dir", str(tmp_path / "c")])
    assert all("\n" not in m for m in [*messages, str(refused.value)])


def test_fine_tuning_resumes_exactly(checkpoints, task, tmp_path):
    flags = ["--ckpt", str(checkpoints / "bert" / "ckpt.pt"), "--task", str(task / "task"),
             "--epochs", "2", "--batch_size", "8", "--seed", "3"]
    run([*flags, "--out_dir", str(tmp_path / "straight")])
    run([*flags, "--out_dir", str(tmp_path / "halves"), "--stop_at", "5"])
    with pytest.raises(UserError, match="leave out --lr"):
        run(["--out_dir", str(tmp_path / "halves"), "--init_from", "resume", "--lr", "1"])
    run(["--out_dir", str(tmp_path / "halves"), "--init_from", "resume"])
    straight, halves = (torch.load(tmp_path / d / "ckpt.pt", weights_only=True)
                        for d in ("straight", "halves"))
    assert straight["step"] == halves["step"] > 5
    assert all(torch.equal(straight["model"][k], halves["model"][k]) for k in straight["model"])
    logs = [[json.loads(line) for line in (tmp_path / d / "log.jsonl").open()]
            for d in ("straight", "halves")]
    assert logs[0][-1] == logs[1][-1]
