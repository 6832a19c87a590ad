"""Plan of a code verdict and the folding of trusted test expressions (host only).

`Plan` is what the host keeps for one verdict: the steps the sandbox runs and the checks
(expected values) that never leave the host. `fold(node, env)` evaluates a literal/pure
expression of the trusted tests — constants, containers, arithmetic, comparisons,
subscripts, comprehensions, a fixed set of pure builtins (SAFE_CALLS) and of `math`
functions and constants (MATH_CALLS, MATH_CONSTANTS) — with bounds on
the size of every intermediate value (MAX_FOLD_ITEMS, MAX_FOLD_BITS), and raises
NotFoldable for anything else.

Does NOT: execute test code (no exec/eval), call anything outside SAFE_CALLS.
"""
from __future__ import annotations

import ast
import dataclasses
import operator

DEFAULT_REL_TOL = 1e-9        # numbers compare with math.isclose(rel_tol, abs_tol)
DEFAULT_ABS_TOL = 0.0
MAX_STEPS = 20_000            # steps one test file may expand to (loops unrolled)
MAX_FOLD_ITEMS = 100_000      # elements a folded value may have
MAX_FOLD_BITS = 100_000       # bits a folded integer may have
MAX_TESTS_CHARS = 1 << 20


class PlanError(ValueError):
    """Tests that cannot be turned into a plan (bad format, too large)."""


class NotFoldable(Exception):
    pass


@dataclasses.dataclass
class Plan:
    kind: str                                   # "tests" (calls) or "io" (stdin/stdout)
    steps: list[dict]                           # what the sandbox runs, in order
    checks: dict[int, dict]                     # step index -> check spec (host only)
    attested: int = 0                           # asserts that run inside the sandbox
    const_fail: bool = False                    # the tests assert a false constant

    def counts(self) -> dict:
        n = [c["strength"] for c in self.checks.values()]
        return {"checks": len(n), "hidden_checks": n.count("hidden"),
                "visible_checks": n.count("visible"), "guessable_checks": n.count("guessable"),
                "attested_asserts": self.attested}


# ----------------------------------------------------------------------------- folding

def _range(*a):
    r = range(*a)
    if len(r) > MAX_FOLD_ITEMS:
        raise NotFoldable
    return list(r)


SAFE_CALLS = {"len": len, "sorted": sorted, "list": list, "tuple": tuple, "set": set,
              "frozenset": frozenset, "dict": dict, "sum": sum, "min": min, "max": max,
              "abs": abs, "round": round, "int": int, "float": float, "str": str, "bool": bool,
              "complex": complex, "chr": chr, "ord": ord, "range": _range,
              "reversed": lambda x: list(reversed(x)), "zip": lambda *a: list(zip(*a)),
              "enumerate": lambda *a: list(enumerate(*a))}
BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
          ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
          ast.Pow: operator.pow, ast.LShift: operator.lshift, ast.RShift: operator.rshift,
          ast.BitAnd: operator.and_, ast.BitOr: operator.or_, ast.BitXor: operator.xor}
CMPOPS = {ast.Eq: "eq", ast.NotEq: "ne", ast.Lt: "lt", ast.LtE: "le", ast.Gt: "gt",
          ast.GtE: "ge", ast.In: "in", ast.NotIn: "notin", ast.Is: "is", ast.IsNot: "isnot"}
PYCMP = {"eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le,
         "gt": operator.gt, "ge": operator.ge, "in": lambda a, b: a in b,
         "notin": lambda a, b: a not in b, "is": operator.is_, "isnot": operator.is_not}
FLIP = {"eq": "eq", "ne": "ne", "lt": "gt", "le": "ge", "gt": "lt", "ge": "le",
        "in": "contains", "notin": "notcontains"}


def _factorial(n):
    if not isinstance(n, int) or n > 2000:
        raise NotFoldable
    return __import__("math").factorial(n)


MATH_CALLS = {name: getattr(__import__("math"), name) for name in (
    "sqrt", "exp", "log", "log2", "log10", "sin", "cos", "tan", "asin", "acos", "atan",
    "atan2", "hypot", "floor", "ceil", "fabs", "gcd", "lcm", "isqrt", "comb", "perm",
    "trunc", "degrees", "radians")}
MATH_CALLS["factorial"] = _factorial
MATH_CONSTANTS = {"pi", "e", "tau", "inf", "nan"}


def _math_attr(node, env):
    """`math.NAME` when `math` is the module (not rebound by the tests), else None."""
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id == "math" and "math" not in env):
        return node.attr
    return None


def _size_ok(v) -> bool:
    if isinstance(v, int) and not isinstance(v, bool):
        return v.bit_length() <= MAX_FOLD_BITS
    if isinstance(v, (str, bytes, list, tuple, set, frozenset, dict)):
        return len(v) <= MAX_FOLD_ITEMS
    return True


