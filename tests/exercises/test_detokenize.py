"""Exercise "detokenize" (EXERCISES.md): undo WikiText's tokenization.
Enable with EXERCISE=detokenize."""

import os

import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("EXERCISE") not in ("detokenize", "all"),
    reason="exercise 'detokenize' not enabled: run with EXERCISE=detokenize",
)


@pytest.mark.parametrize("wikitext, plain", [
    (" a real @-@ time tactical game", " a real-time tactical game"),
    (" about 1 @,@ 000 copies", " about 1,000 copies"),
    (" 4 @.@ 37 light @-@ years", " 4.37 light-years"),
    (" Hello , world . It 's done ; isn 't it ?", " Hello, world. It's done; isn't it?"),
    (" ( born 1901 ) : a writer !", " (born 1901): a writer!"),
    (" = = Gameplay = = \n", " = = Gameplay = = \n"),  # headings stay as they are
])
def test_detokenize_undoes_the_markers_and_the_spaces(wikitext, plain):
    from data import detokenize
    assert detokenize(wikitext) == plain
