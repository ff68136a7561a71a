"""UserPath's producer client: send product-analytics events to the UserPath worker's broker.

from userpath_client import UserPath

userpath = UserPath("up_live_...", "redis://127.0.0.1:6379/0")
userpath.track("Signed Up", user_id="user_123", properties={"plan": "pro"})
"""

from userpath_client.client import (
    ClientClosed,
    InvalidEvent,
    InvalidKey,
    NotSent,
    QueueFull,
    UserPath,
    UserPathError,
)

__all__ = ["ClientClosed", "InvalidEvent", "InvalidKey", "NotSent", "QueueFull", "UserPath", "UserPathError"]
