"""Classify untrusted MariaDB/MySQL statements with sqlglot's MySQL dialect.

Unlike PostgreSQL (pglast embeds the server's own parser), no maintained
library embeds MariaDB's parser, so a second parser reads the statement. The
danger of a second parser is a *lexical* disagreement: text that sqlglot
reads as a string or a comment while MariaDB executes it, or the reverse
(``SELECT 'a\\' , LOAD_FILE(...) -- '`` under ``NO_BACKSLASH_ESCAPES``).
So a statement is accepted only in a subset of the language on whose
tokens both lexers provably agree, and everything outside it is refused:

- no comment of any kind (``kind="comment"``). MariaDB *executes*
  ``/*! ... */`` and ``/*M! ... */``; sqlglot reads ``/*+ ... */`` as an
  optimizer hint where MariaDB 10 skips it; and the two lexers disagree at the
  edges of the others (``--`` followed by a control or a Unicode space
  character, nested ``/*``). Checked on sqlglot's tokens, not with a
  regular expression: every character between two tokens must be ASCII
  whitespace, so any text sqlglot skipped (a comment) is refused. Two
  adjacent ``-`` are refused as well: ``--x`` is two minus signs in both
  lexers today, but it is one character away from a comment.
- no backslash (``kind="backslash"``): its meaning in a literal depends on
  the session's ``sql_mode`` (``NO_BACKSLASH_ESCAPES``, ``ANSI_QUOTES``),
  which sqlglot cannot know, and outside one ``\\N`` is NULL. A value with a
  backslash belongs in a parameter.
- no ASCII control character other than tab, CR and LF
  (``kind="control character"``), no ``{...}`` ODBC escape (MariaDB
  evaluates ``{x expr}``), and every token must look to MariaDB like the
  token sqlglot made of it: a quoted token starts with its quote, a word is
  made of identifier characters only (``5.a`` is one word to sqlglot, a
  number and an alias to MariaDB).

With its lexing settled, the statement must be exactly one (a single
trailing ``;`` is allowed) data statement: ``SELECT``/``UNION``/``WITH``
(reads) or ``INSERT``/``REPLACE``/``UPDATE``/``DELETE`` (writes). Whatever
else it is (``SET`` in every form including ``SET STATEMENT ... FOR``,
transaction control, ``LOCK``, DDL, ``CALL``, ``DO``, ``HANDLER``,
``PREPARE``, ``LOAD DATA``...) is refused before parsing, named by its
leading words; text sqlglot cannot parse is refused too. Inside a data
statement: no ``INTO`` (``OUTFILE``, ``DUMPFILE``, ``@var``), no
user-variable assignment (``:=``), no call of a function in
``FORBIDDEN_FUNCTIONS["mysql"]`` and no table in the ``mysql``,
``performance_schema`` or ``sys`` schemas (privilege tables, and tables
whose writes no transaction undoes).

The caller also passes where it put ``?`` placeholders; they must be exactly
sqlglot's placeholder tokens, so a value is never spliced into what the
server reads as the inside of a literal.

Verdicts (:class:`iogate.core.sqlguard.Verdict`) are cached by text.
"""

from __future__ import annotations

import functools
from typing import ClassVar

from sqlglot import exp
from sqlglot.dialects.mysql import MySQL
from sqlglot.errors import SqlglotError
from sqlglot.tokenizer_core import Token, TokenType

from iogate.core.sqlguard import Verdict, forbidden_function, refused

__all__ = ["classify_mysql"]

_CACHE_SIZE = 2048
# Longer texts are classified every time instead of filling the cache.
_CACHE_CHARS = 8192

_DIALECT = MySQL()


class _Tokenizer(MySQL.Tokenizer):
    # sqlglot turns the rest of a statement after a "command" word (CALL,
    # PREPARE, EXECUTE, REPLACE...) into one string token, and does it even
    # mid-statement after a word it takes for BEGIN (``SELECT start execute,
    # LOAD_FILE(...)``). Guarded SQL is tokenized all the way through.
    COMMANDS: ClassVar[set[TokenType]] = set()


