"""Widgets shared by lamina's screens."""
