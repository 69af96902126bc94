"""``swarm-secrets run``: the long-running reconciler (loop, ticks, HTTP, metrics, git sync)."""