def _binop(op, a, b):
    if isinstance(op, (ast.Pow, ast.LShift)) and isinstance(a, int) and isinstance(b, int):
        if b > 0 and max(1, abs(a).bit_length()) * (b if isinstance(op, ast.Pow) else 1) + \
                (b if isinstance(op, ast.LShift) else 0) > MAX_FOLD_BITS:
            raise NotFoldable
    if isinstance(op, ast.Mult) and isinstance(b, int) and hasattr(a, "__len__") and len(a) * b > MAX_FOLD_ITEMS:
        raise NotFoldable
    if isinstance(op, ast.Mult) and isinstance(a, int) and hasattr(b, "__len__") and len(b) * a > MAX_FOLD_ITEMS:
        raise NotFoldable
    return BINOPS[type(op)](a, b)


def fold(node: ast.AST, env: dict):
    """Value of a literal/pure expression of trusted tests, or NotFoldable."""
    try:
        v = _fold1(node, env)
    except NotFoldable:
        raise
    except (ArithmeticError, TypeError, ValueError, KeyError, IndexError, RecursionError,
            MemoryError, AttributeError):
        raise NotFoldable from None
    if not _size_ok(v):
        raise NotFoldable
    return v


def _fold1(node, env):
    f = lambda n: fold(n, env)   # noqa: E731
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in env:
        return env[node.id]
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = []
        for e in node.elts:
            items.extend(f(e.value) if isinstance(e, ast.Starred) else [f(e)])
        return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {f(k): f(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp):
        v = f(node.operand)
        return {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_,
                ast.Invert: operator.invert}[type(node.op)](v)
    if isinstance(node, ast.BinOp) and type(node.op) in BINOPS:
        return _binop(node.op, f(node.left), f(node.right))
    if isinstance(node, ast.BoolOp):
        vals = [f(v) for v in node.values]
        return all(vals) if isinstance(node.op, ast.And) else any(vals)
    if isinstance(node, ast.Compare):
        left = f(node.left)
        for op, c in zip(node.ops, node.comparators):
            right = f(c)
            if not PYCMP[CMPOPS[type(op)]](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return f(node.body) if f(node.test) else f(node.orelse)
    if isinstance(node, ast.Subscript):
        s = node.slice
        idx = slice(*(None if p is None else f(p) for p in (s.lower, s.upper, s.step))) \
            if isinstance(s, ast.Slice) else f(s)
        return f(node.value)[idx]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in SAFE_CALLS and node.func.id not in env):
        args = [f(a) for a in node.args if not isinstance(a, ast.Starred)]
        if len(args) != len(node.args):
            raise NotFoldable
        return SAFE_CALLS[node.func.id](*args, **{k.arg: f(k.value) for k in node.keywords if k.arg})
    if _math_attr(node, env) in MATH_CONSTANTS:
        return getattr(__import__("math"), node.attr)
    if isinstance(node, ast.Call) and _math_attr(node.func, env) in MATH_CALLS and not node.keywords:
        args = [f(a) for a in node.args if not isinstance(a, ast.Starred)]
        if len(args) != len(node.args) or any(isinstance(a, int) and a.bit_length() > 4096 for a in args):
            raise NotFoldable
        return MATH_CALLS[node.func.attr](*args)
    if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp)) and len(node.generators) == 1:
        out = [f_elt for f_elt in _comp(node, env)]
        return set(out) if isinstance(node, ast.SetComp) else out
    raise NotFoldable


def _comp(node, env):
    gen = node.generators[0]
    if gen.is_async:
        raise NotFoldable
    out = []
    for item in fold(gen.iter, env):
        local = dict(env)
        bind(gen.target, item, local)
        if all(fold(c, local) for c in gen.ifs):
            out.append(fold(node.elt, local))
            if len(out) > MAX_FOLD_ITEMS:
                raise NotFoldable
    return out


def bind(target, value, env):
    """Assign `value` to a Name / Tuple-of-Names target in `env` (or NotFoldable)."""
    if isinstance(target, ast.Name):
        env[target.id] = value
        return
    if isinstance(target, (ast.Tuple, ast.List)) and all(isinstance(t, ast.Name) for t in target.elts):
        try:
            values = list(value)
        except TypeError:
            raise NotFoldable from None
        if len(values) != len(target.elts):
            raise NotFoldable
        for t, v in zip(target.elts, values):
            env[t.id] = v
        return
    raise NotFoldable


def stored_names(node) -> set[str]:
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            out.add(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            out.update((a.asname or a.name).split(".")[0] for a in n.names)
    return out


def loaded_names(node) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
