"""The product's size limits: no module over 400 lines, no function over 60 (services/ and
operator/)."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from support.paths import REPO

MODULE_LINES = 400
FUNCTION_LINES = 60
PRODUCT = (REPO / "services", REPO / "operator")


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, int]]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            assert node.end_lineno is not None
            yield f"{prefix}{node.name}", node.end_lineno - first + 1
            yield from _functions(node, f"{prefix}{node.name}.")


def too_long() -> dict[str, int]:
    found: dict[str, int] = {}
    for root in PRODUCT:
        for path in sorted(root.rglob("*.py")):
            text = path.read_text()
            name = path.relative_to(REPO).as_posix()
            lines = len(text.splitlines())
            if lines > MODULE_LINES:
                found[name] = lines
            for function, length in _functions(ast.parse(text)):
                if length > FUNCTION_LINES:
                    found[f"{name}:{function}"] = length
    return found


def test_no_module_or_function_over_the_limits() -> None:
    over = too_long()
    assert not over, f"over {MODULE_LINES} lines per module / {FUNCTION_LINES} per function: {over}"


def test_the_measure_counts_nested_functions_and_methods() -> None:
    body = "\n".join(f"            x{i} = {i}" for i in range(FUNCTION_LINES))
    tree = ast.parse(f"class A:\n    def m(self):\n        def inner():\n{body}\n")
    sizes = dict(_functions(tree))
    assert sizes["A.m.inner"] == FUNCTION_LINES + 1
    assert sizes["A.m"] == FUNCTION_LINES + 2
