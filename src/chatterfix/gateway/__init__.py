"""The gateway: one Starlette application assembled from the plugins' hooks."""
