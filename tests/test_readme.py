"""README.md's concept map names a function and a test for every concept: check that they exist,
so the map cannot drift away from the code."""

import ast
import importlib
import re
from pathlib import Path

REPO = Path(__file__).parents[1]
CONCEPTS = ["causal vs masked LM", "15% chosen, 80/10/10", "next-token shift and `ignore_index`",
            "BPE tokenization", "end-of-text token", "memory-mapped token files", "weight init",
            "decoupled weight decay", "warmup", "gradient clipping",
            "mixed precision and loss scaling", "gradient accumulation", "checkpointing",
            "monitoring", "data-parallel training", "activation (gradient) checkpointing",
            "perplexity", "sampling", "cleaning and filtering", "deduplication",
            "Hugging Face model format", "fully sharded data parallel"]


def concept_map():
    text = (REPO / "README.md").read_text()
    table = text.split("## Concept map")[1].split("\n## ")[0]
    rows = [line.split(" | ") for line in table.splitlines()
            if line.startswith("| ") and "---" not in line][1:]
    return [(concept.strip("| "), re.findall(r"`([^`]+)`", where), re.findall(r"`([^`]+)`", tests))
            for concept, where, tests in rows]


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


def test_the_layout_table_lists_every_module_with_its_real_imports():
    text = (REPO / "README.md").read_text()
    text = text.split("## How the code is laid out")[1].split("\n## ")[0]
    listed = {m[1]: set() if m[2] == "none" else set(m[2].split(", "))
              for m in re.finditer(r"^\| `(\w+)\.py` \| .+ \| ([\w, ]+) \|$", text, re.M)}
    modules = {path.stem for path in REPO.glob("*.py")}
    assert set(listed) == modules
    for name in modules:
        imported = set()
        for node in ast.walk(ast.parse((REPO / f"{name}.py").read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
        assert listed[name] == imported & modules, name
