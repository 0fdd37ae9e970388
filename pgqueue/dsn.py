"""PostgreSQL DSNs: each one parsed before any connection or pool sees it, and shown only
with its passwords masked, in every form libpq accepts."""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Callable
from urllib.parse import quote

import psycopg
from psycopg import conninfo

from pgqueue.errors import InvalidDsn

MASK = "****"

# Keys whose values are secrets; a `passfile` path is not one.
_SECRET_KEYS = r"(?:ssl)?password|oauth_client_secret"


def _value(stop: str = "") -> str:
    """A key=value value: quoted ('a b', with \\' escapes, maybe unterminated) or a word."""
    return rf"(?:'(?:[^'\\]|\\[\s\S])*(?:'|\Z)|(?:[^\s\\{stop}]|\\[\s\S]?)+)"


def _rules(stop: str, stray_words: bool) -> tuple[tuple[re.Pattern[str], str], ...]:
    """(pattern, mask) pairs; a value ends where libpq ends it, or at a character of `stop`."""
    value = _value(stop)
    # Words after a key=value password that are not `key=` belong to no option: a valid DSN
    # has none; in a malformed one (password=my secret) they are likely the rest of it.
    stray = rf"(?:\s+(?![\w.-]+\s*=){value})*" if stray_words else ""
    return (
        # ?password=... or &password=... in a URL's query string.
        (re.compile(rf"(?P<keep>[?&](?:{_SECRET_KEYS})=)[^&\n{stop}]*", re.I), MASK),
        # password=value in key=value form.
        (
            re.compile(rf"(?P<keep>(?<![\w?&.-])(?:{_SECRET_KEYS})\s*=\s*){value}{stray}", re.I),
            MASK,
        ),
        # scheme://user:password@, the scheme possibly misspelt. libpq ends the password at
        # the first '@', an AMQP client at the last, and an unencoded '/' in it fools both:
        # up to the last '@' before the query string is masked, more than the password at
        # worst, never less.
        (
            re.compile(rf"(?P<keep>[A-Za-z][A-Za-z0-9+.-]*:/+[^\s:/@'\"]*:)[^?\n{stop}]*@"),
            MASK + "@",
        ),
        # user:password@host without `scheme://` (postgresql:/u:pw@h, u:pw@h/db).
        (re.compile(r"(?P<keep>(?<![\w.+-])[\w.-]+:)[^\s/@]+@"), MASK + "@"),
    )


# A DSN on its own: values run as far as libpq reads them.
_DSN_RULES = _rules("", stray_words=True)
# A DSN inside a message: values also end at a space (libpq refuses one in a URL) or a quote;
# a double-quoted stretch, as libpq quotes a DSN, is masked as a DSN on its own.
_TEXT_RULES = _rules("\\s'\"", stray_words=False)
_DOUBLE_QUOTED = re.compile(r'"([^"]*)"')

# A password is also replaced wherever it appears on its own (a message that quotes a
# fragment of a DSN); shorter ones would mask common letters and hide nothing.
_MIN_REMEMBERED = 4
_remembered: set[str] = set()


def _apply(rules: tuple[tuple[re.Pattern[str], str], ...], text: str) -> str:
    for pattern, mask in rules:
        text = pattern.sub(r"\g<keep>" + mask, text)
    return text


def mask_dsn(dsn: str) -> str:
    """`dsn` (libpq's URL or key=value form, or an AMQP URL) with every password as '****'.

    >>> mask_dsn("postgresql://app:s3cret@db/app?sslmode=require")
    'postgresql://app:****@db/app?sslmode=require'
    >>> mask_dsn("host=db user=app password='s3 cret' dbname=app")
    'host=db user=app password=**** dbname=app'
    """
    return _apply(_DSN_RULES, dsn)


def redact(text: str) -> str:
    """A message with the passwords of the DSNs and URLs it holds masked, and the password
    of every DSN parsed so far wherever it still appears."""
    pieces, end = [], 0
    for quoted in _DOUBLE_QUOTED.finditer(text):
        pieces += [_apply(_TEXT_RULES, text[end : quoted.start()]), f'"{mask_dsn(quoted[1])}"']
        end = quoted.end()
    text = "".join([*pieces, _apply(_TEXT_RULES, text[end:])])
    for secret in sorted(_remembered, key=len, reverse=True):  # a password inside another
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def parse_dsn(dsn: str) -> dict[str, str]:
    """The parameters of a libpq DSN (URL or key=value); InvalidDsn, showing it masked and
    what is wrong, if libpq cannot parse it."""
    try:
        params = {key: str(value) for key, value in conninfo.conninfo_to_dict(dsn).items()}
    except psycopg.ProgrammingError as error:
        text = " ".join(str(error).split())
        fragments = re.findall(r'"([^"]*)"', text)
        fragment = fragments[-1] if fragments else ""
        raise InvalidDsn(
            f"the PostgreSQL DSN {_shown(dsn, fragment)!r} cannot be parsed: "
            f"{_problem(text, dsn, fragment)}; write postgresql://user:password@host:port/dbname "
            "or key=value pairs (check PGQUEUE_DSN / task.dsn)"
        ) from None  # the cause's text may quote the DSN
    for key in ("password", "sslpassword"):
        secret = params.get(key, "")
        if len(secret) >= _MIN_REMEMBERED:
            _remembered.update({secret, quote(secret, safe="")})
    return params


