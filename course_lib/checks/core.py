"""The exercise checker: run the learner's code on cases, compare with the reference, explain the first miss.

A checker prints a friendly verdict; when the answer is wrong it then raises AssertionError, so an
autograder (nbgrader, pytest) sees the failure too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class Case:
    """One call to check: positional and keyword arguments, and a phrase that describes them."""

    description: str
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def first_mismatch(expected: Any, actual: Any, *, atol: float, rtol: float, where: str = "output") -> str | None:
    """None when `actual` matches `expected`, else a sentence about the first difference (type, shape, dtype, value)."""
    if isinstance(expected, (tuple, list)):
        if not isinstance(actual, (tuple, list)) or len(actual) != len(expected):
            return f"{where} should be a {type(expected).__name__} of {len(expected)} items, got {_describe(actual)}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            problem = first_mismatch(e, a, atol=atol, rtol=rtol, where=f"{where}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(expected, Tensor):
        if not isinstance(actual, Tensor):
            return f"{where} should be a torch.Tensor, got {_describe(actual)}"
        if actual.shape != expected.shape:
            return f"{where} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
        if actual.dtype != expected.dtype:
            return f"{where} has dtype {actual.dtype}, expected {expected.dtype}"
        if expected.dtype == torch.bool or not expected.is_floating_point():
            wrong = actual != expected
        else:
            wrong = ~torch.isclose(actual, expected, atol=atol, rtol=rtol, equal_nan=True)
        if wrong.any():
            index = tuple(int(i) for i in wrong.nonzero()[0])
            share = f"{wrong.float().mean().item():.0%} of the entries differ"
            if expected.is_floating_point():
                share += f"; tolerance atol={atol}, rtol={rtol}"
            return f"{where}{list(index)} is {_scalar(actual[index])}, expected {_scalar(expected[index])} ({share})"
        return None
    if isinstance(expected, float) and not isinstance(expected, bool):
        if isinstance(actual, bool) or not isinstance(actual, (int, float)) \
                or not math.isclose(actual, expected, rel_tol=rtol, abs_tol=atol):
            return f"{where} is {actual!r}, expected {expected:.6g} (tolerance atol={atol}, rtol={rtol})"
        return None
    if actual != expected:
        return f"{where} is {actual!r}, expected {expected!r}"
    return None


def _scalar(value: Tensor) -> str:
    item = value.item()
    return f"{item:.6g}" if isinstance(item, float) else repr(item)


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}"[:120]


def _fail(name: str, message: str, hint: str) -> None:
    print(f"✗ {name}: {message}")
    if hint:
        print(f"  Hint: {hint}")
    raise AssertionError(f"{name}: {message}")


def _call(name: str, function: Callable, case: Case, hint: str) -> Any:
    try:
        return function(*case.args, **case.kwargs)
    except NotImplementedError:
        _fail(name, "not implemented yet: replace `raise NotImplementedError` with your code.", hint)
    except Exception as error:  # the learner's code crashed: say where, and on what
        _fail(name, f"raised {type(error).__name__}: {error} (on {case.description})", hint)


class Checker:
    """What every checker holds: a name, the reference, a factory of cases, a hint and the tolerances."""

    def __init__(self, name: str, reference: Callable, cases: Callable[[], Sequence], *, hint: str = "",
                 atol: float = 1e-5, rtol: float = 1e-4) -> None:
        self.name, self.reference, self.cases, self.hint = name, reference, cases, hint
        self.atol, self.rtol = atol, rtol


Mistake = tuple[Callable, str]  # a wrong answer a learner may write, and what it gets wrong


class FunctionChecker(Checker):
    """Checks a function against `reference` on every case the `cases` factory returns.

    `mistakes` lists common wrong answers: when the learner's output equals one of theirs on the failing
    case, the message names that mistake, which helps more than a bare mismatch.
    """

    def __init__(self, name: str, reference: Callable, cases: Callable[[], Sequence], *,
                 mistakes: Sequence[Mistake] = (), **options: Any) -> None:
        super().__init__(name, reference, cases, **options)
        self.mistakes = list(mistakes)

    def diagnose(self, case: Case, actual: Any) -> str:
        """The explanation of the first known mistake that gives `actual` on `case`, or ''."""
        for mistake, explanation in self.mistakes:
            try:
                wrong = mistake(*case.args, **case.kwargs)
            except Exception:  # a mistake that cannot run on this case cannot be the learner's
                continue
            if wrong is not None and first_mismatch(wrong, actual, atol=self.atol, rtol=self.rtol) is None:
                return f"It looks like this mistake: {explanation}"
        return ""

    def describe(self, problem: str) -> str:
        """Put the mismatch in the exercise's words; subclasses rename the parts of the output."""
        return problem

    def __call__(self, function: Callable) -> bool:
        cases = list(self.cases())
        for case in cases:
            expected = self.reference(*case.args, **case.kwargs)
            actual = _call(self.name, function, case, self.hint)
            problem = first_mismatch(expected, actual, atol=self.atol, rtol=self.rtol)
            if problem:
                diagnosis = self.diagnose(case, actual)
                message = f"{self.describe(problem)} (on {case.description})"
                _fail(self.name, f"{message}. {diagnosis}" if diagnosis else message, self.hint)
        print(f"✓ {self.name}: all {len(cases)} cases match the reference. Well done!")
        return True


class ModuleChecker(Checker):
    """Checks an `nn.Module` class: built with each case's constructor arguments, given the reference's
    weights, it must produce the reference's outputs on the case's inputs. `cases` returns
    (constructor case, call case) pairs."""

    def __call__(self, module_class: type[nn.Module]) -> bool:
        pairs = list(self.cases())
        for build, run in pairs:
            torch.manual_seed(0)
            reference = self.reference(*build.args, **build.kwargs).eval()
            learner = _call(self.name, module_class, build, self.hint)
            if not isinstance(learner, nn.Module):
                _fail(self.name, f"{module_class!r} built {_describe(learner)}, not an nn.Module", self.hint)
            learner.eval()
            missing, unexpected = _key_difference(reference, learner)
            if missing or unexpected:
                _fail(self.name, f"the parameters differ from the reference's: missing {missing}, unexpected {unexpected} "
                      f"(on {build.description})", self.hint)
            learner.load_state_dict(reference.state_dict())
            with torch.no_grad():
                expected = reference(*run.args, **run.kwargs)
                actual = _call(self.name, learner, run, self.hint)
            problem = first_mismatch(expected, actual, atol=self.atol, rtol=self.rtol)
            if problem:
                _fail(self.name, f"{problem} (built with {build.description}, run on {run.description})", self.hint)
        print(f"✓ {self.name}: all {len(pairs)} cases match the reference with the same weights. Well done!")
        return True


def _key_difference(reference: nn.Module, learner: nn.Module) -> tuple[list[str], list[str]]:
    want = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in learner.state_dict().items()}
    missing = sorted(f"{k} {s}" for k, s in want.items() if have.get(k) != s)
    unexpected = sorted(f"{k} {s}" for k, s in have.items() if want.get(k) != s)
    return missing, unexpected
