"""
tools/collocations.py: how many common phrases a trained model knows. Not a lesson: a probe of the
checkpoints the default runs write (docs/bert.md tells what it found; docs/log.md has the numbers).

Sixty sentences, written for this check, each with one word hidden by [MASK]: "The fleet crossed
the Atlantic [MASK] in the winter of 1942 ." No sentence is in WikiText-2's train split; each
collocation (Atlantic Ocean) is there, 1 to 783 times. The first 40 served to choose BERT's
defaults; the later 20 were written after its tokenizer was chosen, a check the choice could not
have been fitted to.

A BERT fills the [MASK] from both sides with a word of one token or several, as sample.py does
(`sample.fill_mask`). A GPT cannot see past the [MASK]: it is asked for the token after the text
before it, a harder question for some sentences, and a word its tokenizer splits is a miss. A T5
writes what goes in the blank, greedily (`sample.fill_spans` at temperature 0): one answer, of
as many tokens as it likes, so it has a top 1 and no ranks. An XLNet is asked as a BERT is
(its blanks last in its factorisation order: xlnet.py).

Columns: "top 1", how many of all 60 have the hidden word as the model's answer (its most likely
word); "top 5", how many of the 40 have the hidden word among the model's 5 most likely words;
"median rank" of the hidden word among the 40 (past 50: inf); "split words", hidden words its
tokenizer cuts into pieces; the same for the later 20; "met 10+ times", how many of all 60
sentences hold a pair (the word before the [MASK], the hidden word) that WikiText-2's train split
holds at least 10 times, and of those, how many the model has in its top 5. "two words: top 1":
the same 60 sentences with the word before the [MASK] hidden too ("the [MASK] in the winter",
Atlantic Ocean), how many the model fills exactly. A T5 is not told that two words are missing; a
BERT is (two [MASK]s, each its most likely word: it cannot answer otherwise); a GPT is not asked.

Run (from the repository's root, after `python train.py` and `python train.py --model bert
--out_dir out-bert`):
    python tools/collocations.py                                  (out-bert/ and out/)
    python tools/collocations.py out-bert/ckpt.pt out-other/ckpt.pt
Read next: docs/bert.md.
"""

import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the lessons' folder: model.py, ...
import runtime
import sample
from checkpoint import load_checkpoint, load_model

COLLOCATIONS = [  # (a sentence, the word its [MASK] hides)
    # no sentence is in WikiText-2's train split; each collocation is there, 1 to 783 times
    ("The fleet crossed the Atlantic [MASK] in the winter of 1942 .", "Ocean"),
    ("The town lies on the coast of the Indian [MASK] .", "Ocean"),
    ("He served as Prime [MASK] of Canada for six years .", "Minister"),
    ("The new law was signed by the President of the United [MASK] .", "States"),
    ("Most of the fighting took place during the Second World [MASK] .", "War"),
    ("The regiment was sent to France in the First World [MASK] .", "War"),
    ("The river flows through the city of New [MASK] before it reaches the sea .", "York"),
    ("She moved to Los [MASK] to work in films .", "Angeles"),
    ("The novel was published in the late 18th [MASK] .", "century"),
    ("The team won the championship for the third [MASK] in a row .", "time"),
    ("The single peaked at number one on the Billboard Hot [MASK] .", "100"),
    ("The song reached the top ten of the UK Singles [MASK] .", "Chart"),
    ("The album received positive [MASK] from music critics .", "reviews"),
    ("The hurricane made landfall as a tropical [MASK] near the border .", "storm"),
    ("The storm caused heavy [MASK] and flooding in the region .", "rain"),
    ("He was awarded the Victoria [MASK] for his bravery .", "Cross"),
    ("The episode was watched by 8 million [MASK] in its first broadcast .", "viewers"),
    ("The new stadium was built at a [MASK] of £ 2 million .", "cost"),
    ("He played college [MASK] for the University of Michigan .", "football"),
    ("The building is listed on the National Register of Historic [MASK] .", "Places"),
    ("The ship was sunk by a German [MASK] in 1917 .", "submarine"),
    ("The battle ended with a decisive [MASK] for the Romans .", "victory"),
    ("The church was rebuilt after a [MASK] destroyed the roof .", "fire"),
    ("After the war he returned to his home [MASK] .", "town"),
    ("The film was directed by Steven [MASK] and released in 1993 .", "Spielberg"),
    ("The species is found in South [MASK] and Central America .", "America"),
    ("The game was developed by Nintendo for the Game [MASK] .", "Boy"),
    ("The album was released by Columbia [MASK] in 1970 .", "Records"),
    ("The army crossed the river and captured the [MASK] of the town .", "castle"),
    ("The station is operated by the Ministry of [MASK] .", "Defence"),
    ("He studied law at the University of [MASK] .", "Oxford"),
    ("The bridge was opened to [MASK] in 1932 .", "traffic"),
    ("Her first husband died of a heart [MASK] in 1960 .", "attack"),
    ("The Roman [MASK] conquered the region in the first century .", "Empire"),
    ("The Catholic [MASK] declared him a saint in 1920 .", "Church"),
    ("The match ended in a 2 – 1 [MASK] for the home side .", "win"),
    ("He was sentenced to life in [MASK] for the murder .", "prison"),
    ("The plane crashed shortly after take [MASK] .", "off"),
    ("The Prime Minister resigned after losing a vote of no [MASK] .", "confidence"),
    ("Rain fell for three days and the river burst its [MASK] .", "banks"),
]
LATER_COLLOCATIONS = [  # 20 more, written after the BERT's tokenizer was chosen with the 40 above:
    # a check the choice could not have been fitted to (docs/bert.md)
    ("She won the Academy [MASK] for Best Actress in 1955 .", "Award"),
    ("The Soviet [MASK] collapsed at the end of 1991 .", "Union"),
    ("The Supreme [MASK] ruled that the law was invalid .", "Court"),
    ("His grandfather fought in the American Civil [MASK] .", "War"),
    ("The striker scored a hat [MASK] in the second half .", "trick"),
    ("The team finished the regular [MASK] with ten wins .", "season"),
    ("The chapel is dedicated to the Virgin [MASK] .", "Mary"),
    ("The castle was built in the Middle [MASK] by a local lord .", "Ages"),
    ("The liner sank on her maiden [MASK] after hitting an iceberg .", "voyage"),
    ("The game was released in North [MASK] in the spring of 2005 .", "America"),
    ("The President met the minister at the White [MASK] .", "House"),
    ("The company moved its offices from London to Hong [MASK] .", "Kong"),
    ("The orchestra gave a concert in Buenos [MASK] last year .", "Aires"),
    ("The actor died of lung [MASK] at the age of 60 .", "cancer"),
    ("The film was a failure at the box [MASK] .", "office"),
    ("He was awarded the Nobel [MASK] for his work on physics .", "Prize"),
    ("The second season received mixed [MASK] from critics .", "reviews"),
    ("The band began a world [MASK] to promote the record .", "tour"),
    ("The new ground has a seating [MASK] of 20 @,@ 000 .", "capacity"),
    ("The two nations signed a peace [MASK] to end the war .", "treaty"),
]
TRAIN_TEXT = Path("data/wikitext-2/wiki.train.tokens")  # WikiText-2's words, as data.py keeps them
COLUMNS = ("top 1", "top 5", "median rank", "split words", "later 20: top 5", "later 20: split",
           "met 10+ times", "met 10+ times: top 5", "two words: top 1")


