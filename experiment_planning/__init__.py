"""Experiment planning: dataset fingerprint and the auto-planner (imports nndose; never imported by it)."""
