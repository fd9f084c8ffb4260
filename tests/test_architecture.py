"""The package's shape: imports point one way, and a new source or method is one small registration."""
import ast
import dataclasses
from pathlib import Path

import pytest
import torch

import calib_lib

PACKAGE = Path(calib_lib.__file__).parent

# Lower layers never import higher ones (same rank: allowed). models < data < compress < evaluate < runs
# < study, export < findings, notebooks, explore < cli; the shared helpers (errors, registry, paths, files, net, fetch) are
# below all.
RANK = {"errors": 0, "registry": 0, "paths": 0, "files": 0, "net": 0, "fetch": 0, "models": 1, "data": 2,
        "compress": 3, "evaluate": 4, "runs": 5, "stats": 5, "power": 5, "plots": 5, "study": 6, "export": 6,
        "findings": 7, "notebooks": 7, "explore": 7, "cli": 8, "__init__": 9}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_package(module: str) -> bool:
    return (PACKAGE.parent / Path(*module.split(".")) / "__init__.py").is_file()


def _exists(module: str) -> bool:
    base = PACKAGE.parent / Path(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    """Module -> calib_lib modules it imports, anywhere in the file (function-level imports count too)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                # `from pkg import submodule` is an edge to the submodule, `from mod import name` to mod
                targets = [f"{target}.{a.name}" if _exists(f"{target}.{a.name}") else target for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t == "calib_lib" or t.startswith("calib_lib.")}
        graph[module] = edges - {module}
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, int] = {}          # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_layers_point_one_way():
    bad = []
    for module, edges in import_graph().items():
        for target in edges:
            if RANK[_layer(target)] > RANK[_layer(module)]:
                bad.append(f"{module} imports {target}")
    assert not bad, "imports that point up: " + "; ".join(sorted(bad))
    assert "calib_lib.runs.store" not in {t for m, e in import_graph().items() if _layer(m) in
                                         ("data", "compress", "evaluate", "models") for t in e}


def test_duplicate_registration_names_both():
    from calib_lib.data.sources import RandomVocabSource, register
    with pytest.raises(ValueError, match=r"'news' registered twice: CorpusSource.*RandomVocabSource"):
        register(RandomVocabSource("news", "x", "y"))
    from calib_lib.compress.methods.base import Method, register as register_method
    with pytest.raises(ValueError, match="'wanda' registered twice"):
        register_method(type("Twice", (Method,), {"name": "wanda"}))


# -- a throwaway source and a throwaway method, each in a few lines, through the whole path ----------------

def test_throwaway_source_and_method_run_end_to_end(tmp_path):
    from calib_lib.compress import METHODS
    from calib_lib.compress.methods.base import LayerCompressor, Method, register as register_method
    from calib_lib.data.registry import SOURCES
    from calib_lib.data.sources import Source, register
    from calib_lib.runs import Store, parse_spec, run_specs

    @dataclasses.dataclass(frozen=True)
    class RepeatedToken(Source):                      # every sample is one token over and over
        synthetic = True

        def availability(self):
            return True, "synthetic"

        def build(self, spec, tokenizer, model=None, *, progress=True):
            ids = torch.full((spec.num_samples, spec.seq_len), 5 + spec.set_index)
            return self.result(spec, tokenizer, ids, "synthetic:repeated token")

    class HalveCompressor(LayerCompressor):          # statistics: rows seen; solve: halve the weights
        seen = 0

        def add_batch(self, inp):
            self.seen += inp.shape[0]

        def share_statistics(self, leader):
            self.seen = leader.seen

        def solve(self):
            self.layer.weight.data.mul_(0.5)
            return {"batches_seen": self.seen}

    @register_method
    @dataclasses.dataclass
    class Halve(Method):
        name = "halve-test"
        family = "pruning"
        layer_compressor = HalveCompressor

    register(RepeatedToken("repeated-test", "synthetic", "one token repeated"))
    try:
        spec = parse_spec({"model": "tiny-llama", "method": "halve-test", "eval": {"ppl_texts": ["news"],
                           "ppl_windows": 1, "ppl_seq_len": 32},
                           "calibration": {"source": "repeated-test", "num_samples": 2, "seq_len": 16}})
        assert spec.versions()["source"] == 1 and spec.versions()["method"] == 1
        assert spec.label() == "tiny-llama halve-test repeated-test/2x16/set0"
        store = Store(tmp_path / "s.sqlite")
        summary = run_specs([spec], store, progress=False)
        assert summary["done"] == 1, store.get(spec.key).get("error")
        record = store.get(spec.key)
        assert record["calibration_origin"] == "synthetic:repeated token" and record["metrics"]
        assert run_specs([spec], store, progress=False)["cached"] == 1
    finally:
        SOURCES.remove("repeated-test")
        METHODS.remove("halve-test")
