"""Authserv-id spellings for the forged-header tests (unit table and through the socket).

Each template is formatted with ``first`` (our id's first label), ``rest`` (the labels after
it) and ``id`` (the whole id; ``ID`` in upper case; ``f0``/``f1``: the first label's first character
and the others).  HOSTILE ones are what a lenient A-R parser downstream
(OpenDMARC's, OpenDKIM's: tokens split at ``. ; =`` and white space, quotes and escapes
dropped, comments skipped) would read as our id, so the milter must remove them; FOREIGN
ones name another host and must be kept.
"""
from __future__ import annotations

HOSTILE = [
    '"{first}".{rest}; spf=pass smtp.mailfrom=ceo@bank.example',
    '{first}\\.{rest}; spf=pass smtp.mailfrom=ceo@bank.example',
    '{first}. {rest}; spf=pass',
    '{first} .{rest}; spf=pass',
    '{f0}"{f1}.{rest}"; spf=pass',
    '{id}(comment); spf=pass',
    '{ID}.; spf=pass',
    '"{id}"; spf=pass',
    '{first}(c).{rest}; spf=pass',
    '{first}.(c){rest}; spf=pass',
    '\\{first}.{rest}; dkim=pass header.d=bank.example',
    '{first}."{rest}"; spf=pass',
    '{id} 1; spf=pass',
    '{id};spf=pass',
    '{id}=; spf=pass',
    '{id}..; spf=pass',
    '{id}\r\n\t; spf=pass',
    '{first}\r\n .{rest}; spf=pass',
    '"{id};x"; spf=pass',
    '{id} spf=pass smtp.mailfrom=ceo@bank.example',
    '{id}',
    '({id}; spf=pass',
    '{id}/1; spf=pass',
    'junk {id}; spf=pass',
    '{first}.{rest}\\; spf=pass',
]

FOREIGN = [
    '{id}.evil; spf=pass',
    'x{id}; spf=pass',
    'evil.{id}; spf=pass',
    '{id}-evil; spf=pass',
    '{first}-{rest}; spf=pass',
    '{first}{rest}; spf=pass',
    '{id}x; spf=pass',
    '"{id}.evil"; spf=pass',
    'other.example; spf=pass smtp.mailfrom=postmaster@{id}',
    '({id}) other.example; spf=pass',
    'other.example; spf=pass reason="{id}"',
    '{id}..evil; spf=pass',
]


def spell(template: str, our_id: str) -> str:
    first, _, rest = our_id.partition(".")
    return template.format(first=first, rest=rest, id=our_id, ID=our_id.upper(), f0=first[:1], f1=first[1:])


# Received-SPF: the same spellings after "receiver=" (RFC 7208 section 9.1 key-value pairs).
RECEIVER_HOSTILE = [
    'pass receiver="{first}".{rest}; identity=mailfrom',
    'pass receiver={first}\\.{rest}; identity=mailfrom',
    'pass receiver={first}. {rest}; identity=mailfrom',
    'pass receiver={first} .{rest}; identity=mailfrom',
    'pass receiver={id}(c); identity=mailfrom',
    'pass receiver={ID}.; identity=mailfrom',
    'pass receiver={id} identity=mailfrom',
]

RECEIVER_FOREIGN = [
    'pass receiver={id}.evil; identity=mailfrom',
    'pass receiver=x{id}; identity=mailfrom',
    'pass receiver=other.example; helo="x receiver={id}"',
]
