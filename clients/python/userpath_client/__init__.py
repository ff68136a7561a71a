"""UserPath's producer client: send product-analytics events to the UserPath worker's broker.

from userpath_client import UserPath

userpath = UserPath("up_live_...", "redis://127.0.0.1:6379/0")
userpath.track("Signed Up", user_id="user_123", properties={"plan": "pro"})

The public API is ``UserPath`` (``client``) and its errors (``errors``). Inside: ``validation``
checks events at the call, ``sender`` buffers them and sends them from a background thread,
``wire`` assembles the Celery protocol-2 messages, ``contract`` and ``schemas`` are the wire
contract the worker shares.
"""

from userpath_client.client import UserPath, install_sigterm_flush
from userpath_client.errors import ClientClosed, InvalidEvent, InvalidKey, NotSent, QueueFull, UserPathError

__all__ = [
    "ClientClosed",
    "InvalidEvent",
    "InvalidKey",
    "NotSent",
    "QueueFull",
    "UserPath",
    "UserPathError",
    "install_sigterm_flush",
]
