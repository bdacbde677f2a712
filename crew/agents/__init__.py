"""Agents: supervisor, manager, executors, roles, and their prompt templates."""
