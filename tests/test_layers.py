"""Which way the imports go (README: Layout), read from the source files: nothing here imports TensorFlow.

Three layers: the graph (nst_model's modules but its programs) imports nothing of the others; the run
layer (nst_client's host-side modules: the chunk loop, images, errors, progress, settings, ...) imports
neither the graph nor a program, reaching a model only through its signatures; the programs sit on
both, and none imports another program's command-line module.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

from nst_client import chunked, contract

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = {"nst_model": "nst_model", "nst_client": "client", "nst_export": "export", "nst_devserver": "devserver"}
# The programs among the packages' modules; each package's other modules are its library.
PROGRAMS = {
    "nst_model",  # its __init__: nst_model.load and the Python API, from runner
    "nst_model.runner",
    "nst_model.cli",
    "nst_client",  # its __init__: NSTClient and RestClient, loaded on first use
    "nst_client.cli",
    "nst_client.grpc_client",
    "nst_client.rest_client",
}
CLI_MODULES = {"nst_model.cli", "nst_client.cli", "nst_export.cli", "nst_devserver.server"}


def module_name(path: pathlib.Path) -> str:
    for package, folder in PACKAGES.items():
        if path.parent == ROOT / folder:
            return package if path.stem == "__init__" else f"{package}.{path.stem}"
    return str(path.relative_to(ROOT).with_suffix("")).replace("/", ".")  # benchmarks, scripts


def sources() -> dict[str, pathlib.Path]:
    folders = [*PACKAGES.values(), "benchmarks", "scripts"]
    return {module_name(path): path for folder in folders for path in sorted((ROOT / folder).glob("*.py"))}


SOURCES = sources()


def imports(module: str) -> set[str]:
    """Every module `module` imports, at its top, in functions or for type checking alone."""
    path = SOURCES[module]
    package = module if path.stem == "__init__" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([package, *([node.module] if node.module else [])])
            for alias in node.names:  # `from package import module` imports the module
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in SOURCES else base)
    return found


def layer(module: str) -> str:
    top = module.partition(".")[0]
    if module in PROGRAMS or top in ("nst_export", "nst_devserver") or top not in PACKAGES:
        return "program"
    return {"nst_model": "graph", "nst_client": "run"}[top]


def within(name: str, modules: set[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def test_the_layout_is_read_whole():
    assert {layer(m) for m in SOURCES} == {"graph", "run", "program"}
    assert {"nst_model.model", "nst_model.signatures", "nst_client.chunked", "nst_client.quiet"} <= set(SOURCES)
    assert "nst_client.quiet" in imports("nst_export.cli")  # the resolution of relative and `from` imports
    assert "nst_client.chunked" in imports("nst_client.flags")


@pytest.mark.parametrize("module", [m for m in SOURCES if layer(m) == "graph"])
def test_the_graph_imports_nothing_above_it(module):
    above = {"nst_client", "nst_export", "nst_devserver", *(p for p in PROGRAMS if p.startswith("nst_model."))}
    assert not [name for name in imports(module) if within(name, above)]


@pytest.mark.parametrize("module", [m for m in SOURCES if layer(m) == "run"])
def test_the_run_layer_imports_neither_the_graph_nor_a_program(module):
    other = {"nst_model", "nst_export", "nst_devserver", *(p for p in PROGRAMS if p.startswith("nst_client."))}
    assert not [name for name in imports(module) if within(name, other)]


@pytest.mark.parametrize("module", list(SOURCES))
def test_no_program_imports_another_programs_command_line(module):
    others = {cli for cli in CLI_MODULES if cli.partition(".")[0] != module.partition(".")[0]}
    assert not [name for name in imports(module) if within(name, others)]


def test_the_client_imports_no_model_code():
    """nst_client, programs included, talks to a model through its signatures only."""
    client = [m for m in SOURCES if m.partition(".")[0] == "nst_client"]
    assert not [(m, n) for m in client for n in imports(m) if within(n, {"nst_model", "nst_export", "nst_devserver"})]


def test_the_client_names_signatures_the_graph_defines():
    """Each signature the client calls is a method `_<name>` of the graph's Servable."""
    tree = ast.parse((ROOT / "nst_model" / "signatures.py").read_text())
    servable = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Servable")
    methods = {f.name for f in servable.body if isinstance(f, ast.FunctionDef)}
    for signature in (chunked.SERVING_DEFAULT, chunked.PIXELS, chunked.DECODE, contract.LIMITS):
        assert f"_{signature}" in methods
