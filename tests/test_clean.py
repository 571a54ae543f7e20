"""clean.py: each quality rule trips on a document made to break it and lets a near miss through;
duplicates go and their first copy stays; MinHash estimates Jaccard similarity without bias; a
Chinese corpus is cleaned like any other."""

import random
import re

import numpy as np
import pytest

import clean

WORDS = ("time history river season album court union ocean army church town game film band "
         "record player league century battle war station school bridge island village "
         "castle road valley forest mountain harbour market garden temple tower").split()


def prose(n_words, seed):
    """Plain sentences of ordinary words: a document every rule lets through."""
    rng = random.Random(seed)
    sentences, n = [], 0
    while n < n_words:
        length = rng.randint(6, 14)
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(length)).capitalize() + ".")
        n += length
    lines = [" ".join(sentences[i:i + 3]) for i in range(0, len(sentences), 3)]
    return "\n".join(lines)


def problem(text):
    found = clean.quality_problem(clean.describe(clean.normalise(text)))
    return found and found[0]


def test_plain_prose_breaks_no_rule():
    assert problem(prose(300, 0)) is None


BASE = prose(200, 1)
# rule: (a document that breaks it, a near miss that does not)
CASES = {
    "too_few_or_too_many_words": (prose(40, 2), prose(60, 2)),
    "odd_mean_word_length": (BASE.replace("e", "e" * 12), BASE.replace("e", "ee")),
    "many_symbols": (BASE.replace(".", ". #tag #tag", 20), BASE.replace(".", ". #tag", 8)),
    "bullet_or_ellipsis_lines": ("\n".join("- " + line for line in BASE.split("\n")),
                                 "\n".join(("- " if i % 3 else "") + line
                                           for i, line in enumerate(BASE.split("\n")))),
    "few_words_with_letters": (BASE + " 12 34 56 78 90" * 12, BASE + " 12 34 56 78 90" * 6),
    "repeated_lines_or_paragraphs": (BASE + ("\nClick here to subscribe now." * 30),
                                     BASE + ("\nClick here to subscribe now." * 2)),
    "dominant_ngram": (BASE + " buy cheap watches" * 60, BASE + " buy cheap watches" * 10),
}


@pytest.mark.parametrize("rule", list(CASES))
def test_each_rule_drops_what_breaks_it_and_keeps_a_near_miss(rule):
    bad, near_miss = CASES[rule]
    assert problem(bad) == rule
    assert problem(near_miss) is None


# An article as WikiText writes it: punctuation set apart, numbers split at " @,@ " and " @.@ "
WIKITEXT_FORM = (
    " = Ödön von Horváth = \n\n Ödön von Horváth ( 9 December 1901 – 1 June 1938 ) was an "
    "Austro @-@ Hungarian playwright and novelist . His plays , among them Tales from the Vienna "
    "Woods ( 1931 ) , sold 1 @,@ 200 @,@ 000 copies by 2005 , and a revival in 1970 drew 4 @.@ 5 "
    "times the audience of 1931 . He wrote in German ; he died in Paris , on the Champs @-@ "
    "Élysées , when a branch fell during a storm . His last novel , Youth Without God ( 1937 ) , "
    "was translated into 12 languages , and it is still read in schools today . \n")


