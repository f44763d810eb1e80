"""Dock widgets: thin doors into ``core/``; each module holds one widget."""
