"""Reading our headers back from messages a test MTA delivered."""
from __future__ import annotations

import re

import authres


def our_authentication_results(delivered, authserv_id: str = "mx.test") -> dict:
    """{identity: (result, value)} from the one Authentication-Results header of a delivered message.

    Exactly one must be there: ours, with any forged copy from the client removed.
    """
    ars = delivered.get_all("Authentication-Results") or []
    assert len(ars) == 1, ars
    parsed = authres.AuthenticationResultsHeader.parse("Authentication-Results: " + re.sub(r"\s+", " ", ars[0]))
    assert parsed.authserv_id == authserv_id
    assert all(r.method == "spf" for r in parsed.results)
    return {r.properties[0].name: (r.result, r.properties[0].value) for r in parsed.results}


def our_received_spf(delivered) -> dict:
    """{identity: result} from the Received-SPF headers of a delivered message (none may be forged)."""
    found = {}
    for value in delivered.get_all("Received-SPF") or []:
        value = re.sub(r"\s+", " ", value)
        assert "forged" not in value, value
        found[re.search(r"identity=(\w+)", value).group(1)] = value.split()[0]
    return found