_SPACE = frozenset(" \t\r\n")
_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")
_OPERATORS = frozenset("!%&()*+,-./:;<=>?@^|~[]")
_QUOTED_TOKENS = frozenset(
    {
        TokenType.STRING,
        TokenType.NATIONAL_STRING,
        TokenType.HEX_STRING,
        TokenType.BIT_STRING,
        TokenType.BYTE_STRING,
        TokenType.RAW_STRING,
        TokenType.HEREDOC_STRING,
        TokenType.UNICODE_STRING,
        TokenType.IDENTIFIER,
    }
)
_WORD_TOKENS = frozenset({TokenType.VAR, TokenType.IDENTIFIER, TokenType.INTRODUCER})

# The leading token of a data statement.
_DATA_STARTS = frozenset(
    {
        TokenType.SELECT,
        TokenType.WITH,
        TokenType.L_PAREN,
        TokenType.INSERT,
        TokenType.REPLACE,
        TokenType.UPDATE,
        TokenType.DELETE,
    }
)
_READS: dict[type[exp.Expr], str] = {
    exp.Select: "SELECT",
    exp.Union: "UNION",
    exp.Intersect: "INTERSECT",
    exp.Except: "EXCEPT",
}
_WRITES: dict[type[exp.Expr], str] = {
    exp.Insert: "INSERT",
    exp.Update: "UPDATE",
    exp.Delete: "DELETE",
}
# Statements that may not appear anywhere inside a data statement.
_NEVER_NESTED: tuple[type[exp.Expr], ...] = (
    exp.Command,
    exp.Set,
    exp.Transaction,
    exp.Commit,
    exp.Rollback,
    exp.Create,
    exp.Drop,
    exp.Alter,
    exp.TruncateTable,
    exp.Use,
    exp.Kill,
    exp.LoadData,
    exp.Grant,
    exp.Revoke,
    exp.Describe,
    exp.Show,
    exp.Pragma,
    exp.Copy,
    exp.Execute,
    exp.Declare,
    exp.Analyze,
    exp.Merge,
    exp.Insert,
    exp.Update,
    exp.Delete,
)
_SYSTEM_SCHEMAS = frozenset({"mysql", "performance_schema", "sys"})
# Words after the first that make a refused statement's kind clearer.
_KIND_WORDS = frozenset(
    {"STATEMENT", "TRANSACTION", "DATA", "XML", "NAMES", "PASSWORD", "ROLE", "PREPARE", "GLOBAL"}
)
_NOT_KIND_WORDS = frozenset({"ALL", "AND", "EXISTS", "FROM", "IF", "INTO", "ON", "TO", "WORK"})


def classify_mysql(query: str, placeholders: tuple[int, ...] = ()) -> Verdict:
    """The verdict on ``query``, whose ``?`` placeholders are at ``placeholders``."""
    if len(query) <= _CACHE_CHARS:
        return _classify_cached(query, placeholders)
    return _classify(query, placeholders)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _classify_cached(query: str, placeholders: tuple[int, ...]) -> Verdict:
    return _classify(query, placeholders)


def _classify(query: str, placeholders: tuple[int, ...]) -> Verdict:
    verdict = _characters(query)
    if verdict is not None:
        return verdict
    try:
        tokens = _Tokenizer(dialect=_DIALECT).tokenize(query)  # one each: it has state
    except SqlglotError:
        return _unreadable("it cannot be tokenized (an unterminated quote or comment?)")
    verdict = _comments(query, tokens)
    if verdict is not None:
        return verdict
    if tokens and tokens[-1].token_type is TokenType.SEMICOLON:
        tokens = tokens[:-1]  # one optional terminator, as MariaDB allows
    if not tokens:
        return Verdict("empty", refusal="the statement is empty")
    if any(token.token_type is TokenType.SEMICOLON for token in tokens):
        return Verdict(
            "multiple statements",
            refusal="only one statement may run per operation (remove the ';')",
        )
    if tokens[0].token_type not in _DATA_STARTS:
        return refused(_leading_words(tokens), "only data statements may run")
    verdict = _token_rules(query, tokens, placeholders)
    if verdict is not None:
        return verdict
    return _statement(query, tokens)


