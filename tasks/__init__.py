"""Thin Celery tasks: decode the message, call the domain core, return."""
