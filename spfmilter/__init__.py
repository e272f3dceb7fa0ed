"""spfmilter: an SPF (RFC 7208) milter for Postfix and Sendmail."""

__version__ = "0.1.0"
