"""Fixtures the SRS milter tests share: the secrets file and the forwarding table the milter reads."""
from __future__ import annotations

import pytest

from tests.support.sessions import write_secrets


@pytest.fixture(scope="module")
def secrets_file(tmp_path_factory):
    return write_secrets(tmp_path_factory.mktemp("srs") / "srs-secrets")


@pytest.fixture(scope="module")
def forward_table(tmp_path_factory):
    path = tmp_path_factory.mktemp("srs") / "virtual"
    path.write_text("# forwarded mailboxes\n"
                    "fwd@mx.test    someone@remote.example\n"
                    "list@mx.test   local1@mx.test,\n"
                    "               local2@mx.test\n"  # continuation: still only local targets
                    "@alias.mx.test  catchall@remote.example\n")
    return path
