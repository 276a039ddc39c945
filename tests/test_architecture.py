"""The package's layers (ARCHITECTURE.md): imports point down only, there is no circle, and the library
never imports the study harness."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fer_lib"
LAYERS = {
    0: {"errors", "io", "progress", "environment", "metrics", "flags", "assets"},
    1: {"data", "models", "synthetic", "runtime"},
    2: {"plots"},
    3: {"train", "tune", "evaluate", "ensemble", "quantize", "chain", "smoothing", "tracking", "video", "predict", "stream",
        "export"},
    4: {"profiles", "report", "frontpage", "study"},
    5: {"cli"},
}
LAYER = {m: n for n, mods in LAYERS.items() for m in mods}
HARNESS = LAYERS[4] | LAYERS[5]


def imports() -> dict[str, set[str]]:
    """{module: the fer_lib modules it imports anywhere in its body, lazily or not}."""
    graph = {}
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem == "__init__":
            continue
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fer_lib."):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("fer_lib.")}
        graph[path.stem] = found - {"__version__", path.stem}
    return graph


def test_every_module_has_a_layer():
    assert set(imports()) == set(LAYER), "add the module to LAYERS here and to ARCHITECTURE.md"
    doc = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    missing = [m for m in LAYER if f"`{m}`" not in doc]
    assert not missing, f"ARCHITECTURE.md does not mention {missing}"


def test_imports_point_down():
    up = [f"{m} (layer {LAYER[m]}) imports {d} (layer {LAYER[d]})"
          for m, deps in imports().items() for d in deps if LAYER[d] > LAYER[m]]
    assert not up, up


def test_the_library_never_imports_the_harness():
    bad = [f"{m} imports {d}" for m, deps in imports().items() if m not in HARNESS for d in deps & HARNESS]
    assert not bad, bad


def test_no_import_circle():
    graph, state, cycles = imports(), {}, []

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles
