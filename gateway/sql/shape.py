"""The *shape* of a statement: its text with the constants masked, without parsing it.

``shape(raw)`` serves the decision cache when a client sends the same statement with new
literals every time (``WHERE aid = 48213`` — what the simple query protocol does): two
texts with the same shape get the same decision without running PostgreSQL's parser.

That is only sound where tokenizing is unambiguous without a parser, so a shape exists
only for texts in a *safe subset* of SQL, and ``None`` is returned for anything else:

- bytes only from ``A-Z a-z 0-9 _``, space, tab, CR, LF and ``, . ( ) * = < > ; + - / % ! | :``
  and single quotes — no ``$`` (dollar quoting, parameters), ``"`` (quoted identifiers),
  backslash, ``&`` (``U&`` escapes), ``[ ] { } ? # @ ~ ^ `` or non-ASCII;
- no comment (``--``, ``/*``, ``*/``);
- every single-quoted string closes, holds no quote (no ``''``), and is not glued to a
  preceding letter, digit or ``_`` (which would make it ``E'…'``, ``B'…'``, ``X'…'``,
  ``N'…'`` or an ``identifier'…'`` sequence).

In that subset PostgreSQL's lexer splits the text exactly at the places this function
does, so replacing each string constant by ``'?'`` and each plain unsigned integer or
decimal constant (digits, optionally ``.digits``, not touching a letter, digit, ``_``,
``.`` or quote) by ``?`` yields texts that are equal only if their token streams are
equal but for the values of those constants — whitespace and everything else are kept
byte for byte. Their parse trees are then identical but for constant values, and so are
their classification and fingerprint, *unless* a decision depends on a constant's value:
the decision cache never stores such statements under a shape (``literal_sensitive``).
Numbers in other spellings (``1e5``, ``0x1F``, ``1_000``, ``.5``) are kept as they are:
such texts share less, never wrongly.

``shape`` is the C implementation (``_shape.c``) when it was built, else ``shape_py``;
tests check that both agree and that equal shapes mean equal normalized statements.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["shape", "shape_py", "variant"]

_SAFE = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_ \t\r\n,.()*=<>;+-/%!|:"
)
_IDENT = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_DIGITS = frozenset(b"0123456789")
_QUOTE = 0x27  # '
_DOT = 0x2E  # .


_STRING, _NUMBER, _OTHER = 0, 1, 2


def _tokens(raw: bytes) -> list[tuple[int, int, int]] | None:
    """``raw`` cut into (kind, start, end) pieces: string constants, plain number
    constants, and runs of everything else; ``None`` outside the safe subset."""
    n = len(raw)
    out: list[tuple[int, int, int]] = []
    i = 0
    while i < n:
        c = raw[i]
        if c == _QUOTE:
            if i > 0 and raw[i - 1] in _IDENT:
                return None
            j = i + 1
            while j < n and raw[j] != _QUOTE:
                if raw[j] not in _SAFE:
                    return None
                j += 1
            if j >= n or (j + 1 < n and raw[j + 1] == _QUOTE):
                return None
            out.append((_STRING, i, j + 1))
            i = j + 1
            continue
        if c not in _SAFE:
            return None
        nxt = raw[i + 1] if i + 1 < n else -1
        if (c == 0x2D and nxt == 0x2D) or (c == 0x2F and nxt == 0x2A) or (
            c == 0x2A and nxt == 0x2F
        ):
            return None
        if c in _DIGITS and (i == 0 or (raw[i - 1] not in _IDENT and raw[i - 1] != _DOT)):
            j = i
            while j < n and raw[j] in _DIGITS:
                j += 1
            plain = True
            if j < n and raw[j] == _DOT:
                if j + 1 < n and raw[j + 1] in _DIGITS:
                    j += 1
                    while j < n and raw[j] in _DIGITS:
                        j += 1
                else:
                    plain = False
            if j < n and (raw[j] in _IDENT or raw[j] == _DOT or raw[j] == _QUOTE):
                plain = False
            out.append((_NUMBER if plain else _OTHER, i, j))
            i = j
            continue
        out.append((_OTHER, i, i + 1))
        i += 1
    return out


def shape_py(raw: bytes) -> bytes | None:
    """The reference implementation (see the module docstring)."""
    tokens = _tokens(raw)
    if tokens is None:
        return None
    masks = {_STRING: b"'?'", _NUMBER: b"?"}
    return b"".join(masks.get(kind) or raw[a:b] for kind, a, b in tokens)


def variant(raw: bytes) -> bytes | None:
    """``raw`` with every constant that ``shape`` masks changed to another value of its
    kind (``None`` outside the safe subset).

    Why: ``shape`` masks every plain constant, but PostgreSQL's normalization (and so the
    decision a statement gets) keeps some — options of utility statements such as
    ``EXPLAIN (ANALYZE 0)`` or ``COPY t TO 'file'`` — whose value matters. The decision
    cache stores a decision under a shape only if the normalized text of ``variant(raw)``
    equals that of ``raw``: then every masked constant is one normalization replaces,
    whatever its value, and texts of that shape share one normalized statement.
    """
    tokens = _tokens(raw)
    if tokens is None:
        return None
    out = bytearray()
    for kind, a, b in tokens:
        token = raw[a:b]
        if kind == _STRING:
            out += b"'pgx'" if token == b"'pgw'" else b"'pgw'"
        elif kind == _NUMBER:
            out += b"8" if token.startswith(b"7") else b"7"
            if b"." in token:
                out += b".5"
        else:
            out += token
    return bytes(out)


shape: Callable[[bytes], bytes | None]
try:
    from gateway.sql._shape import shape as _shape_c
except ImportError:  # the optional extension was not built
    shape = shape_py
else:
    shape = _shape_c