@torch.no_grad()
def probe(path):
    """{column: value} for the checkpoint at path (see COLUMNS and the docstring above)."""
    checkpoint = load_checkpoint(path)  # a missing or damaged file: one line that says so
    model, _, enc = load_model(checkpoint)
    model.eval()
    kind = checkpoint["train_config"]["model"]
    ranks, split, pairs, two = [], [], [], []
    for sentence, word in COLLOCATIONS + LATER_COLLOCATIONS:
        before = sentence.split(" [MASK]")[0]
        previous = before.split(" ")[-1]
        both = sentence.replace(f"{previous} [MASK]", "[MASK]")  # two words in one blank
        if kind == "t5":  # its one answer
            ranks.append(1 if write_span(model, sentence, enc) == " " + word else math.inf)
            two.append(write_span(model, both, enc) == f" {previous} {word}")
        else:
            if kind in ("bert", "xlnet"):  # words, most likely first, as sample.py ranks them
                ids = sample.encode_prompt(sentence, enc)
                ranked = [w for w, _ in sample.fill_mask(model, ids, enc, top_k=50)[0]]
                ids = sample.encode_prompt(both.replace("[MASK]", "[MASK] [MASK]"), enc)
                words = sample.fill_mask(model, ids, enc, top_k=1)  # each [MASK]'s best word
                two.append("".join(w[0][0] for w in words if w) == f" {previous} {word}")
            else:  # the next token after the words before the [MASK], ordinary tokens only
                logits = model(torch.tensor([enc.encode(before)]))[0, -1]
                ranked = [enc.decode([t]) for t in logits[:enc.eot_token].topk(50).indices]
            ranks.append(1 + ranked.index(" " + word) if " " + word in ranked else math.inf)
        split.append(len(enc.encode_ordinary(" " + word)) > 1)
        pairs.append(f" {previous} {word} ")  # the word before the [MASK], and it
    n = len(COLLOCATIONS)
    result = {"top 1": sum(r == 1 for r in ranks), "split words": sum(split[:n]),
              "later 20: split": sum(split[n:])}
    if kind != "t5":  # (a T5 gives one answer: no ranks)
        result |= {"top 5": sum(r <= 5 for r in ranks[:n]),
                   "median rank": statistics.median(ranks[:n]),
                   "later 20: top 5": sum(r <= 5 for r in ranks[n:])}
    if two:
        result["two words: top 1"] = sum(two)
    if TRAIN_TEXT.exists():
        text = TRAIN_TEXT.read_text(encoding="utf-8")
        met = [text.count(pair) >= 10 for pair in pairs]
        result["met 10+ times"] = sum(met)
        if kind != "t5":
            result["met 10+ times: top 5"] = sum(r <= 5 for r, m in zip(ranks, met) if m)
    return result


def write_span(model, sentence, enc):
    """What a T5 writes, greedily, into the one blank of sentence."""
    ids = sample.number_blanks(sample.encode_prompt(sentence, enc), enc.eot_token)
    (span,), _ = sample.fill_spans(model, ids, enc.eot_token, sample.Sampling(temperature=0))
    return enc.decode(span)


def main(argv=None):
    parser = runtime.Parser(prog="tools/collocations.py",
                            description="How many of 60 collocations trained models know.")
    parser.add_argument("ckpts", nargs="*", default=["out-bert/ckpt.pt", "out/ckpt.pt"],
                        help="checkpoints to probe (default: out-bert/ckpt.pt out/ckpt.pt)")
    args = parser.parse_args(argv)
    print(f"| checkpoint | {' | '.join(COLUMNS)} |\n| --- |" + " ---: |" * len(COLUMNS))
    for path in args.ckpts:
        result = probe(path)
        cells = [format(result[c], ",") if c in result else "" for c in COLUMNS]
        print(f"| {path} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    runtime.run_program(main)