def describe_dsn(dsn: str) -> str:
    """postgresql://user@host:port/dbname of a DSN, never its password."""
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    user = params.get("user") or "(default user)"
    return f"postgresql://{user}@{host}:{port}/{params.get('dbname') or user}"


# -- what libpq could not parse, in words that never quote the DSN --------------------------
# libpq's own messages quote the DSN, or the piece it stopped at: a password or part of one.


def _scheme_or_word(dsn: str, _name: str) -> str:
    scheme = re.match(r"\s*([A-Za-z][A-Za-z0-9+.-]*)://", dsn)
    if scheme:
        return f"{scheme.group(1)}:// is not postgresql:// or postgres://"
    return (
        "a word without '=' (key=value pairs are separated by spaces; quote a value that "
        "holds a space: password='a b')"
    )


def _unknown(what: str) -> Callable[[str, str], str]:
    def describe(_dsn: str, name: str) -> str:
        close = difflib.get_close_matches(name, _keywords(), n=1, cutoff=0.75)
        return what + (f" (did you mean {close[0]!r}?)" if close else "")

    return describe


def _fixed(words: str) -> Callable[[str, str], str]:
    return lambda _dsn, _name: words


_PROBLEMS: tuple[tuple[str, Callable[[str, str], str]], ...] = (
    ('missing "=" after', _scheme_or_word),
    ("unterminated quoted string", _fixed("a quoted value has no closing quote")),
    ("invalid connection option", _unknown("an unknown connection option")),
    ("invalid URI query parameter", _unknown("an unknown parameter in the query string")),
    ("missing key/value separator", _fixed("a query-string parameter without '='")),
    ("extra key/value separator", _fixed("a query-string value holds '=' (write it %3D)")),
    ("invalid percent-encoded token", _fixed("a '%' that starts no %XX escape (write %25)")),
    ("forbidden value %00", _fixed("%00 (a NUL character)")),
    ("end of string reached when looking for matching", _fixed("an IPv6 address without ']'")),
    ("IPv6 host address may not be empty", _fixed("an empty IPv6 address []")),
    ("unexpected character", _fixed("an unexpected character after the host")),
    ("unexpected spaces found", _fixed("a space in the URL (write it %20)")),
)


def _problem(text: str, dsn: str, fragment: str) -> str:
    for start, describe in _PROBLEMS:
        if text.startswith(start):
            return describe(dsn, fragment)
    # A message this libpq version words differently: without anything it quotes.
    return mask_dsn(re.sub(r'"[^"]*"', '"…"', text)) or "libpq cannot parse it"


def _shown(dsn: str, fragment: str) -> str:
    """The DSN masked, and the piece libpq stopped at too (a stray word, a query parameter
    without '=', an unknown option's value), which may be a password or part of one."""
    whole_url = fragment.strip() == dsn.strip() and "://" in dsn
    if fragment and not whole_url and fragment not in _keywords():
        hide = re.compile(rf"(?<![^\s?&=:]){re.escape(fragment)}(?P<value>\s*=\s*{_value()})?")
        dsn = hide.sub(lambda m: f"{fragment}={MASK}" if m.group("value") else MASK, dsn)
    return mask_dsn(dsn)


def _keywords() -> list[str]:
    return [option.keyword.decode() for option in psycopg.pq.Conninfo.get_defaults()]


# -- logging: the last line of defence ------------------------------------------------------


class MaskPasswords(logging.Filter):
    """Masks passwords in the records of the logger it is on (psycopg_pool's 'error
    connecting' warnings carry libpq's text, which quotes a DSN it cannot parse)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


_FILTER = MaskPasswords()


def mask_psycopg_logs() -> None:
    """Put the filter on psycopg's loggers (a logger's filters do not see its children's
    records, hence each)."""
    for name in ("psycopg", "psycopg.pool"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
