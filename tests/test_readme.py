"""README.md is the front page and the map of the code. Check that what it names exists (the
concept map's functions and tests, the reading order's files with their real imports), that the
lessons' "Read next" lines follow its reading order, that every link between the Markdown files
leads somewhere, and that the words and the size of a front page stay as they are."""

import ast
import importlib
import re
from collections import Counter
from pathlib import Path

REPO = Path(__file__).parents[1]
CONCEPTS = ["causal vs masked LM", "15% chosen, 80/10/10", "next-token shift and `ignore_index`",
            "BPE tokenization", "end-of-text token", "memory-mapped token files", "weight init",
            "decoupled weight decay", "warmup", "gradient clipping",
            "mixed precision and loss scaling", "gradient accumulation", "checkpointing",
            "monitoring", "data-parallel training", "activation (gradient) checkpointing",
            "perplexity", "sampling", "cleaning and filtering", "deduplication",
            "Hugging Face model format", "fully sharded data parallel", "permuted LM",
            "two-stream attention", "tensor parallelism", "pipeline parallelism"]
FILE_ROW = re.compile(r"^\| (\d+) \| `([\w/.]+)` \| .+ \| ?([\w, ]*?) ?\|$", re.M)


def section(title):
    return (REPO / "README.md").read_text().split(f"\n## {title}\n")[1].split("\n## ")[0]


def concept_map():
    table = section("Concept map")
    rows = [line.split(" | ") for line in table.splitlines()
            if line.startswith("| ") and "---" not in line][1:]
    return [(concept.strip("| "), re.findall(r"`([^`]+)`", where), re.findall(r"`([^`]+)`", tests))
            for concept, where, tests in rows]


def reading_order():
    """(the lessons in order, ending with EXERCISES.md; {module: its imports} of every row)."""
    lessons, rest = section("Reading order").split("*the plumbing*")
    order = [m[2] for m in FILE_ROW.finditer(lessons)]
    imports = {m[2].removesuffix(".py"): set(m[3].split(", ")) - {"none"}
               for m in FILE_ROW.finditer(lessons + rest) if m[2].endswith(".py")}
    return order, imports


def markdown_files():
    """The repository's Markdown files, without what git ignores (data, runs, environments)."""
    return [p for p in REPO.rglob("*.md") if not any(
        part.startswith((".", "out")) or part == "data" for part in p.relative_to(REPO).parts)]


def without_code(text):
    return re.sub(r"```.*?```", "", text, flags=re.S)


def anchors(text):
    """The anchors GitHub gives a file's headings: lowercase, punctuation dropped, spaces to
    hyphens, a repeated heading numbered."""
    seen, found = Counter(), set()
    for heading in re.findall(r"^#{1,6} (.+)$", without_code(text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
        seen[slug] += 1
    return found


def test_every_concept_of_the_project_is_in_the_map():
    concepts = " ".join(concept for concept, _, _ in concept_map())
    for concept in CONCEPTS:
        assert concept in concepts, concept


def test_every_function_named_in_the_map_exists():
    for concept, names, _ in concept_map():
        assert names, concept
        for name in names:
            module, *attributes = name.split(".")
            obj = importlib.import_module(module)
            for attribute in attributes:
                assert hasattr(obj, attribute), f"{concept}: {name} does not exist"
                obj = getattr(obj, attribute)


def test_every_test_named_in_the_map_exists():
    for concept, _, tests in concept_map():
        assert tests, concept
        for test in tests:
            path, name = test.split("::")
            defined = {node.name for node in ast.parse((REPO / path).read_text()).body
                       if isinstance(node, ast.FunctionDef)}
            assert name in defined, f"{concept}: {test} does not exist"


def test_the_reading_order_lists_every_module_with_its_real_imports():
    _, listed = reading_order()
    modules = {p.stem for p in REPO.glob("*.py")}
    tools = {f"tools/{p.stem}" for p in (REPO / "tools").glob("*.py")}
    assert set(listed) == modules | tools
    for name in modules | tools:
        imported = set()
        for node in ast.walk(ast.parse((REPO / f"{name}.py").read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
        assert listed[name] == imported & modules, name


def test_read_next_leads_from_model_py_through_every_lesson_in_the_reading_order():
    lessons, _ = reading_order()
    chain = ["model.py"]
    while chain[-1].endswith(".py"):
        docstring = ast.get_docstring(ast.parse((REPO / chain[-1]).read_text()))
        line = next(line for line in docstring.splitlines() if line.startswith("Read next:"))
        following = re.search(r"[\w/]+\.py|EXERCISES\.md", line)[0]
        assert following not in chain, f"{chain[-1]} leads back to {following}"
        chain.append(following)
    assert chain == lessons
    assert lessons[-1] == "EXERCISES.md" and len(lessons) > 10


def test_every_relative_link_in_the_markdown_files_resolves():
    files = markdown_files()
    assert {"README.md", "EXERCISES.md", "docs/log.md"} <= {str(p.relative_to(REPO)) for p in files}
    for path in files:
        for link in re.findall(r"\]\(([^)\s]+)\)", without_code(path.read_text())):
            if re.match(r"[a-z]+:", link):  # https:, mailto:: not a file of this repository
                continue
            target, _, anchor = link.partition("#")
            target = (path.parent / target).resolve() if target else path
            where = f"{path.relative_to(REPO)}: {link}"
            assert target.exists(), f"{where}: no such file"
            if anchor:
                assert anchor in anchors(target.read_text()), f"{where}: no such heading"


def test_the_readme_stays_a_front_page():
    text = (REPO / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 300 and len(text.split()) <= 3500
    assert any(line.startswith("python ") for line in lines[:25])  # the first command, early
    dates = re.findall(r"(?<![#\w-])20\d\d-\d\d-\d\d\b", text)  # not a link to a log entry's
    assert len(dates) <= 2  # measurements and their dates go to docs/log.md


def test_no_file_speaks_of_what_a_reader_cannot_see():
    """No goal a reader never saw, no unnamed baseline, no folder outside the repository."""
    words = re.compile(r"seed config|the goal was|\.\./shared|\blent\b", re.I)
    files = markdown_files() + [p for p in REPO.rglob("*.py") if not any(
        part.startswith((".", "out")) or part in ("data", "tests")
        for part in p.relative_to(REPO).parts)]
    for path in files:
        found = words.search(path.read_text())
        assert not found, f"{path.relative_to(REPO)}: {found[0]!r}"
