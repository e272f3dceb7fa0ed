"""SMTP replies as values, and the ones the milter gives by name (light: the supervisor imports it)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    """An SMTP reply: code, enhanced status code (RFC 3463) and text."""

    code: int
    xcode: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.xcode} {self.text}"

    @property
    def permanent(self) -> bool:
        return self.code >= 500


# RFC 3463 section 3.4: 4.3.0 is "other or undefined mail system status".
INTERNAL_ERROR = Reply(451, "4.3.0", "Temporary error in the SPF filter; please try again later")
# RFC 5321 section 3.3: a recipient refused with 452 is sent again in a later transaction;
# RFC 3463 section 3.6: 4.5.3 is "too many recipients" (for this transaction).
SEPARATE_TRANSACTION = Reply(452, "4.5.3", "This recipient needs a separate transaction; please send it again")
# RFC 3463 section 3.5: 4.4.3 is "directory server failure" (DNS).
DKIM_DNS_FAILURE = Reply(451, "4.4.3", "Temporary DNS failure checking the DKIM signature; please try again later")
# RFC 3463 section 3.2: 5.1.1 is "bad destination mailbox address".
NO_MAILBOX = Reply(550, "5.1.1", "No such mailbox: this domain only receives bounces to SRS addresses")