def _characters(query: str) -> Verdict | None:
    for char in query:
        if char == "\\":
            return Verdict(
                "backslash",
                refusal="a backslash means different things under different sql_mode "
                "settings; pass the value as a parameter",
            )
        if (char < " " and char not in _SPACE) or char == "\x7f":
            return Verdict(
                "control character",
                refusal=f"control character {char!r} in the statement text",
            )
    return None


def _comments(query: str, tokens: list[Token]) -> Verdict | None:
    """Refuse anything sqlglot skipped between tokens: a comment."""
    position = 0
    previous: Token | None = None
    for token in [*tokens, None]:
        start = token.start if token is not None else len(query)
        gap = query[position:start]
        if not _SPACE.issuperset(gap):
            return _skipped(gap.lstrip("".join(_SPACE)))
        if token is not None and token.token_type is TokenType.HINT:
            # /*+ ... */ is a token to sqlglot and a comment to MariaDB 10.
            return _comment(query[token.start : token.end + 1])
        if (
            token is not None
            and previous is not None
            and token.token_type is TokenType.DASH
            and previous.token_type is TokenType.DASH
            and previous.end + 1 == token.start
        ):
            return _comment("--")
        if token is not None:
            position = token.end + 1
            previous = token
    return None


def _skipped(text: str) -> Verdict:
    if not text.startswith(("/*", "#", "--")):
        return Verdict(
            "whitespace",
            refusal="only ASCII spaces, tabs and line breaks may separate words "
            f"(found {text[:1]!r})",
        )
    return _comment(text)


def _comment(text: str) -> Verdict:
    if text.startswith(("/*!", "/*M!")):
        return Verdict(
            "versioned comment",
            refusal="MariaDB executes the text of /*! ... */ comments; comments are "
            "not allowed in guarded SQL",
        )
    return Verdict(
        "comment",
        refusal="comments are not allowed in guarded SQL (MariaDB executes some of "
        "them, and '--' followed by a character other than a space is ambiguous)",
    )


def _token_rules(query: str, tokens: list[Token], placeholders: tuple[int, ...]) -> Verdict | None:
    found: list[int] = []
    for index, token in enumerate(tokens):
        kind = token.token_type
        raw = query[token.start : token.end + 1]
        if kind in (TokenType.L_BRACE, TokenType.R_BRACE):
            return refused("ODBC escape", "MariaDB evaluates the expression in {...}")
        if not _agrees_with_mariadb(kind, raw):
            return _unreadable(f"MariaDB may read {raw[:40]!r} differently")
        if kind is TokenType.COLON_EQ:
            return refused(
                "variable assignment", "':=' sets a user variable that outlives the statement"
            )
        if kind is TokenType.INTO and index + 1 < len(tokens):
            target = _into_target(tokens[index + 1])
            if target is not None:
                return refused(f"INTO {target}", "it writes outside the database's tables")
        nxt = tokens[index + 1] if index + 1 < len(tokens) else None
        if (
            nxt is not None
            and nxt.token_type is TokenType.L_PAREN
            and forbidden_function("mysql", token.text)
        ):
            return refused(
                f"{token.text.upper()}()",
                "its effects outlive the transaction or leave the database",
            )
        if kind is TokenType.PLACEHOLDER:
            found.append(token.start)
    if tuple(found) != placeholders:
        return Verdict(
            "placeholder",
            refusal="a '?' placeholder is inside a literal or a literal '?' is outside "
            "one; pass literal text containing '?' as a parameter",
        )
    return None


