"""Every error the producer client raises, under one base class."""

from __future__ import annotations


class UserPathError(Exception):
    """Base class of every error this client raises."""


class InvalidKey(UserPathError, ValueError):
    """The API key is not a well-formed UserPath key."""


class InvalidEvent(UserPathError, ValueError):
    """An event or webhook breaks the wire contract (missing field, bad type, too large...)."""


class QueueFull(UserPathError):
    """``max_queue_size`` events are waiting to be sent; this one was not queued."""


class NotSent(UserPathError):
    """Events could not be handed to the broker in time. ``count`` says how many."""

    def __init__(self, message: str, count: int) -> None:
        super().__init__(message)
        self.count = count


class ClientClosed(UserPathError):
    """The client was closed; create a new one to send more."""


class BacklogFull(UserPathError):
    """The broker already holds as many messages of this key as it takes (the contract's
    ``MAX_LANE_MESSAGES``): the worker is behind. Nothing was published; send again later."""
