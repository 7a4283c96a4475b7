"""Verify: re-run the recommended configurations with fresh server starts.

A study measures each configuration once, and the best of many single
measurements is biased upward (the winner's curse). So each recommendation is
started again from nothing, ``repeats`` times (the methodology asks for at
least 10), and judged on what a user can rely on:

* an aggregate SLO (``p99(ttft)<2s``) holds only if the 95% Student-t bound of
  the figure's mean across starts is on the right side of the limit (the upper
  bound for ``<``, the lower bound for ``>``);
* an attainment SLO (``ttft<500ms@95%``) pools every request of every start and
  holds only if the Wilson 95% lower bound of the fraction reaches the target;
* every start must come up and measure: a configuration that fails to start one
  time in ten is not one to deploy.

Results are stored in the study's own storage, as the study user attribute
``verify:<trial number>``, after every start, so an interrupted verification
keeps what it measured and the next run continues it. The configurations take
turns, one start each (a recommendation and the defaults it is compared with
are measured side by side in time, so a machine that drifts moves both), and
a wall time stops new starts, never one under way: a machine lent for ten
minutes at a time verifies over several runs. In a goodput study each
start's search begins at the study's reading of the configuration and steps
one resolution first, so a start that reads it again is done in two levels
(a verification stored before this began keeps the search it began with).
The raw files of each
start (engine log, requests, outcome) are in ``verify/trial-<n>/<start>/``.
"""

from autotune.verify.judge import judge_starts
from autotune.verify.records import Check, Start, Verification, save, stored
from autotune.verify.run import VerifyReporter, candidates, verify_study

__all__ = ["Check", "Start", "Verification", "VerifyReporter", "candidates", "judge_starts", "save", "stored",
           "verify_study"]
