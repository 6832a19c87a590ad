"""Convert trusted Python assert tests into sandbox steps + host-side checks (host only).

`Converter(tol).run(code)` walks the test module statement by statement, keeping an
environment of names whose values it could fold on the host (sandbox_plan.fold):
  * `x = <foldable>` (also tuple targets, `+=` and annotated assignments) binds x here;
  * `for t in <foldable>:` is unrolled (no break/continue/else); `if <foldable>:` takes
    its branch (`__name__` is "__main__");
  * a top-level `def f(p, ...)` whose only uses are statements `f(a, ...)` is inlined
    (HumanEval's `def check(candidate)` + `check(fn)`): foldable arguments bind here,
    others are bound in the sandbox by a setup step `p = a`;
  * `assert` becomes one check per `and`-ed term, `all(...)` item and link of a chained
    comparison (see sandbox_tests.py for the kinds);
  * a `unittest.TestCase` class whose test methods use `self` only in `self.assertX(...)`
    is inlined as plain asserts (methods in alphabetical order) and `unittest.main()`
    dropped; a class with setUp, attributes or other uses of `self` runs in the sandbox,
    through a runner that raises unless every test ran and passed (attested);
  * every other statement (imports, defs, classes, while, try, ...) runs in the sandbox
    as an `exec` setup step, with the folded names it reads bound first (which reveals
    them: a hidden check whose expected value IS a revealed variable, an item of one, or
    was taken (by assignment or loop) from data that was revealed becomes visible), and
    every assert inside it counts as attested.
Steps that evaluate an expression bind the folded names they read as inputs; from then
on those names live in the sandbox (a solution that mutates an input list is checked
against the mutated list, as plain Python would). `math.<fn>(literal)` folds here.

Does NOT: run anything; guess what a non-foldable expected value would be; follow aliases.
Another folded name that shares a list, dict or set with an input handed to the sandbox
(`for c in cases: f(c)`, then `assert cases == [...]`) keeps its host copy, which is folded
as if the solution had not touched the shared object: a solution that mutates its input
passes an "inputs unchanged" assert written that way, and a correct in-place function
fails one that expects the change (the red-team corpus found both; the plan is static, so
following them would need the sandbox to hold every alias, which would reveal the case
tables that keep most checks hidden). Write such checks on the argument itself.
"""
from __future__ import annotations

import ast

from verifiers.sandbox_plan import (CMPOPS, FLIP, MAX_STEPS, NotFoldable, Plan, PlanError,
                                    bind, fold, loaded_names, stored_names)
from verifiers.sandbox_verdict import encode_value

MAX_INLINE_DEPTH = 16       # nested inlining of test helpers
STRONG_OPS = ("eq", "ne", "lt", "le", "gt", "ge", "in", "notin", "contains", "notcontains")
TYPE_NAMES = ("int", "float", "complex", "bool", "str", "bytes", "list", "tuple", "dict", "set", "frozenset")


UNITTEST_ASSERTS = {          # self.assertX(a, b) -> assert a OP b
    "assertEqual": ast.Eq, "assertEquals": ast.Eq, "assertListEqual": ast.Eq,
    "assertTupleEqual": ast.Eq, "assertDictEqual": ast.Eq, "assertSetEqual": ast.Eq,
    "assertSequenceEqual": ast.Eq, "assertNotEqual": ast.NotEq, "assertIs": ast.Is,
    "assertIsNot": ast.IsNot, "assertIn": ast.In, "assertNotIn": ast.NotIn,
    "assertGreater": ast.Gt, "assertGreaterEqual": ast.GtE, "assertLess": ast.Lt,
    "assertLessEqual": ast.LtE}


UNITTEST_RUNNER = ("__scca_run = __import__('unittest').main(module='__main__', argv=['tests'], "
                   "exit=False, verbosity=0)\n"
                   "if not (__scca_run.result.wasSuccessful() and __scca_run.result.testsRun > 0):\n"
                   "    raise AssertionError('unittest: a test failed or none ran')\n")


def _attested_count(node: ast.AST) -> int:
    """Asserts (and unittest assert/fail calls) inside a statement run in the sandbox."""
    return sum(isinstance(x, ast.Assert) or isinstance(x, ast.Call) and isinstance(x.func, ast.Attribute)
               and x.func.attr.startswith(("assert", "fail")) for x in ast.walk(node))


