"""The base class of our tasks: no secret in Celery's task representation, nothing lost on
an unexpected failure."""

from __future__ import annotations

from typing import Any

from billiard.exceptions import WorkerLostError
from celery import Task
from celery.exceptions import Ignore, Reject, Retry
from celery.worker.request import Request

from tasks.backoff import backoff_seconds
from tasks.deadletters import failed_unexpectedly
from userpath_worker.events.schemas import summarize_arguments

# Failures that Celery settles itself: retries, deliberate rejections, a lost worker process
# (the message is re-delivered) and a shutdown.
_CELERY_OUTCOMES = (Retry, Reject, Ignore, WorkerLostError, SystemExit, KeyboardInterrupt, MemoryError)


class RedactedRequest(Request):
    """A request whose argsrepr is a summary with the key in its display form.

    Celery shows argsrepr in logs, task events and Flower, and falls back to the full repr of
    the arguments when a producer sends none; either way the raw key would be shown.
    """

    def __init__(self, message: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(message, *args, **kwargs)
        # Celery decodes the body here and again in the pool process, and would pickle this
        # decoded copy to the pool along with the body: a second copy per message to send, and
        # one that a deeply nested message cannot be pickled as. The pool process needs only the body.
        del self._request_dict["args"], self._request_dict["kwargs"]
        # expires and a far ETA were refused at the boundary (tasks/ingestion/decoder.py).
        payload = message.payload
        arguments = payload[0] if isinstance(payload, list | tuple) and payload else None
        self._argsrepr = self._request_dict["argsrepr"] = summarize_arguments(arguments)
        self._kwargsrepr = self._request_dict["kwargsrepr"] = (
            "{...}" if payload and len(payload) > 1 and payload[1] else "{}"
        )

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        error = getattr(exc_info.exception, "exc", exc_info.exception)
        # A Retry carries the error it retries as .exc too: it is settled, not unexpected.
        settled = isinstance(exc_info.exception, _CELERY_OUTCOMES) or isinstance(error, _CELERY_OUTCOMES)
        if not settled and self.task.acks_late:
            # The task body dead-letters every fault of the input itself; reaching here is a bug
            # of ours or a time limit. Keep the message for replay instead of dropping it.
            failed_unexpectedly(self._message, error)
            return
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


class UserPathTask(Task):
    Request = RedactedRequest
    # Database outages are retried for as long as they last. retry(max_retries=None) does not
    # say so: Celery reads None there as "the task's default", which is 3.
    max_retries = None

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        # Also covers self.retry(), which re-publishes the message through here.
        options["argsrepr"] = summarize_arguments(args)
        options["kwargsrepr"] = "{}" if not kwargs else "{...}"
        return super().apply_async(args, kwargs, **options)

    def retry_delay(self) -> float:
        return backoff_seconds(self.request.retries)
