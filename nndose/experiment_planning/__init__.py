"""Experiment planning: dataset fingerprint, the auto-planner and the planning API. Only the command
line, the demo and the benchmarks import it; training and inference read the plan file it writes."""
