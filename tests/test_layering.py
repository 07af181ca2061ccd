"""The package's layering: no import cycles, and no module importing a layer above its own.

nn <- models <- data <- train <- experiments; export (deployment formats) depends only on nn, models and
the small safetensors I/O module. The check reads every module's imports from its syntax tree, including
the lazy imports inside functions, so an import hidden in a function body counts like any other.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "onebit"

_CORE = {"errors", "atomic", "cache", "cpus", "rundir", "nn", "models", "safetensors_io", "onebit"}  # "onebit": the package's public names
# layer -> the layers its modules may import (besides their own layer)
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "atomic": set(),
    "cache": set(),
    "cpus": set(),
    "rundir": {"errors", "atomic"},
    "nn": {"errors"},
    "models": {"errors", "nn"},
    "safetensors_io": {"errors", "atomic"},
    "onebit": {"nn", "models"},
    "data": {"errors", "nn", "models"},
    "export": {"errors", "atomic", "rundir", "nn", "models", "safetensors_io"},
    "reference": {"errors", "nn", "models"},
    "train": _CORE | {"data", "export", "reference"},   # a distillation teacher may be a packed or released model
    "presets": _CORE | {"data", "train"},
    "loading": _CORE | {"export", "train"},
    "experiments": _CORE | {"data", "train", "presets"},
    "runtime": _CORE | {"export", "loading"},
    "bench": _CORE | {"data", "export", "loading", "train"},
    "commands": _CORE | {"data", "train", "presets", "experiments", "export", "reference", "loading",
                         "runtime", "bench"},
    "cli": {"onebit", "errors", "commands"},
    "__main__": {"cli"},
}


def module_name(path: Path, root: Path) -> str:
    parts = (root.name, *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its body (module level or inside functions)."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:                       # relative import
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        own = layer(module)
        if own not in ALLOWED:
            bad.append(f"{module}: layer {own!r} is not in the layering (add it to ALLOWED)")
            continue
        bad += [f"{module} imports {t}" for t in sorted(targets)
                if layer(t) != own and layer(t) not in ALLOWED[own]]
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_onebit_has_no_import_cycles():
    assert cycles(import_graph(PACKAGE)) == []


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports(import_graph(PACKAGE)) == []


def test_the_check_sees_cycles_and_upward_imports_in_function_bodies(tmp_path):
    root = tmp_path / "onebit"
    for folder in ("nn", "train"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "nn" / "layers.py").write_text("def f():\n    from onebit.train.loop import g\n")
    (root / "train" / "loop.py").write_text("from onebit.nn import layers\n\ndef g():\n    pass\n")
    (root / "train" / "step.py").write_text("from . import loop\n")
    graph = import_graph(root)
    assert graph["onebit.nn.layers"] == {"onebit.train.loop"}
    assert graph["onebit.train.step"] == {"onebit.train.loop"}
    assert cycles(graph) == [["onebit.nn.layers", "onebit.train.loop"]]
    assert upward_imports(graph) == ["onebit.nn.layers imports onebit.train.loop"]


def test_programs_outside_the_package_use_the_package_homes():
    """Programs outside the package are few and named here: every benchmark is ``onebit bench NAME``
    (onebit/bench/), and the scripts take the optimizer from onebit.train.optimizer and the splits from
    onebit.data.splits, never from the training loop's module (which only runs training)."""
    root = PACKAGE.parents[1]
    programs = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                      if p.relative_to(root).parts[0] not in ("src", "tests", "runs")
                      and not any(part.startswith(".") for part in p.relative_to(root).parts))
    assert programs == ["scripts/gpu-check/gpu_check.py", "scripts/gpu-check/gpu_data.py"]   # the GPU check
    offenders = []
    for path in sorted((root / "scripts").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module == "onebit.train.loop":
                used = {a.name for a in node.names} - {"train", "Trainer"}
                if used:
                    offenders.append(f"{path.relative_to(root)} imports {sorted(used)} from onebit.train.loop")
    assert offenders == []


def test_model_names_have_one_parser():
    """``wrn-D-K[-bn]`` is parsed in one place (onebit.models.config.parse_model_name)."""
    sources = {p: p.read_text() for p in PACKAGE.rglob("*.py")}
    parsers = [str(p.relative_to(PACKAGE)) for p, text in sources.items() if 'r"wrn-(' in text]
    assert parsers == ["models/config.py"]


def test_each_fact_has_one_owner():
    """The C export's description file, the dataset a model's shape implies, the atomic write, the class
    counts and the usable CPUs are each written in one place."""
    sources = {p: p.read_text() for p in PACKAGE.rglob("*.py")}
    named = [p.relative_to(PACKAGE) for p, text in sources.items() if '"onebit_model.json"' in text]
    assert [str(p) for p in named] == ["export/c_contract.py"]
    guesses = [p.relative_to(PACKAGE) for p, text in sources.items() if '"cifar100" if' in text]
    assert [str(p) for p in guesses] == ["models/config.py"]
    writers = [p.relative_to(PACKAGE) for p, text in sources.items() if "def atomic_output" in text]
    assert [str(p) for p in writers] == ["atomic.py"]
    counts = [str(p.relative_to(PACKAGE)) for p, text in sources.items()
              if re.search(r'"num_classes": 10\b|"imagenet": 1000|"cifar100": 100\b', text)]
    assert counts == ["data/datasets.py"]                      # every dataset's class count
    cpu_counts = [str(p.relative_to(PACKAGE)) for p, text in sources.items()
                  if "sched_getaffinity" in text or "os.cpu_count()" in text]
    assert cpu_counts == ["cpus.py"]                           # the CPUs this process may use


def test_only_export_builds_c():
    """Every compile goes through the exported Makefile (onebit.export.c_build): outside export/, no code
    names a compiler, a compiler flag or make (docstrings aside)."""
    flag = re.compile(r"^(-std=|-march=|-mcpu=|-mavx|-mfma|-O[0-3s]$|-fPIC$|-shared$)")
    tools = {"make", "cc", "gcc", "clang", "arm-none-eabi-gcc", "aarch64-linux-gnu-gcc"}
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] == "export":
            continue
        tree = ast.parse(path.read_text(), str(path))
        docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and (flag.match(node.value) or node.value in tools)):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
    assert offenders == []


def test_ci_installs_the_toolchains_the_targets_name():
    """export/targets.py owns the Debian package list; .ci/run (which runs before Python has onebit's
    dependencies) repeats it, and must repeat it exactly."""
    from onebit.export.targets import TARGETS

    wanted = {p for t in TARGETS.values() for p in t.packages}
    ci = (PACKAGE.parents[1] / ".ci" / "run").read_text()
    install = re.search(r"apt-get install -y -qq ([^>]*)>", ci).group(1)
    assert set(install.replace("\\", " ").split()) == wanted
