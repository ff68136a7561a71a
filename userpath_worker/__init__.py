"""userpath-worker's domain core: keys, authentication, events, storage, dead letters, rotation.

Nothing here imports Celery tasks or starts a worker; the ``tasks`` package calls into this one.
"""