def _agrees_with_mariadb(kind: TokenType, raw: str) -> bool:
    """Would MariaDB's lexer cut and read this token as sqlglot did?"""
    if kind in _QUOTED_TOKENS and not _WORD.issuperset(raw):
        # A quoted string or identifier (N'..', X'..', B'..' included).
        quote = raw[1] if raw[:1] in "nNxXbB" and raw[1:2] == "'" else raw[:1]
        return quote in ("'", '"', "`") and len(raw) >= 2 and raw[-1] == quote
    if "/*" in raw or "*/" in raw or "--" in raw:
        return False
    for char in raw:
        if char in _WORD or char in _SPACE or char in _OPERATORS:
            continue
        if char > "\x7f" and not char.isspace():
            continue  # MariaDB reads any other non-ASCII character as part of a name
        return False
    if kind in _WORD_TOKENS:
        return "." not in raw and not _SPACE.intersection(raw)
    return True


def _into_target(token: Token) -> str | None:
    if token.token_type in (TokenType.PARAMETER, TokenType.SESSION_PARAMETER):
        return "@variable"
    if token.token_type is TokenType.VAR and token.text.upper() in ("OUTFILE", "DUMPFILE"):
        return token.text.upper()
    return None


def _statement(query: str, tokens: list[Token]) -> Verdict:
    replace = tokens[0].token_type is TokenType.REPLACE
    if replace:
        # REPLACE has INSERT's grammar; sqlglot only knows the latter.
        first = tokens[0]
        insert = Token(TokenType.INSERT, first.text, first.line, first.col, first.start, first.end)
        tokens = [insert, *tokens[1:]]
    try:
        statements = _DIALECT.parser().parse(tokens, query)
    except SqlglotError:
        return _unreadable("sqlglot cannot parse it", kind=_leading_words(tokens))
    if len(statements) != 1 or statements[0] is None:
        return Verdict("multiple statements", refusal="only one statement may run per operation")
    root = statements[0]
    if type(root) in _READS:
        verdict = Verdict(_READS[type(root)])
    elif type(root) in _WRITES:
        verdict = Verdict("REPLACE" if replace else _WRITES[type(root)], writes=True)
    else:
        return refused(_leading_words(tokens), "only data statements may run")
    for node in root.walk():
        if node is root:
            continue
        if isinstance(node, exp.Into):
            return refused("SELECT INTO", "it writes outside the statement's result")
        if isinstance(node, _NEVER_NESTED):
            return refused(type(node).__name__.upper(), "only data statements may run")
        if isinstance(node, exp.Func) and any(
            forbidden_function("mysql", name) for name in _function_names(node)
        ):
            name = _function_names(node)[0].upper()
            return refused(f"{name}()", "its effects outlive the transaction")
        if isinstance(node, exp.Table) and node.db.lower() in _SYSTEM_SCHEMAS:
            return refused(
                "system schema", f"tables of the {node.db.lower()!r} schema are not data"
            )
    return verdict


def _function_names(node: exp.Func) -> list[str]:
    if isinstance(node, exp.Anonymous):
        return [node.name]
    return [*type(node).sql_names(), node.key]


def _leading_words(tokens: list[Token]) -> str:
    """The statement's kind for a message: ``SET``, ``CREATE TEMPORARY TABLE``..."""
    words = [tokens[0].text.upper()]
    for token in tokens[1:3]:
        text = token.text.upper()
        if (
            token.token_type in _QUOTED_TOKENS
            or (token.token_type in _WORD_TOKENS and text not in _KIND_WORDS)
            or text in _NOT_KIND_WORDS
        ):
            break
        if not text.replace(" ", "").replace("_", "").isalpha():
            break
        words.append(text)
    return " ".join(words)


def _unreadable(why: str, *, kind: str = "unparseable") -> Verdict:
    return Verdict(kind, refusal=f"the statement cannot be checked: {why}")
