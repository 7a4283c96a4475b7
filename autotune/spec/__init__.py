"""What a study is asked to do: the spec, the SLO and objective language, presets and flags.

Everything a user states reaches autotune through here, validated whole, so a
mistake costs one line and exit status 2 before any engine starts.
"""

from autotune.spec.flags import FLAG_FIELDS, flag_overrides, parse_assignments, parse_engine_assignments
from autotune.spec.grammar import parse_objectives, parse_slos
from autotune.spec.scenarios import SCENARIOS_DIR, load_scenario, scenario_names
from autotune.spec.slo import DEFAULT_ATTAINMENT, Constraint, Objective
from autotune.spec.study_spec import (
    DEFAULT_OBJECTIVES,
    Budget,
    EngineOptions,
    GoodputOptions,
    Hardware,
    Heartbeat,
    RoundsOptions,
    StudySpec,
    check_storage_url,
    default_name,
    load_spec,
    redact_url,
    set_dotted,
    validation_line,
)

__all__ = [
    "DEFAULT_ATTAINMENT",
    "DEFAULT_OBJECTIVES",
    "FLAG_FIELDS",
    "SCENARIOS_DIR",
    "Budget",
    "Constraint",
    "EngineOptions",
    "GoodputOptions",
    "Hardware",
    "Heartbeat",
    "Objective",
    "RoundsOptions",
    "StudySpec",
    "check_storage_url",
    "default_name",
    "flag_overrides",
    "load_scenario",
    "load_spec",
    "parse_assignments",
    "parse_engine_assignments",
    "parse_objectives",
    "parse_slos",
    "redact_url",
    "scenario_names",
    "set_dotted",
    "validation_line",
]
