"""Verified webhooks: organizations' signing secrets, encrypted at rest, and the signature checks."""