def test_text_tokenized_like_wikitext_passes_the_letter_rule_as_its_prose_does():
    """Detached punctuation is not a word without a letter, or WikiText's articles would fail
    Gopher's 80% rule for their commas; numbers still count against a document."""
    prose = re.sub(r" @(.)@ ", r"\1", WIKITEXT_FORM)
    prose = re.sub(r" ([.,;)])", r"\1", re.sub(r"\( ", "(", prose))
    for text in (WIKITEXT_FORM, prose):
        assert clean.few_words_with_letters(clean.describe(clean.normalise(text))) is None
        assert problem(text) is None  # and no other rule drops it
    # by hand: what the rule counts in the WikiText form
    words = WIKITEXT_FORM.split()
    punctuation = [w for w in words if all(not c.isalnum() for c in w)]
    numbers = [w for w in words if w not in punctuation and not any(c.isalpha() for c in w)]
    share = 1 - len(numbers) / (len(words) - len(punctuation))
    naive = 1 - (len(numbers) + len(punctuation)) / len(words)  # punctuation as words: it fails
    assert share >= 0.8 > naive
    table = " ".join(f"{i} | {i * 7} | {i * 13} ." for i in range(40))  # numbers and bars
    assert clean.few_words_with_letters(clean.describe(table)).endswith("have a letter (at "
                                                                        "least 80%)")


def test_every_rule_has_its_test():
    assert {rule.__name__ for rule in clean.RULES} == set(CASES)


def test_normalise_composes_unicode_and_tidies_whitespace():
    text = "Cafe\u0301\t\tau  lait \x07\r\nnext line   \n\n\n\n\nlast\u00a0word  "
    assert clean.normalise(text) == "Caf\u00e9 au lait\nnext line\n\nlast word"


def test_javascript_lines_go_and_the_rest_of_the_document_stays():
    cleaner = clean.Cleaner()
    kept = cleaner.clean("Please enable JavaScript to view this page.\n" + BASE)
    assert kept == clean.normalise(BASE)
    assert cleaner.report["rules"]["javascript_line"]["lines"] == 1


def test_exact_duplicates_and_boilerplate_lines_go_the_first_copy_stays():
    banner = "We use cookies to give you the best experience on our website, read our policy."
    docs = [prose(120, 10) + "\n" + banner, prose(120, 11), prose(120, 10) + "\n" + banner,
            banner + "\n" + prose(120, 12)]
    cleaner = clean.Cleaner()
    kept = [cleaner.clean(d) for d in docs]
    assert kept[0] == clean.normalise(docs[0])  # the first copy, banner included
    assert kept[1] == clean.normalise(docs[1])
    assert kept[2] is None  # the exact copy
    assert kept[3] == clean.normalise(prose(120, 12))  # the banner went, the text stayed
    rules = cleaner.report["rules"]
    assert rules["exact_duplicate"]["documents"] == 1
    assert rules["boilerplate_line"]["lines"] == 1
    assert rules["boilerplate_line"]["example"].startswith("We use cookies")


def changed(text, share, seed):
    """The text with `share` of its words replaced by other words."""
    rng = random.Random(seed)
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, round(share * len(words)))):
        words[i] = rng.choice(WORDS) + "s"
    return " ".join(words)


