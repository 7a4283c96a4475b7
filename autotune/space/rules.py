"""Rules between knobs (``max_num_batched_tokens >= max_num_seqs``): small arithmetic comparisons.

Parsed with ``ast`` and evaluated by a walker that knows only numbers, names,
``+ - * /`` and comparisons, so a rule in a YAML file can never run code.
"""

from __future__ import annotations

import ast
import operator
from typing import Any, Mapping

from autotune.errors import UserError

__all__ = ["parse_rule", "rule_holds", "rule_names"]

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_CMPOPS = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
    ast.GtE: operator.ge, ast.Eq: operator.eq, ast.NotEq: operator.ne,
}


def parse_rule(rule: str) -> ast.expr:
    try:
        tree = ast.parse(rule, mode="eval").body
    except SyntaxError:
        raise UserError(f"bad rule {rule!r}: not an arithmetic comparison") from None
    for node in ast.walk(tree):
        if not isinstance(
            node, (ast.Compare, ast.BinOp, ast.Name, ast.Constant, ast.Load, *_BINOPS, *_CMPOPS)
        ):
            raise UserError(f"bad rule {rule!r}: {type(node).__name__} is not allowed")
    if not isinstance(tree, ast.Compare):
        raise UserError(f"bad rule {rule!r}: must compare two expressions")
    return tree


def rule_names(rule: str) -> set[str]:
    return {n.id for n in ast.walk(parse_rule(rule)) if isinstance(n, ast.Name)}


def _evaluate(node: ast.expr, scope: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return scope[node.id]
    if isinstance(node, ast.BinOp):
        return _BINOPS[type(node.op)](_evaluate(node.left, scope), _evaluate(node.right, scope))
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, scope)
        for op, comp in zip(node.ops, node.comparators):
            right = _evaluate(comp, scope)
            if not _CMPOPS[type(op)](left, right):
                return False
            left = right
        return True
    raise TypeError(type(node).__name__)


def rule_holds(rule: str, scope: Mapping[str, Any]) -> bool:
    """Whether ``rule`` holds for these values (every name it uses must be in ``scope``)."""
    return bool(_evaluate(parse_rule(rule), scope))
