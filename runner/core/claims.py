"""Claims: the direction of a paper's effect, declared as data in a recipe and checked by core.

A recipe's ``claims:`` block maps a name to an expression over ``results.json``::

    claims:
      asr_down: "trained.asr < base.asr"
      guard_beats_base: 'systems["base+guard"].asr < systems.base.asr'

Expressions use dotted paths of identifiers, bracket-quoted segments for keys that are not identifiers
(``by_concurrency["10"].speedup``; an integer in brackets indexes a list), numbers, comparisons (chained
too), ``and``/``or``/``not``, ``+ - * /`` and ``abs``/``min``/``max``. They are parsed with :mod:`ast`
and walked over a whitelist of node types; nothing is ever passed to ``eval``. A claim that reads a
missing or null value, or a value of the wrong type, does not hold, and the reason is recorded.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runner.core.errors import ConfigError

Segment = str | int
PathT = tuple[Segment, ...]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FUNCS = {"abs": abs, "min": min, "max": max}
_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b}
_CMPOPS = {ast.Lt: lambda a, b: a < b, ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b,
           ast.GtE: lambda a, b: a >= b, ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b}
_ORDERING = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)


class _Fails(Exception):
    """A claim cannot be judged on these results (missing value, wrong type, division by zero)."""


@dataclass(frozen=True)
class Claim:
    """A parsed claim: its name, the expression text, the syntax tree and the result paths it reads."""

    name: str
    expression: str
    tree: ast.Expression
    paths: tuple[PathT, ...]


@dataclass(frozen=True)
class Verdict:
    """A claim judged on one run's results: whether it holds, the values it read, and why not."""

    holds: bool
    values: dict[str, Any]
    reason: str | None = None

    def as_dict(self, expression: str) -> dict[str, Any]:
        return {"expression": expression, "holds": self.holds, "values": self.values, "reason": self.reason}


# --------------------------------------------------------------------------- paths
def format_path(path: PathT) -> str:
    """``("systems", "base+guard", "asr")`` → ``systems["base+guard"].asr`` (the expression syntax)."""
    out = ""
    for i, seg in enumerate(path):
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif _NAME.match(seg):
            out += f".{seg}" if i else seg
        else:
            out += '["' + seg.replace("\\", "\\\\").replace('"', '\\"') + '"]'
    return out


def _as_path(node: ast.AST) -> PathT | None:
    """The path a Name/Attribute/Subscript chain denotes, or None if ``node`` is not a path."""
    if isinstance(node, ast.Name):
        return (node.id,)
    if isinstance(node, ast.Attribute):
        head = _as_path(node.value)
        return None if head is None else (*head, node.attr)
    if isinstance(node, ast.Subscript):
        head = _as_path(node.value)
        key = node.slice
        sign = 1
        if isinstance(key, ast.UnaryOp) and isinstance(key.op, ast.USub):  # curve[-1]
            key, sign = key.operand, -1
        if head is None or not isinstance(key, ast.Constant):
            return None
        if isinstance(key.value, str) and sign == 1:
            return (*head, key.value)
        if isinstance(key.value, int) and not isinstance(key.value, bool):
            return (*head, sign * key.value)
    return None


def lookup(results: Any, path: PathT) -> Any:
    """The value at ``path`` in ``results``; raises KeyError naming the path if it is absent."""
    node = results
    for seg in path:
        if isinstance(node, Mapping) and str(seg) in node:
            node = node[str(seg)]
        elif isinstance(node, list) and isinstance(seg, int) and -len(node) <= seg < len(node):
            node = node[seg]
        else:
            raise KeyError(format_path(path))
    return node


# --------------------------------------------------------------------------- parsing
def _check(node: ast.AST, claim: str, paths: list[PathT]) -> None:
    """Walk the tree, allowing only the claim language; collect the paths read."""
    path = _as_path(node)
    if path is not None:
        paths.append(path)
        return
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ConfigError(f"claim '{claim}': only numbers may appear as literals, got {node.value!r}")
        return
    if isinstance(node, ast.BoolOp):
        children = node.values
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub, ast.UAdd)):
        children = [node.operand]
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        children = [node.left, node.right]
    elif isinstance(node, ast.Compare) and all(type(op) in _CMPOPS for op in node.ops):
        children = [node.left, *node.comparators]
    elif isinstance(node, ast.Call):
        fname = node.func.id if isinstance(node.func, ast.Name) else None
        if fname not in _FUNCS or node.keywords or not node.args:
            raise ConfigError(f"claim '{claim}': only abs(), min() and max() may be called")
        if fname == "abs" and len(node.args) != 1:
            raise ConfigError(f"claim '{claim}': abs() takes one argument")
        children = node.args
    else:
        what = type(getattr(node, "op", node)).__name__
        raise ConfigError(f"claim '{claim}': '{what}' is not allowed (allowed: paths, numbers, comparisons, "
                          "and/or/not, + - * /, abs/min/max)")
    for child in children:
        _check(child, claim, paths)


