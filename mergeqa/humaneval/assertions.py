"""A HumanEval problem's `check`, rewritten so it runs to its end whatever the completion answers.

For: compiling the dataset's check (`checking_code`) with every `assert E, msg` turned into a recorded
assertion, and the record (`AssertionLog`) that judges them afterwards. Why: an `assert` stops the check at
the first wrong answer, so a sandboxed completion could read from the calls it gets whether its earlier
answers were right (issue 28). Here the calls are the same for any answers. Not for running the candidate:
`mergeqa.humaneval.problems` hands in the proxy that calls the sandbox.

    >>> code = checking_code("def f(x):\\n", "def check(candidate):\\n    assert candidate(1) == 2\\n", "f")
    >>> log = AssertionLog(calls=lambda: 1)
    >>> namespace = {RECORDER: log}
    >>> exec(code, namespace)
    >>> namespace["check"](lambda x: 3)   # no AssertionError: the answer is only recorded
    >>> [(v.number, v.held) for v in log.judge()]
    [(1, False)]

Each `assert E, msg` of the check becomes `RECORDER.record(line, message, calls, holds)`:
- `calls` makes the candidate calls in E first, in source order, each with its arguments, so `and`, `or`,
  an exception in E or a failed `tuple()` on one answer never skips a later call (a call whose arguments hold
  another answer, or one inside a lambda or comprehension of E, cannot be made first: it stays in E, which is
  then judged at once; `answer_dependent_calls` names such shapes, none in HumanEval);
- `holds` is E with those calls replaced by their answers, as a lambda whose defaults take the check's local
  names at that moment (a loop's variables), so it can be judged later;
- `msg` is never evaluated (HumanEval's messages call the candidate again, which made the calls depend on a
  failure); a constant message is kept for the report.
`AssertionLog.judge()` runs the `holds` after the check has ended (so after the sandbox is gone, in
`problems`): an exception in E is that assertion failing. Everything else of the check runs as written.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

#: the name the rewritten check calls its record by
RECORDER = "__mergeqa_assertions__"
_ANSWERS = "__mergeqa_answers__"
_SCOPES = (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.ListComp, ast.SetComp,
           ast.DictComp, ast.GeneratorExp)


@dataclass(frozen=True)
class Verdict:
    """One recorded assertion, judged: `number` counts from 1 in the order they ran, `line` is the assert's
    line in the problem's test text, `call` the calls made to the candidate when its answers were in."""

    number: int
    line: int
    call: int
    held: bool
    message: str = ""  # the assert's message, where it is a constant
    raised: str = ""  # "TypeError: ..." where judging E raised


@dataclass
class AssertionLog:
    """What the rewritten check recorded. `calls` says how many calls the candidate has had so far;
    `passthrough`: exceptions that end the check instead of failing one assertion (the sandbox gave no answer)."""

    calls: Callable[[], int]
    passthrough: tuple[type[BaseException], ...] = ()
    _pending: list = field(default_factory=list)

    def record(self, line: int, message: str, calls: Callable[[], tuple], holds: Callable, now: bool = False) -> None:
        """Called by the rewritten check for each `assert` it reaches: makes E's candidate calls, keeps the rest
        of E to judge later (`now`: judge at once, for an E that still calls the candidate itself)."""
        answers = calls()
        entry = (line, message, self.calls(), holds, answers)
        self._pending.append(self._judge(len(self._pending) + 1, *entry) if now else entry)

    def judge(self) -> list[Verdict]:
        """Every recorded assertion, judged in the order they ran."""
        return [entry if isinstance(entry, Verdict) else self._judge(number, *entry)
                for number, entry in enumerate(self._pending, 1)]

    def _judge(self, number: int, line: int, message: str, call: int, holds: Callable, answers: tuple) -> Verdict:
        try:
            return Verdict(number, line, call, bool(holds(answers)), message)
        except self.passthrough:
            raise
        except Exception as exc:  # noqa: BLE001 (a wrong answer that E cannot even compare: that assertion fails)
            return Verdict(number, line, call, False, message, f"{type(exc).__name__}: {exc}"[:300])


def describe_failures(verdicts: list[Verdict]) -> str:
    """"" where every assertion held and at least one ran; else one line naming the first that failed."""
    if not verdicts:
        return "the check ran no assertion"
    failed = [v for v in verdicts if not v.held]
    if not failed:
        return ""
    first = failed[0]
    why = "".join(f"; {text}" for text in (first.raised, first.message) if text)
    return (f"{len(failed)} of {len(verdicts)} assertions failed; the first: assertion {first.number} "
            f"(line {first.line} of the check, call {first.call}){why}")


@functools.cache
def checking_code(prompt: str, test: str, entry_point: str):
    """The dataset's prompt (its helpers and the entry point's stub) and test, compiled with the check's
    asserts recorded. Only the dataset's text: never the completion."""
    tree = ast.parse(test)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "check":
            _Rewriter({"candidate", entry_point}, _local_names(node)).visit(node)
    module = ast.Module(body=ast.parse(f"{prompt}    pass\n").body + tree.body, type_ignores=[])
    return compile(ast.fix_missing_locations(module), "<humaneval check>", "exec")


