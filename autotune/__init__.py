"""autotune: tune LLM inference engines with Optuna, measured on the real engine.

The public API is what ``__all__`` lists; everything else is internal and may
move. Names load on first use, so ``import autotune`` stays cheap for a tool
that needs one piece::

    import autotune

    spec = autotune.load_spec("studies/tiny-cpu.yaml", {"budget.trials": 4})
    run = autotune.run_study(spec)
    results = autotune.StudyResults.load(spec.study_dir)
    print(results.best().config)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from autotune._version import __version__

__all__ = [
    "StudyResults",
    "StudySpec",
    "TrialRecord",
    "UserError",
    "__version__",
    "load_spec",
    "load_study",
    "measure_config",
    "run_study",
    "verify_study",
]

_WHERE = {
    "StudyResults": "autotune.tuning",
    "StudySpec": "autotune.spec",
    "TrialRecord": "autotune.tuning",
    "UserError": "autotune.errors",
    "load_spec": "autotune.spec",
    "load_study": "autotune.tuning",
    "measure_config": "autotune.measure",
    "run_study": "autotune.tuning",
    "verify_study": "autotune.verify",
}

if TYPE_CHECKING:
    from autotune.errors import UserError
    from autotune.measure import measure_config
    from autotune.spec import StudySpec, load_spec
    from autotune.tuning import StudyResults, TrialRecord, load_study, run_study
    from autotune.verify import verify_study


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'autotune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