def _unittest_assert(call: ast.Call) -> ast.expr | None:
    """The plain assert expression of `self.assertX(...)`, or None."""
    f, a = call.func, call.args
    if not (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "self"):
        return None
    kw = {k.arg: k.value for k in call.keywords if k.arg != "msg"}
    if f.attr in UNITTEST_ASSERTS and len(a) >= 2 and not kw:
        return ast.Compare(a[0], [UNITTEST_ASSERTS[f.attr]()], [a[1]])
    if f.attr in ("assertTrue", "assertFalse", "assertIsNone", "assertIsNotNone") and a and not kw:
        return {"assertTrue": a[0], "assertFalse": ast.UnaryOp(ast.Not(), a[0]),
                "assertIsNone": ast.Compare(a[0], [ast.Is()], [ast.Constant(None)]),
                "assertIsNotNone": ast.Compare(a[0], [ast.IsNot()], [ast.Constant(None)])}[f.attr]
    if f.attr == "assertAlmostEqual" and len(a) == 2 and set(kw) <= {"places", "delta"}:
        tol = kw.get("delta") or ast.BinOp(ast.Constant(0.5), ast.Mult(), ast.BinOp(
            ast.Constant(10.0), ast.Pow(), ast.UnaryOp(ast.USub(), kw.get("places", ast.Constant(7)))))
        diff = ast.Call(ast.Name("abs", ast.Load()), [ast.BinOp(a[0], ast.Sub(), a[1])], [])
        return ast.Compare(diff, [ast.LtE()], [tol])
    return None


def _unittest_to_asserts(tree: ast.Module) -> ast.Module:
    """Inline TestCase classes whose test methods use `self` only in self.assertX calls
    (methods in unittest's alphabetical order) and drop `unittest.main()`; any other
    class stays as it is (it then runs in the sandbox: attested)."""
    body, converted, kept = [], 0, 0
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                ast.unparse(b).endswith("TestCase") for b in node.bases):
            stmts = _test_methods(node)
            if stmts is None:
                kept += 1
                body.append(node)
            else:
                converted += 1
                body.extend(stmts)
        else:
            body.append(node)
    if converted or kept:
        body = [n for n in body if not _is_unittest_main(n)]
    if kept:                # run the kept classes once, and fail unless every test passed
        body += ast.parse(UNITTEST_RUNNER).body
    return ast.Module(body, tree.type_ignores)


def _test_methods(cls: ast.ClassDef) -> list[ast.stmt] | None:
    methods = sorted((m for m in cls.body if isinstance(m, ast.FunctionDef)
                      and m.name.startswith("test")), key=lambda m: m.name)
    if any(not isinstance(m, (ast.FunctionDef, ast.Expr, ast.Pass)) or
           isinstance(m, ast.FunctionDef) and not m.name.startswith("test") for m in cls.body):
        return None                           # setUp, attributes, helpers: leave it alone
    out = []
    for m in methods:
        for st in m.body:
            if isinstance(st, ast.Expr) and isinstance(st.value, ast.Call):
                expr = _unittest_assert(st.value)
                st = ast.Assert(expr, None) if expr is not None else st
            if any(isinstance(n, ast.Name) and n.id == "self" for n in ast.walk(st)):
                return None
            out.append(st)
    return [ast.fix_missing_locations(st) for st in out]


def _is_unittest_main(node: ast.stmt) -> bool:
    if isinstance(node, ast.If):
        return all(_is_unittest_main(n) for n in node.body) and not node.orelse
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
            and ast.unparse(node.value.func) in ("unittest.main", "main"))


