"""The pure core: desired state, diff and ordered plan, and the in-memory kernel.

Must not import kopf, pyroute2, jinja2, kubernetes, subprocess, socket or asyncio;
the import-linter contract in pyproject.toml enforces it.
"""
