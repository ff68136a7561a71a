"""The HTTP edge (``userpath edge``): Segment's Tracking API and providers' webhooks in front of the
broker, so that tenants never hold broker credentials.

``http`` reads a request (the key, the body, answers), ``segment`` maps Segment's calls onto the
contract's events, ``service`` decides (the worker's key authenticator, the key's scopes, the
client's publishing rule) and ``app`` is the ASGI application served by uvicorn (``server``).
It imports the contract and the core, never ``tasks``.
"""
