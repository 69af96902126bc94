"""The pure core: model, desired state, planner, collection, plan actions (and what is within a plan),
the reference-rewrite rule, the rollout judge, fingerprints, status.

Nothing here does I/O, imports docker or runs a subprocess (an import-linter contract keeps it so):
it turns values into decisions that the edges carry out.
"""
