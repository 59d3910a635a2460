"""Plugins that ship with ChatterFix. They use only the public API, like any other plugin."""
