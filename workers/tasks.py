"""Celery tasks: thin wrappers over domain functions that tests call directly too."""

from __future__ import annotations