def test_near_duplicates_are_found_and_distinct_documents_are_not_merged():
    originals = [prose(400, 100 + i) for i in range(150)]
    # Distinct but related: the same first half, another second half (Jaccard about 1/3).
    related = [o[: len(o) // 2] + prose(200, 900 + i) for i, o in enumerate(originals[:50])]
    copies = [changed(o, share, seed=i) for i, o in enumerate(originals)
              for share in (0.01, 0.02)]
    cleaner = clean.Cleaner()
    kept_originals = [cleaner.clean(d) is not None for d in originals + related]
    kept_copies = [cleaner.clean(d) is not None for d in copies]
    assert all(kept_originals)  # no false positives among 200 distinct documents
    recall = 1 - sum(kept_copies) / len(copies)
    assert recall >= 0.95


def exact_jaccard(a, b):
    grams = [{tuple(w[i:i + 5]) for i in range(len(w) - 4)} for w in (a.split(), b.split())]
    return len(grams[0] & grams[1]) / len(grams[0] | grams[1])


def test_minhash_estimates_jaccard_similarity_without_bias():
    """Over 300 pairs of similarities from about 0.2 to 1: the estimate is unbiased (mean error
    near 0), within 0.05 in root mean square, and its errors follow the binomial law of 100
    coin flips, sqrt(J (1 - J) / 100): at least 90% fall within two of those (95% in theory)."""
    rng = random.Random(0)
    errors, sigmas = [], []
    for i in range(300):
        a = prose(300, 2000 + i)
        b = changed(a, rng.uniform(0.0, 0.3), seed=i)
        estimate = clean.similarity(*(clean.signature(clean.word_ids(clean.words(t)))
                                      for t in (a, b)))
        exact = exact_jaccard(a, b)
        errors.append(estimate - exact)
        sigmas.append(max(np.sqrt(exact * (1 - exact) / clean.PERMUTATIONS), 0.01))
    errors = np.array(errors)
    assert abs(errors.mean()) < 0.01
    assert np.sqrt((errors ** 2).mean()) <= 0.05
    assert np.mean(np.abs(errors) <= 2 * np.array(sigmas)) >= 0.9


def chinese(n_chars, seed):
    rng = random.Random(seed)
    common = [chr(c) for c in range(0x4E00, 0x4E00 + 500)]  # 500 CJK ideographs
    sentences = ["".join(rng.choice(common) for _ in range(rng.randint(8, 20))) + "。"
                 for _ in range(n_chars // 14)]
    return "\n".join("".join(sentences[i:i + 4]) for i in range(0, len(sentences), 4))


def test_chinese_text_is_cleaned_like_any_other():
    """No spaces: every CJK character is a word. Plain Chinese prose passes every rule; its
    duplicates and near duplicates go."""
    docs = [chinese(1500, i) for i in range(20)]
    assert all(problem(d) is None for d in docs)
    assert problem(chinese(30, 99)) == "too_few_or_too_many_words"  # 30 characters: too short
    cleaner = clean.Cleaner()
    assert all(cleaner.clean(d) is not None for d in docs)
    near = docs[3][:200] + "变" + docs[3][201:]  # one character changed
    assert cleaner.clean(docs[5]) is None and cleaner.clean(near) is None
    rules = cleaner.report["rules"]
    assert rules["exact_duplicate"]["documents"] == 1 and rules["near_duplicate"]["documents"] == 1


def test_prepare_cleans_own_text_before_the_split_and_reports_it(tmp_path, capsys):
    """data.py --text: copies are gone before the last 10% become val, so no document is on both
    sides; cleaning.json holds the report; --no_clean keeps every byte."""
    import json
    import data
    import prepared
    folder = tmp_path / "corpus"
    folder.mkdir()
    docs = [prose(150, 300 + i) for i in range(18)]
    for i, doc in enumerate(docs + [docs[0], changed(docs[1], 0.01, seed=0)]):  # copies last
        (folder / f"{i:02d}.txt").write_text(doc, encoding="utf-8")
    meta = data.prepare(tmp_path / "clean", text=str(folder))
    enc = data.tokenizer()
    val = enc.decode(data.open_split(tmp_path / "clean", "val").tolist())
    assert docs[0][:200] not in val and docs[1][:200] not in val  # the copies did not reach val
    assert docs[-1][-200:] in val  # the last distinct document did
    report = json.loads((tmp_path / "clean" / "cleaning.json").read_text())
    assert report["rules"]["exact_duplicate"]["documents"] == 1
    assert report["rules"]["near_duplicate"]["documents"] == 1
    assert "kept 18 of 20 documents" in capsys.readouterr().out
    raw = data.prepare(tmp_path / "raw", text=str(folder), clean_text=False)
    assert sum(raw["tokens"].values()) > sum(meta["tokens"].values())
    assert prepared.read_meta(tmp_path / "raw")["source"]["clean"] is False
    meta_path = tmp_path / "raw" / "meta.json"  # a folder made before cleaning existed...
    old = json.loads(meta_path.read_text())
    del old["source"]["clean"]
    meta_path.write_text(json.dumps(old))
    assert data.prepare(tmp_path / "raw", text=str(folder))["tokens"] == raw["tokens"]  # ...stays
