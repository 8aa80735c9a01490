"""course_lib: the building blocks, models, data, training and checkers of *Transformers at Every Scale*."""

from course_lib.report import gather_results, report
from course_lib.session import PROFILES, Session, seed_everything, setup

__version__ = "0.1.0"
__all__ = ["PROFILES", "Session", "gather_results", "report", "seed_everything", "setup", "__version__"]
