"""Key rotation: flag stale keys, remind their organization's owners, enforce expiry.

The core here has no Celery in it: ``tasks.rotation`` runs it on beat's schedule, and
``userpath rotation run`` runs it by hand.
"""