def parse_claim(name: str, expression: Any) -> Claim:
    """Parse and check one claim; ConfigError naming the claim if it is not in the claim language."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"claim name {name!r} must be an identifier (letters, digits, _)")
    if not isinstance(expression, str) or not expression.strip():
        raise ConfigError(f"claim '{name}' must be a non-empty expression string, got {expression!r}")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ConfigError(f"claim '{name}': bad syntax in {expression!r} ({e.msg})") from None
    body = tree.body
    boolean = (isinstance(body, (ast.Compare, ast.BoolOp)) or _as_path(body) is not None
               or (isinstance(body, ast.UnaryOp) and isinstance(body.op, ast.Not)))
    if not boolean:
        raise ConfigError(f"claim '{name}': {expression!r} must be a comparison or a true/false value")
    paths: list[PathT] = []
    _check(body, name, paths)
    return Claim(name, expression.strip(), tree, tuple(dict.fromkeys(paths)))


def parse_claims(claims: Mapping[str, Any] | None) -> dict[str, Claim]:
    """Parse a ``claims:`` mapping (name → expression); ConfigError on the first bad one. A null expression
    withdraws a claim inherited from a parent recipe (``name: null``)."""
    if claims is None:
        return {}
    if not isinstance(claims, Mapping):
        raise ConfigError(f"claims must be a mapping of name → expression, got {type(claims).__name__}")
    return {str(k): parse_claim(k, v) for k, v in claims.items() if v is not None}


# --------------------------------------------------------------------------- evaluation
def _number(v: Any, what: str) -> float | int:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Fails(f"{what} is not a number ({v!r})")
    return v


def _truth(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        raise _Fails(f"{what} is not true/false ({v!r})")
    return v


def _eval(node: ast.AST, env: Mapping[PathT, Any]) -> Any:
    path = _as_path(node)
    if path is not None:
        return env[path]
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BoolOp):
        vals = [_truth(_eval(v, env), ast.unparse(v)) for v in node.values]
        return all(vals) if isinstance(node.op, ast.And) else any(vals)
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, env)
        if isinstance(node.op, ast.Not):
            return not _truth(v, ast.unparse(node.operand))
        v = _number(v, ast.unparse(node.operand))
        return -v if isinstance(node.op, ast.USub) else +v
    if isinstance(node, ast.BinOp):
        a = _number(_eval(node.left, env), ast.unparse(node.left))
        b = _number(_eval(node.right, env), ast.unparse(node.right))
        if isinstance(node.op, ast.Div) and b == 0:
            raise _Fails(f"division by zero in {ast.unparse(node)}")
        return _BINOPS[type(node.op)](a, b)
    if isinstance(node, ast.Compare):
        left, left_node = _eval(node.left, env), node.left
        for op, right_node in zip(node.ops, node.comparators):
            right = _eval(right_node, env)
            if isinstance(op, _ORDERING):
                _number(left, ast.unparse(left_node))
                _number(right, ast.unparse(right_node))
            if not _CMPOPS[type(op)](left, right):
                return False
            left, left_node = right, right_node
        return True
    if isinstance(node, ast.Call):
        args = [_number(_eval(a, env), ast.unparse(a)) for a in node.args]
        return _FUNCS[node.func.id](*args)  # type: ignore[union-attr]
    raise _Fails(f"cannot evaluate {ast.unparse(node)}")  # unreachable after parse_claim


def _read(results: Mapping[str, Any], path: PathT) -> Any:
    """A result value as the claim sees it: ``"inf"``/``"-inf"`` (how results.json stores them) as floats."""
    v = lookup(results, path)
    if isinstance(v, str) and v in ("inf", "-inf"):
        return math.inf if v == "inf" else -math.inf
    return v


def evaluate(claim: Claim, results: Mapping[str, Any]) -> Verdict:
    """Judge ``claim`` on ``results``. Every path is read first: a missing or null one means it does not hold."""
    env: dict[PathT, Any] = {}
    values: dict[str, Any] = {}
    missing: list[str] = []
    for path in claim.paths:
        key = format_path(path)
        try:
            env[path] = _read(results, path)
        except KeyError:
            values[key] = None
            missing.append(f"{key} is missing")
            continue
        v = env[path]
        values[key] = v if not isinstance(v, (Mapping, list)) else f"<{type(v).__name__} of {len(v)}>"
        if v is None:
            missing.append(f"{key} is null")
    if missing:
        return Verdict(False, values, "; ".join(missing))
    try:
        outcome = _eval(claim.tree.body, env)
    except _Fails as e:
        return Verdict(False, values, str(e))
    if not isinstance(outcome, bool):
        return Verdict(False, values, f"the expression gave {outcome!r}, not true/false")
    return Verdict(outcome, values, None)


def evaluate_claims(claims: Mapping[str, Any] | None, results: Mapping[str, Any]
                    ) -> tuple[dict[str, bool], dict[str, dict[str, Any]]]:
    """Judge every claim: ``({name: holds}, {name: {expression, holds, values, reason}})``."""
    holds: dict[str, bool] = {}
    info: dict[str, dict[str, Any]] = {}
    for name, claim in parse_claims(claims).items():
        verdict = evaluate(claim, results)
        holds[name] = verdict.holds
        info[name] = verdict.as_dict(claim.expression)
    return holds, info


def claims_markdown(info: Mapping[str, Mapping[str, Any]]) -> str:
    """The claims table of a run's ``summary.md``: name, expression, the values read, holds."""
    from runner.core.report import fmt_value, markdown_table

    rows = []
    for name, c in info.items():
        read = ", ".join(f"{k} = {fmt_value(v)}" for k, v in c["values"].items())
        holds = "yes" if c["holds"] else "**no**" + (f" ({c['reason']})" if c.get("reason") else "")
        rows.append({"claim": name, "expression": f"`{c['expression']}`", "values read": read, "holds": holds})
    return markdown_table(rows, ["claim", "expression", "values read", "holds"])
