"""The teacher's objective: losses, the margin gate, the cache, the step."""