def _inlinable(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    """Top-level functions with plain positional parameters, used only as `f(args)` statements."""
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)
            and not (n.args.vararg or n.args.kwarg or n.args.kwonlyargs or n.args.posonlyargs
                     or n.args.defaults or n.decorator_list)
            and not any(isinstance(x, (ast.Return, ast.Yield, ast.YieldFrom, ast.Global,
                                       ast.Nonlocal, ast.FunctionDef, ast.Lambda))
                        for x in ast.walk(n) if x is not n)}
    calls: set[int] = set()
    for s in ast.walk(tree):
        if (isinstance(s, ast.Expr) and isinstance(s.value, ast.Call)
                and isinstance(s.value.func, ast.Name) and s.value.func.id in defs):
            c = s.value
            if c.keywords or len(c.args) != len(defs[c.func.id].args.args) or any(
                    isinstance(a, ast.Starred) for a in c.args):
                defs.pop(c.func.id)
                continue
            calls.add(id(c.func))
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and n.id in defs and id(n) not in calls:
            defs.pop(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in defs and n is not defs[n.name]:
            defs.pop(n.name)
    return defs


class Converter:
    """One conversion (see the module docstring)."""

    def __init__(self, tol: dict):
        self.tol = tol
        self.env: dict = {"__name__": "__main__"}
        self.steps: list[dict] = []
        self.checks: dict[int, dict] = {}
        self.expected_names: dict[int, set[str]] = {}
        self.revealed: set[str] = set()
        self.attested = 0
        self.const_fail = False
        self.macros: dict[str, ast.FunctionDef] = {}
        self.origin: dict[str, set[str]] = {}     # folded name -> names its data came from
        self.depth = 0

    def run(self, code: str) -> Plan:
        tree = _unittest_to_asserts(ast.parse(code))
        self.macros = _inlinable(tree)
        self.block(tree.body)
        for i, names in self.expected_names.items():
            if names & self.revealed and self.checks[i]["strength"] == "hidden":
                self.checks[i]["strength"] = "visible"
        return Plan("tests", self.steps, self.checks, self.attested, self.const_fail)

    # ------------------------------------------------------------------ statements
    def block(self, stmts: list[ast.stmt]) -> None:
        for s in stmts:
            if len(self.steps) > MAX_STEPS:
                raise PlanError(f"tests expand to more than {MAX_STEPS} steps")
            self.stmt(s)

    def stmt(self, s: ast.stmt) -> None:
        try:
            if self._folded_stmt(s):
                return
        except NotFoldable:
            pass
        if isinstance(s, ast.Assert):
            self.assert_(s.test)
        elif isinstance(s, ast.Pass) or (isinstance(s, ast.FunctionDef) and s.name in self.macros):
            return
        elif (isinstance(s, ast.Expr) and isinstance(s.value, ast.Call)
              and isinstance(s.value.func, ast.Name) and s.value.func.id in self.macros):
            self.inline(self.macros[s.value.func.id], s.value.args)
        else:
            self.exec_step(s)

    def _folded_stmt(self, s: ast.stmt) -> bool:
        """Assignments, loops and ifs decided on the host; False if `s` is none of them."""
        if isinstance(s, ast.Assign) and len(s.targets) == 1:
            value = fold(s.value, self.env)
            bind(s.targets[0], value, self.env)
            self._derive(s.targets[0], s.value)
            return True
        if isinstance(s, ast.AnnAssign) and s.value is not None and s.simple:
            bind(s.target, fold(s.value, self.env), self.env)
            self._derive(s.target, s.value)
            return True
        if isinstance(s, ast.AugAssign) and isinstance(s.target, ast.Name):
            expr = ast.BinOp(ast.Name(s.target.id, ast.Load()), s.op, s.value)
            self.env[s.target.id] = fold(expr, self.env)
            return True
        if isinstance(s, ast.If):
            self.block(s.body if fold(s.test, self.env) else s.orelse)
            return True
        if isinstance(s, ast.For) and not s.orelse and not any(
                isinstance(x, (ast.Break, ast.Continue)) for x in ast.walk(s)):
            items = fold(s.iter, self.env)
            if not isinstance(items, (list, tuple, str, dict, set, frozenset)):
                raise NotFoldable
            trial = dict(self.env)
            for item in items:             # check every item binds before emitting anything
                bind(s.target, item, trial)
            self._derive(s.target, s.iter)
            for item in items:
                bind(s.target, item, self.env)
                self.block(s.body)
            return True
        return False

    def _derive(self, target: ast.expr, source: ast.expr) -> None:
        """Names bound from `source` carry its data: revealing a source reveals them."""
        names = set()
        for n in loaded_names(source):
            names |= {n} | self.origin.get(n, set())
        for t in stored_names(target):
            self.origin[t] = names

    def inline(self, fn: ast.FunctionDef, args: list[ast.expr]) -> None:
        self.depth += 1
        if self.depth > MAX_INLINE_DEPTH:
            raise PlanError(f"test helper {fn.name!r} calls itself too deeply")
        for param, arg in zip(fn.args.args, args):
            try:
                self.env[param.arg] = fold(arg, self.env)
                self._derive(ast.Name(param.arg, ast.Store()), arg)  # the parameter is the argument's data
            except NotFoldable:
                self.exec_step(ast.Assign([ast.Name(param.arg, ast.Store())], arg, lineno=0),
                               setup=True)
        self.block(fn.body)
        self.depth -= 1

    def _binds(self, node: ast.AST) -> dict:
        names = loaded_names(node) & set(self.env) - {"__name__"}
        return {n: encode_value(self.env[n]) for n in sorted(names)}

    def exec_step(self, s: ast.stmt, setup: bool = False) -> None:
        binds = self._binds(s)
        self.revealed.update(binds)
        self.attested += 0 if setup else _attested_count(s)
        for name in stored_names(s) | set(binds):     # the sandbox owns these from now on
            self.env.pop(name, None)
        self.steps.append({"exec": ast.unparse(ast.fix_missing_locations(s)), "bind": binds})

    # ------------------------------------------------------------------ asserts
    def eval_step(self, expr: ast.expr, spec: dict, expected_from: ast.AST | None = None) -> None:
        """One answer to compare. Folded names the expression reads are bound in the sandbox
        first, and the sandbox owns them from then on (it may mutate or rebind them, as
        the tests' own namespace would), so later checks read them there."""
        i = len(self.steps)
        if expected_from is not None:       # revealing what the expected value is made of
            root = expected_from            # (a variable it is, or data it came from)
            while isinstance(root, ast.Subscript):
                root = root.value
            names = {root.id} if isinstance(root, ast.Name) else set()
            for n in loaded_names(expected_from):
                names |= self.origin.get(n, set())
            self.expected_names[i] = names
        binds = self._binds(expr)
        self.steps.append({"eval": ast.unparse(expr), "bind": binds})
        self.revealed.update(binds)
        for name in binds:
            self.env.pop(name)
        self.checks[i] = {**self.tol, **spec}

    def assert_(self, t: ast.expr) -> None:
        if isinstance(t, ast.BoolOp) and isinstance(t.op, ast.And):
            for v in t.values:
                self.assert_(v)
            return
        if isinstance(t, ast.Compare) and len(t.ops) > 1:     # a == b == c: pairwise checks
            terms = [t.left] + t.comparators
            for op, a, b in zip(t.ops, terms, terms[1:]):
                self.assert_(ast.Compare(a, [op], [b]))
            return
        if self._all_of(t):
            return
        try:
            if not fold(t, self.env):
                self.const_fail = True
            return
        except NotFoldable:
            pass
        for conv in (self._approx, self._isclose, self._compare):
            if conv(t):
                return
        if isinstance(t, ast.UnaryOp) and isinstance(t.op, ast.Not):
            self.eval_step(t.operand, {"op": "falsy", "strength": "guessable"})
        else:
            self.eval_step(t, {"op": "truthy", "strength": "guessable"})

    def _all_of(self, t: ast.expr) -> bool:
        """`assert all(E for v in ITER if C)` with ITER and C foldable: one check per item."""
        if not (isinstance(t, ast.Call) and isinstance(t.func, ast.Name) and t.func.id == "all"
                and "all" not in self.env and len(t.args) == 1 and not t.keywords
                and isinstance(t.args[0], (ast.GeneratorExp, ast.ListComp))
                and len(t.args[0].generators) == 1 and not t.args[0].generators[0].is_async):
            return False
        gen = t.args[0].generators[0]
        try:
            items = list(fold(gen.iter, self.env))
            trial = dict(self.env)
            for item in items:
                bind(gen.target, item, trial)
                [fold(c, trial) for c in gen.ifs]
        except (NotFoldable, TypeError):
            return False
        names = stored_names(gen.target)
        saved = {n: self.env[n] for n in names if n in self.env}
        saved_origin = {n: self.origin[n] for n in names if n in self.origin}
        self._derive(gen.target, gen.iter)   # the items are ITER's data: revealing ITER reveals them
        for item in items:
            bind(gen.target, item, self.env)
            if all(fold(c, self.env) for c in gen.ifs):
                self.assert_(t.args[0].elt)
        for n in names:
            self.env.pop(n, None)
            self.origin.pop(n, None)
        self.env.update(saved)
        self.origin.update(saved_origin)
        return True

    def _foldable_side(self, a: ast.expr, b: ast.expr):
        """(actual, expected value, expected node, flipped) with one side foldable, or None."""
        for actual, exp, flipped in ((a, b, False), (b, a, True)):
            try:
                return actual, fold(exp, self.env), exp, flipped
            except NotFoldable:
                continue
        return None

    def _compare(self, t: ast.expr) -> bool:
        if not (isinstance(t, ast.Compare) and len(t.ops) == 1):
            return False
        op = CMPOPS[type(t.ops[0])]
        left, right = t.left, t.comparators[0]
        if self._type_of(op, left, right) or self._type_of(op, right, left):
            return True
        if op in ("is", "isnot"):
            if isinstance(right, ast.Constant) and right.value in (None, True, False) and \
                    type(right.value) in (type(None), bool):
                self.eval_step(left, {"op": op, "expected": right.value, "strength": "guessable"})
                return True
            return False
        side = self._foldable_side(left, right)
        if side is None:                  # both sides computed in the sandbox
            self.eval_step(ast.Tuple([left, right], ast.Load()),
                           {"op": "pair", "pair_op": op, "strength": "visible"})
            return True
        actual, expected, exp_node, flipped = side
        op = FLIP[op] if flipped else op
        constant = expected is None or type(expected) is bool     # `== False` is guessable
        self.eval_step(actual, {"op": op, "expected": expected, "strength":
                                "hidden" if op in STRONG_OPS and not constant else "guessable"},
                       exp_node)
        return True

    def _type_of(self, op: str, call: ast.expr, name: ast.expr) -> bool:
        """`type(A) == T` (or `is`, `!=`, `is not`) with T a builtin type: A's value goes to
        the host, which compares the type it decodes (a class itself cannot cross the wall)."""
        if not (op in ("eq", "is", "ne", "isnot") and isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                and call.func.id == "type" and "type" not in self.env and len(call.args) == 1 and not call.keywords
                and isinstance(name, ast.Name) and name.id in TYPE_NAMES and name.id not in self.env):
            return False
        self.eval_step(call.args[0], {"op": "type" if op in ("eq", "is") else "nottype", "expected": name.id,
                                      "strength": "guessable"})
        return True

    def _approx(self, t: ast.expr) -> bool:
        """abs(A - B) < C / <= C with C foldable: hidden when B (or A) folds, else visible (a
        pair); either way abs and the subtraction are the host's, not the solution's."""
        if not (isinstance(t, ast.Compare) and len(t.ops) == 1
                and isinstance(t.ops[0], (ast.Lt, ast.LtE)) and isinstance(t.left, ast.Call)
                and isinstance(t.left.func, ast.Name) and t.left.func.id == "abs"
                and len(t.left.args) == 1 and isinstance(t.left.args[0], ast.BinOp)
                and isinstance(t.left.args[0].op, ast.Sub) and "abs" not in self.env):
            return False
        try:
            tol = fold(t.comparators[0], self.env)
        except NotFoldable:
            return False
        if not isinstance(tol, (int, float)):
            return False
        a, b = t.left.args[0].left, t.left.args[0].right
        inclusive = isinstance(t.ops[0], ast.LtE)
        side = self._foldable_side(a, b)
        if side is None:   # both computed in the sandbox; the host takes abs(A - B) itself
            self.eval_step(ast.Tuple([a, b], ast.Load()), {"op": "pair", "pair_op": "approx", "tol": tol,
                                                           "inclusive": inclusive, "strength": "visible"})
            return True
        actual, expected, exp_node, _ = side
        self.eval_step(actual, {"op": "approx", "expected": expected, "tol": tol,
                                "inclusive": inclusive, "strength": "hidden"}, exp_node)
        return True

    def _isclose(self, t: ast.expr) -> bool:
        """math.isclose(A, B[, rel_tol=, abs_tol=]) / isclose(...) with one side foldable."""
        f = t.func if isinstance(t, ast.Call) else None
        name = (f.attr if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                and f.value.id == "math" else f.id if isinstance(f, ast.Name) else None)
        if name != "isclose" or len(t.args) != 2:
            return False
        try:
            kw = {k.arg: fold(k.value, self.env) for k in t.keywords}
        except NotFoldable:
            return False
        side = self._foldable_side(t.args[0], t.args[1])
        if side is None or not set(kw) <= {"rel_tol", "abs_tol"}:
            return False
        actual, expected, exp_node, _ = side
        self.eval_step(actual, {"op": "isclose", "expected": expected, "strength": "hidden",
                                "rel_tol": float(kw.get("rel_tol", 1e-9)),
                                "abs_tol": float(kw.get("abs_tol", 0.0))}, exp_node)
        return True
