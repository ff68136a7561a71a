from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from userpath_worker.db import Base


class WebhookSecret(Base):
    """One provider's signing secret for an organization, encrypted (``webhooks.crypto``). Several
    may be active for one provider at once: a secret is rotated by adding the new one, then
    removing the old one."""

    __tablename__ = "webhook_secrets"
    __table_args__ = (Index("ix_webhook_secrets_org_provider", "org_id", "provider"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(50))
    ciphertext: Mapped[str] = mapped_column(Text)  # Fernet token; the secret itself is never stored
    display: Mapped[str] = mapped_column(String(20))  # e.g. whsec_...wxyz
    created_at: Mapped[dt.datetime]
    created_by: Mapped[str] = mapped_column(String(320))
