"""Evaluation: accuracy under attack and its sanity checks, the topology of a model's representation, and
the models an evaluation runs on."""
