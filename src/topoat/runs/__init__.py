"""Runs on disk: the run folder, checkpoints, results.json, scoring a finished run, and studies of many runs."""
