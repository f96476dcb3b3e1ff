"""Placeholder rewriting for asyncmy: pure logic, no server needed."""

from __future__ import annotations

import pytest

from iogate.backends.mysql import bind_parameters, parse_mysql_url
from iogate.core.errors import ConfigError, ParameterError


@pytest.mark.parametrize(
    ("query", "args", "expected_sql", "expected_args"),
    [
        ("SELECT ?, ?", (1, 2), "SELECT %s, %s", (1, 2)),
        ("SELECT $1, $2", (1, 2), "SELECT %s, %s", (1, 2)),
        ("SELECT $2, $1, $2", (1, 2), "SELECT %s, %s, %s", (2, 1, 2)),
        ("SELECT %s", ("x",), "SELECT %s", ("x",)),
        # Placeholder characters inside literals, identifiers and comments stay text.
        (
            "SELECT '?', \"$1\", `a?` FROM t WHERE x = ?",
            (1,),
            "SELECT '?', \"$1\", `a?` FROM t WHERE x = %s",
            (1,),
        ),
        (
            "SELECT 'it''s ?', 'a\\' ?' , ? -- why?\n",
            (1,),
            "SELECT 'it''s ?', 'a\\' ?' , %s -- why?\n",
            (1,),
        ),
        ("SELECT /* ? */ ? # trailing ?", (1,), "SELECT /* ? */ %s # trailing ?", (1,)),
        # Literal percent signs are doubled for the driver's %-formatting.
        ("SELECT 'a%' , 7 % ?", (3,), "SELECT 'a%%' , 7 %% %s", (3,)),
        ("SELECT '%s' AS lit, ?", (1,), "SELECT '%%s' AS lit, %s", (1,)),
        # $ inside an identifier is not a placeholder.
        ("SELECT a$1 FROM t WHERE id = ?", (1,), "SELECT a$1 FROM t WHERE id = %s", (1,)),
    ],
)
def test_placeholders_become_pyformat(
    query: str, args: tuple[object, ...], expected_sql: str, expected_args: tuple[object, ...]
) -> None:
    assert bind_parameters(query, args) == (expected_sql, expected_args)


def test_query_without_parameters_is_sent_untouched() -> None:
    assert bind_parameters("SELECT 'a%', 5 % 3", ()) == ("SELECT 'a%', 5 % 3", None)


@pytest.mark.parametrize(
    ("query", "args", "message"),
    [
        ("SELECT ?", (), "expects 1 parameter, got 0"),
        ("SELECT ?, ?", (1,), "expects 2 parameters, got 1"),
        ("SELECT 1", (1,), "expects 0 parameters, got 1"),
        ("SELECT $3", (1, 2), "expects 3 parameters, got 2"),
        ("SELECT ?, $1", (1,), "mixes placeholder styles"),
        ("SELECT %s, ?", (1, 2), "mixes placeholder styles"),
        ("SELECT $0", (1,), "positions start at $1"),
    ],
)
def test_bad_parameter_counts_are_clear_errors(
    query: str, args: tuple[object, ...], message: str
) -> None:
    with pytest.raises(ParameterError, match=message.replace("$", r"\$")):
        bind_parameters(query, args)


def test_url_parsing_decodes_credentials_and_hides_the_password() -> None:
    target = parse_mysql_url("mysql://app%40x:p%40ss%2Fw0rd@db.local:3307/my_db?charset=utf8")
    assert (target.user, target.password, target.host, target.port) == (
        "app@x",
        "p@ss/w0rd",
        "db.local",
        3307,
    )
    assert (target.database, target.charset) == ("my_db", "utf8")
    assert "p@ss" not in repr(target)
    assert parse_mysql_url("mariadb://root@127.0.0.1/test").port == 3306


@pytest.mark.parametrize(
    "url", ["postgresql://u:secretpw@h/db", "mysql://u:secretpw@h/db?sslmode=require"]
)
def test_bad_urls_are_config_errors_without_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_mysql_url(url)
    assert "secretpw" not in str(info.value)
