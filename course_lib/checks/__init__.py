"""Exercise checkers: `from course_lib.checks import attention as check; check.causal_mask(my_function)`."""

from course_lib.checks.core import Case, Checker, FunctionChecker, ModuleChecker, first_mismatch

__all__ = ["Case", "Checker", "FunctionChecker", "ModuleChecker", "first_mismatch"]