def answer_dependent_calls(test: str, entry_point: str) -> list[str]:
    """Where the calls the check makes could still depend on an answer, as source: a candidate call whose
    arguments hold another call or a name bound from an answer (`candidate(candidate(x))`, `y = candidate(x)`
    then `candidate(y)`), a call inside a lambda or comprehension of an assert (`all(candidate(x) for ...)`
    stops early; it is judged at once, in order), and an `if`, `while` or `for` that looks at an answer.
    Static and by name (answers copied into containers are not followed): the test that runs all 164 checks
    against wrong stubs is the proof; this names the suspects. None in HumanEval's 164."""
    names = {"candidate", entry_point}
    tree = ast.parse(test)
    answers = set()  # names bound, outside asserts, from an expression that holds an answer
    while True:
        bound = {target.id for node in ast.walk(tree) if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign))
                 and node.value is not None and _holds_an_answer(node.value, names, answers)
                 for target in ast.walk(node) if isinstance(target, ast.Name) and isinstance(target.ctx, ast.Store)}
        if bound <= answers:
            break
        answers |= bound
    found = [ast.unparse(call) for call in ast.walk(tree) if _is_call_of(call, names)
             and any(_holds_an_answer(argument, names, answers) for argument in _arguments(call))]
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            in_scope = {id(n) for n in _walk_scope(ast.Expression(node.test))}
            found += [ast.unparse(call) for call in ast.walk(node.test)
                      if _is_call_of(call, names) and id(call) not in in_scope]
        elif isinstance(node, (ast.If, ast.While)) and _holds_an_answer(node.test, names, answers):
            found.append(ast.unparse(node.test))
        elif isinstance(node, ast.For) and _holds_an_answer(node.iter, names, answers):
            found.append(ast.unparse(node.iter))
    return found


# --------------------------------------------------------------------------- the rewrite


def _is_call_of(node: ast.AST, names: set[str]) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names


def _arguments(call: ast.Call) -> list[ast.expr]:
    return [*call.args, *(keyword.value for keyword in call.keywords)]


def _asks_an_answer(call: ast.Call, names: set[str]) -> bool:
    """Whether the call's arguments hold another candidate call: what it asks depends on an answer."""
    return any(_is_call_of(inner, names) for argument in _arguments(call) for inner in ast.walk(argument))


def _holds_an_answer(node: ast.AST, names: set[str], answers: set[str]) -> bool:
    return any(_is_call_of(n, names) or (isinstance(n, ast.Name) and n.id in answers) for n in ast.walk(node))


def _walk_scope(node: ast.AST):
    """`ast.walk` that stays in `node`'s scope: it does not enter lambdas, comprehensions or nested defs."""
    todo = list(ast.iter_child_nodes(node))
    while todo:
        child = todo.pop()
        yield child
        if not isinstance(child, _SCOPES):
            todo.extend(ast.iter_child_nodes(child))


def _local_names(check: ast.FunctionDef) -> set[str]:
    names = {arg.arg for arg in ast.walk(check.args) if isinstance(arg, ast.arg)}
    for node in _walk_scope(check):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


class _Rewriter(ast.NodeTransformer):
    def __init__(self, candidate_names: set[str], local_names: set[str]):
        self.candidate_names, self.local_names = candidate_names, local_names

    def visit_Assert(self, node: ast.Assert) -> ast.Expr:
        hoisted = sorted((call for call in _walk_scope(ast.Expression(node.test))
                          if _is_call_of(call, self.candidate_names)
                          and not _asks_an_answer(call, self.candidate_names)),
                         key=lambda call: (call.lineno, call.col_offset))
        slots = {id(call): index for index, call in enumerate(hoisted)}
        test = _Replace(slots).visit(node.test)
        now = any(_is_call_of(n, self.candidate_names) for n in ast.walk(test))  # judged at once: see record()
        snapshot = [] if now else sorted(
            {n.id for n in ast.walk(test) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
            & self.local_names)
        holds = ast.Lambda(_arguments_of([_ANSWERS, *snapshot], [ast.Name(name, ast.Load()) for name in snapshot]),
                           body=test)
        calls = ast.Lambda(_arguments_of([], []), body=ast.Tuple(hoisted, ast.Load()))
        message = node.msg.value if isinstance(node.msg, ast.Constant) and isinstance(node.msg.value, str) else ""
        record = ast.Call(
            func=ast.Attribute(ast.Name(RECORDER, ast.Load()), "record", ast.Load()),
            args=[ast.Constant(node.lineno), ast.Constant(message), calls, holds],
            keywords=[ast.keyword("now", ast.Constant(True))] if now else [],
        )
        return ast.copy_location(ast.Expr(record), node)


def _arguments_of(names: list[str], defaults: list[ast.expr]) -> ast.arguments:
    return ast.arguments(posonlyargs=[], args=[ast.arg(name) for name in names], kwonlyargs=[], kw_defaults=[],
                         defaults=defaults)


class _Replace(ast.NodeTransformer):
    """E with each hoisted call replaced by `__mergeqa_answers__[i]`."""

    def __init__(self, slots: dict[int, int]):
        self.slots = slots

    def visit_Call(self, node: ast.Call):
        if id(node) in self.slots:
            return ast.Subscript(ast.Name(_ANSWERS, ast.Load()), ast.Constant(self.slots[id(node)]), ast.Load())
        return self.generic_visit(node)
