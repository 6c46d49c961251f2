"""The package's layers import one way: run / serve -> demo_model / bench -> profiling / testing -> runtime ->
keep_plan -> methods / native -> profile -> reference (README, "Folder map"). Parsed with ast, imports inside functions included."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "audiokv_edge"

#: layer of each top-level entry of audiokv_edge/ -> rank; a module may import only layers of a lower rank, or its
#: own layer. methods/ and native/ share a rank and must not import each other.
RANKS = {"reference": 0, "profile": 1, "methods": 2, "native": 2, "keep_plan": 3, "runtime": 4,
         "profiling": 5, "testing": 5, "demo_model": 6, "bench": 6, "run": 7, "serve": 7, "__main__": 8}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "audiokv_edge" else None


def imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (use absolute audiokv_edge.* imports)"
            if node.module == "audiokv_edge":
                found.update(f"audiokv_edge.{a.name}" for a in node.names if a.name != "__version__")
            elif node.module:
                found.add(node.module)
    return found


def test_every_module_belongs_to_a_layer():
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue
        top = rel.parts[0].removesuffix(".py")
        assert top in RANKS, f"audiokv_edge/{rel}: not in a layer of tests/test_layout.py (and the README map)"


def test_imports_point_down():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue
        mine = rel.parts[0].removesuffix(".py")
        for target in imports(path):
            theirs = layer_of(target)
            if theirs is None or theirs == mine:
                continue
            if RANKS[theirs] >= RANKS[mine]:
                wrong.append(f"audiokv_edge/{rel} ({mine}) imports {target} ({theirs})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_readme_folder_map_matches_the_tree():
    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme.split("## Folder map", 1)[1].split("\n## ", 1)[0]
    entries = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    entries += [p.name + "/" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()]
    for name in sorted(entries):
        assert name in section, f"the README's folder map does not mention audiokv_edge/{name}"
    for path in PACKAGE.rglob("*.py"):  # every module of a layer is named in its line
        if path.parent != PACKAGE and path.name != "__init__.py":
            assert path.stem in section, f"the README's folder map does not mention {path.relative_to(PACKAGE)}"
