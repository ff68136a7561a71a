"""A local SMTP server (aiosmtpd) on a free port of 127.0.0.1, keeping what it is sent."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller


@dataclass(frozen=True)
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage
    raw: bytes


class SmtpServer:
    """Answers like a mail server; ``refuse_data`` (replies, used up in turn), ``refuse_recipients``
    and ``data_delay`` (seconds before answering the message) make it refuse or fall silent."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.refuse_data: list[str] = []
        self.refuse_recipients: set[str] = set()
        self.data_delay = 0.0
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def to(self, address: str) -> list[Received]:
        """The messages ``address`` was a recipient of."""
        return [received for received in self.received if address in received.recipients]

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:  # noqa: N802 - aiosmtpd's naming
        if address in self.refuse_recipients:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's naming
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.refuse_data:
            return self.refuse_data.pop(0)
        raw = bytes(envelope.original_content or envelope.content)
        message = email.message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message, raw))
        return "250 OK"

    def close(self) -> None:
        self.controller.stop()
