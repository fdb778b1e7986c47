"""_core.pyi against the built shardloop._core: the same names, both ways.

Every name of the module and every member a type defines itself (methods,
attributes, properties; dunders aside, since the stubs spell only the ones
type checkers need) must have a stub, and every stub must name something
that exists: a binding added without a stub, or a stub left behind by a
removed binding, fails here. The .pyi is read from the source tree, parsed
with ``ast`` (never imported: it is not valid at run time)."""

import ast
import inspect
import os

import pytest

from _support import SHARDLOOP_IMPORT_ERROR

STUBS = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir,
                     "python_pkg", "shardloop", "_core.pyi")


def _is_dunder(name):
    return name.startswith("__") and name.endswith("__")


def _defined_names(body):
    """Names a module or class body of the .pyi defines."""
    names = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return {n for n in names if not _is_dunder(n)}


def _stubs():
    with open(STUBS, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=STUBS)
    classes = {node.name: _defined_names(node.body) for node in tree.body if isinstance(node, ast.ClassDef)}
    # Imports are the stub's own tools, not names of the module.
    return _defined_names(tree.body), classes


@pytest.fixture(scope="module")
def core():
    if SHARDLOOP_IMPORT_ERROR is not None:
        pytest.fail("import shardloop failed: %r" % (SHARDLOOP_IMPORT_ERROR,))
    from shardloop import _core
    return _core


def test_every_module_name_has_a_stub_and_every_stub_a_name(core):
    module_names, _ = _stubs()
    actual = {n for n in dir(core) if not _is_dunder(n)}
    assert sorted(actual - module_names) == [], "names of _core without a stub in _core.pyi"
    assert sorted(module_names - actual) == [], "stubs in _core.pyi for names _core lacks"


def test_every_member_of_each_type_has_a_stub_and_every_stub_a_member(core):
    _, classes = _stubs()
    types = {n: v for n, v in vars(core).items() if inspect.isclass(v) and not _is_dunder(n)}
    assert sorted(types) == sorted(classes)
    problems = []
    for name, cls in sorted(types.items()):
        # What the type defines itself: inherited members are stubbed on the
        # base (TimerHandle's on Handle), as in the extension.
        actual = {n for n in vars(cls) if not _is_dunder(n)}
        stubbed = classes[name]
        problems += [f"{name}.{n}: no stub" for n in sorted(actual - stubbed)]
        problems += [f"{name}.{n}: stub of a missing member" for n in sorted(stubbed - actual)]
    assert problems == []

