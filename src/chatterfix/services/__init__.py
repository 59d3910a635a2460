"""Shared services every plugin gets: the database (more to come: auth, AI, discovery)."""
