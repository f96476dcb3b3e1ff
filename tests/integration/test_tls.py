"""Connection encryption (issue #7) against real TLS endpoints on 127.0.0.1.

A throwaway PKI is made with the ``openssl`` command: a test CA, a server
certificate it signs for ``127.0.0.1``/``localhost``, one for another host
name, and an unrelated CA. The HTTPS upstream is an aiohttp server with that
certificate; Redis is the real server behind a TLS-terminating asyncio proxy
(so ``rediss://`` is real Redis over real TLS); PostgreSQL is the configured
server when it has ``ssl = on``, else a throwaway cluster started with TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from iogate import AsyncPostgreSQLManager, AsyncRedisManager
from iogate.backends.base import AsyncDatabaseManager
from iogate.backends.http import AsyncAPIManager, ExternalAPISession
from iogate.core.errors import APIConnectionError, ConfigError
from iogate.gateway.settings import parse_settings
from tests.conftest import free_port, unavailable

# -- a throwaway PKI ------------------------------------------------------------------


@dataclass(frozen=True)
class PKI:
    ca: Path  # the CA that signed the server certificates
    other_ca: Path  # a CA that signed nothing here
    server_cert: Path
    server_key: Path
    wrong_host_cert: Path  # signed by ``ca`` for another host name
    wrong_host_key: Path

    def server_context(self, *, wrong_host: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if wrong_host:
            context.load_cert_chain(self.wrong_host_cert, self.wrong_host_key)
        else:
            context.load_cert_chain(self.server_cert, self.server_key)
        return context


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(directory: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "2", "-subj", f"/CN=iogate test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", f"{name}.key", "-out", f"{name}.pem",
        cwd=directory,
    )  # fmt: skip


def _make_server_cert(directory: Path, name: str, ca: str, alt_names: str) -> None:
    (directory / f"{name}.ext").write_text(
        f"subjectAltName={alt_names}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
        cwd=directory,
    )  # fmt: skip


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    if shutil.which("openssl") is None:
        unavailable("the openssl command is not installed (needed to make test certificates)")
    directory = tmp_path_factory.mktemp("pki")
    _make_ca(directory, "ca")
    _make_ca(directory, "other_ca")
    _make_server_cert(directory, "server", "ca", "IP:127.0.0.1,DNS:localhost")
    _make_server_cert(directory, "wrong_host", "ca", "DNS:not-this-host.example")
    for key in directory.glob("*.key"):
        key.chmod(0o600)
    return PKI(
        ca=directory / "ca.pem",
        other_ca=directory / "other_ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        wrong_host_cert=directory / "wrong_host.pem",
        wrong_host_key=directory / "wrong_host.key",
    )


# -- HTTPS upstream --------------------------------------------------------------------


@dataclass
class HttpsUpstream:
    port: int = 0
    wrong_host_port: int = 0
    hits: int = 0

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/v1"


@pytest.fixture
async def https_upstream(pki: PKI) -> AsyncIterator[HttpsUpstream]:
    upstream = HttpsUpstream()

    async def ok(request: web.Request) -> web.Response:
        upstream.hits += 1
        return web.json_response({"ok": True, "tls": request.secure})

    app = web.Application()
    app.router.add_get("/v1/ok", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=pki.server_context())
    wrong_host = web.TCPSite(
        runner, "127.0.0.1", 0, ssl_context=pki.server_context(wrong_host=True)
    )
    await site.start()
    await wrong_host.start()
    upstream.port = _bound_port(site)
    upstream.wrong_host_port = _bound_port(wrong_host)
    try:
        yield upstream
    finally:
        await runner.cleanup()


def _bound_port(site: web.TCPSite) -> int:
    server = site._server
    assert isinstance(server, asyncio.Server)
    port: int = server.sockets[0].getsockname()[1]
    return port


def _api(base_url: str, **options: object) -> AsyncAPIManager:
    # Three attempts and no waits: a retried TLS failure would show in attempts.
    return AsyncAPIManager(
        base_url,
        retry={"attempts": 3, "backoff_initial": 0.0, "backoff_max": 0.0},
        timeout=10,
        **options,  # type: ignore[arg-type]
    )


async def test_https_with_the_ca_bundle_succeeds(pki: PKI, https_upstream: HttpsUpstream) -> None:
    async with _api(https_upstream.base_url, ca_bundle=str(pki.ca)) as api:
        result = await api.get("/ok")
    assert result.success, result.error
    assert result.status_code == 200
    assert result.data == {"ok": True, "tls": True}


@pytest.mark.parametrize("ca", ["system", "other_ca"])
async def test_https_untrusted_certificate_fails_once_and_names_the_host(
    pki: PKI, https_upstream: HttpsUpstream, ca: str
) -> None:
    options = {} if ca == "system" else {"ca_bundle": str(pki.other_ca)}
    async with _api(https_upstream.base_url, **options) as api:
        result = await api.get("/ok")
    assert not result.success
    assert result.error_type == "connection_error"
    assert result.error is not None
    assert "certificate verify failed" in result.error
    assert "for 127.0.0.1" in result.error
    assert result.attempts == 1  # never retried: the next handshake would fail alike
    assert https_upstream.hits == 0


async def test_https_host_name_is_checked(pki: PKI, https_upstream: HttpsUpstream) -> None:
    base_url = f"https://127.0.0.1:{https_upstream.wrong_host_port}/v1"
    async with _api(base_url, ca_bundle=str(pki.ca)) as api:
        result = await api.get("/ok")
    assert result.error_type == "connection_error"
    assert result.error is not None
    assert "certificate verify failed" in result.error
    assert "127.0.0.1" in result.error
    assert https_upstream.hits == 0


async def test_https_verify_ssl_false_accepts_any_certificate(
    https_upstream: HttpsUpstream,
) -> None:
    async with _api(https_upstream.base_url, verify_ssl=False) as api:
        result = await api.get("/ok")
    assert result.success, result.error
    assert https_upstream.hits == 1


async def test_ping_does_the_tls_handshake(pki: PKI, https_upstream: HttpsUpstream) -> None:
    async with _api(https_upstream.base_url, ca_bundle=str(pki.ca)) as trusted:
        await trusted.ping()
    async with _api(https_upstream.base_url, ca_bundle=str(pki.other_ca)) as untrusted:
        with pytest.raises(APIConnectionError, match="certificate verify failed"):
            await untrusted.ping()


def test_missing_ca_bundle_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        AsyncAPIManager("https://127.0.0.1:1/v1", ca_bundle=str(missing))
    not_pem = tmp_path / "not-a-ca.pem"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=re.escape(str(not_pem))):
        ExternalAPISession("https://127.0.0.1:1/v1", ca_bundle=str(not_pem))


def test_ca_bundle_with_verification_off_is_a_config_error(pki: PKI) -> None:
    with pytest.raises(ConfigError, match="verify_ssl"):
        AsyncAPIManager("https://127.0.0.1:1/v1", verify_ssl=False, ca_bundle=str(pki.ca))


async def test_external_api_session_takes_the_same_options(
    pki: PKI, https_upstream: HttpsUpstream
) -> None:
    async with ExternalAPISession(https_upstream.base_url, ca_bundle=str(pki.ca)) as trusted:
        async with trusted.session.get("ok") as response:
            assert response.status == 200
    async with ExternalAPISession(https_upstream.base_url) as default:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with default.session.get("ok"):
                pass
    async with ExternalAPISession(https_upstream.base_url, verify_ssl=False) as unverified:
        async with unverified.session.get("ok") as response:
            assert response.status == 200
    assert https_upstream.hits == 2


async def test_gateway_settings_carry_the_ca_bundle(
    pki: PKI, https_upstream: HttpsUpstream
) -> None:
    settings = parse_settings(
        f"""
        [apis.private]
        base_url = "{https_upstream.base_url}"
        ca_bundle = "${{PRIVATE_CA}}"
        """,
        env={"PRIVATE_CA": str(pki.ca)},
    )
    api = settings.apis["private"]
    assert (api.verify_ssl, api.ca_bundle) == (True, str(pki.ca))
    async with AsyncAPIManager(
        api.base_url, verify_ssl=api.verify_ssl, ca_bundle=api.ca_bundle
    ) as manager:
        result = await manager.get("/ok")
    assert result.success, result.error


# -- Redis behind a TLS-terminating proxy ------------------------------------------------


@dataclass
class TLSProxy:
    """TLS on the outside, the real Redis (plain TCP) on the inside."""

    port: int = 0
    forwarded: int = 0  # connections that completed the handshake
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


@pytest.fixture
async def redis_tls_proxy(pki: PKI, redis_url: str) -> AsyncIterator[TLSProxy]:
    inner = urlsplit(redis_url)
    proxy = TLSProxy()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        # Called only after the TLS handshake succeeded.
        proxy.forwarded += 1
        redis_r, redis_w = await asyncio.open_connection(inner.hostname, inner.port or 6379)
        await asyncio.gather(_pipe(client_r, redis_w), _pipe(redis_r, client_w))

    def track(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(handle(client_r, client_w))
        proxy.tasks.add(task)
        task.add_done_callback(proxy.tasks.discard)

    server = await asyncio.start_server(track, "127.0.0.1", 0, ssl=pki.server_context())
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        for task in list(proxy.tasks):
            task.cancel()
        await asyncio.gather(*proxy.tasks, return_exceptions=True)
        await server.wait_closed()


def _rediss(proxy: TLSProxy, redis_url: str, query: str = "") -> str:
    db = urlsplit(redis_url).path.lstrip("/") or "15"
    return f"rediss://127.0.0.1:{proxy.port}/{db}" + (f"?{query}" if query else "")


@pytest.mark.parametrize("auto_pipeline", [True, False], ids=["pipelined", "pooled"])
async def test_rediss_with_the_ca_reaches_real_redis(
    pki: PKI, redis_tls_proxy: TLSProxy, redis_url: str, auto_pipeline: bool
) -> None:
    url = _rediss(redis_tls_proxy, redis_url, f"ssl_ca_certs={quote(str(pki.ca))}")
    key = f"iogate:tls:{auto_pipeline}"
    async with AsyncRedisManager(url, auto_pipeline=auto_pipeline) as redis:
        stored = await redis.execute_query(
            key, {"operation": "set", "value": "over tls", "ttl": 30}
        )
        fetched = await redis.execute_query(key, {"operation": "get"})
        await redis.execute_query(key, {"operation": "delete"})
    assert stored.success, stored.error
    assert fetched.data == "over tls"
    assert redis_tls_proxy.forwarded >= 1


@pytest.mark.parametrize("auto_pipeline", [True, False], ids=["pipelined", "pooled"])
@pytest.mark.parametrize("ca", ["system", "other_ca"])
async def test_rediss_untrusted_certificate_is_a_connection_error(
    pki: PKI,
    redis_tls_proxy: TLSProxy,
    redis_url: str,
    auto_pipeline: bool,
    ca: str,
) -> None:
    query = "" if ca == "system" else f"ssl_ca_certs={quote(str(pki.other_ca))}"
    url = _rediss(redis_tls_proxy, redis_url, query)
    redis = AsyncRedisManager(url, auto_pipeline=auto_pipeline, connect_timeout=30)
    try:
        result = await redis.execute_query("iogate:tls:x", {"operation": "get"})
    finally:
        await redis.close()
    assert not result.success
    # connection_error, not timeout: the handshake is refused, nothing waits.
    assert result.error_type == "connection_error"
    assert result.error is not None
    assert "certificate verify failed" in result.error
    assert redis_tls_proxy.forwarded == 0


async def test_rediss_cert_reqs_none_skips_verification(
    redis_tls_proxy: TLSProxy, redis_url: str
) -> None:
    url = _rediss(redis_tls_proxy, redis_url, "ssl_cert_reqs=none")
    async with AsyncRedisManager(url) as redis:
        result = await redis.execute_query("iogate:tls:none", {"operation": "exists"})
    assert result.success, result.error
    assert redis_tls_proxy.forwarded == 1


def test_rediss_missing_ca_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "absent-ca.pem"
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        AsyncRedisManager(f"rediss://127.0.0.1:1/0?ssl_ca_certs={quote(str(missing))}")


def test_tls_parameters_on_a_plain_redis_url_are_refused(pki: PKI) -> None:
    with pytest.raises(ConfigError, match="rediss://"):
        AsyncRedisManager(f"redis://127.0.0.1:1/0?ssl_ca_certs={quote(str(pki.ca))}")
    with pytest.raises(ConfigError, match="ssl_cert_reqs"):
        AsyncRedisManager("rediss://127.0.0.1:1/0?ssl_cert_reqs=sometimes")


# -- PostgreSQL sslmode ----------------------------------------------------------------


@dataclass(frozen=True)
class TLSPostgres:
    url: str  # without sslmode
    ca: Path | None  # the CA that signed the server certificate, when known


def _with_query(url: str, **params: str) -> str:
    query = "&".join(f"{key}={quote(value)}" for key, value in params.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


async def _server_has_ssl(url: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        return bool(await conn.fetchval("SHOW ssl") == "on")
    finally:
        await conn.close()


def _start_tls_postgres(pki: PKI) -> tuple[str, Path, list[str]] | None:
    """A throwaway cluster with ssl = on and the test server certificate."""
    bindirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    bindir = next((d for d in reversed(bindirs) if (d / "initdb").exists()), None)
    if bindir is None and shutil.which("initdb"):
        bindir = Path(shutil.which("initdb") or "").parent
    if bindir is None:
        return None
    root = Path(tempfile.mkdtemp(prefix="iogate-pg-tls-"))
    datadir = root / "data"
    run_as: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(root, "postgres", "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    pg_ctl = [*run_as, str(bindir / "pg_ctl"), "-D", str(datadir)]
    options = (
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 "
        "-c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key"
    )
    try:
        subprocess.run(
            [*run_as, str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "-A", "trust"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for source, name in ((pki.server_cert, "server.crt"), (pki.server_key, "server.key")):
            target = datadir / name
            shutil.copyfile(source, target)
            target.chmod(0o600)
            if run_as:
                shutil.chown(target, "postgres", "postgres")
        # -l: without a log file the server would hold our stdout pipe open.
        start = [*pg_ctl, "-l", str(root / "server.log"), "-o", options, "-w", "start"]
        subprocess.run(start, check=True, capture_output=True, timeout=60)
    except BaseException:
        if (datadir / "postmaster.pid").exists():
            subprocess.run([*pg_ctl, "stop", "-m", "immediate"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
        raise
    return f"postgresql://postgres@127.0.0.1:{port}/postgres", root, pg_ctl


@pytest.fixture(scope="module")
def tls_postgres(pki: PKI, postgres_url: str) -> Iterator[TLSPostgres]:
    """The configured server when it has ``ssl = on``, else a throwaway TLS cluster."""
    if asyncio.run(_server_has_ssl(postgres_url)):
        yield TLSPostgres(url=postgres_url, ca=None)
        return
    try:
        started = _start_tls_postgres(pki)
    except (OSError, subprocess.SubprocessError) as exc:
        unavailable(f"PostgreSQL at {postgres_url} has ssl = off and a TLS one failed: {exc}")
        return
    if started is None:
        unavailable(f"PostgreSQL at {postgres_url} has ssl = off and no binaries to start one")
        return
    url, root, pg_ctl = started
    try:
        yield TLSPostgres(url=url, ca=pki.ca)
    finally:
        subprocess.run([*pg_ctl, "stop", "-m", "fast"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


async def _ssl_of_own_backend(manager: AsyncDatabaseManager) -> object:
    result = await manager.execute_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    assert result.success, result.error
    return result.data[0]["ssl"]


async def test_postgres_sslmode_require_encrypts_the_connection(
    tls_postgres: TLSPostgres,
) -> None:
    async with AsyncPostgreSQLManager(
        _with_query(tls_postgres.url, sslmode="require"), max_connections=2
    ) as manager:
        assert await _ssl_of_own_backend(manager) is True
    async with AsyncPostgreSQLManager(
        _with_query(tls_postgres.url, sslmode="disable"), max_connections=2
    ) as manager:
        # The same query can tell the difference: this connection is plain.
        assert await _ssl_of_own_backend(manager) is False


async def test_postgres_verify_full_with_the_right_ca_succeeds(
    tls_postgres: TLSPostgres,
) -> None:
    if tls_postgres.ca is None:
        pytest.skip("the configured server has ssl = on, but the CA that signed it is unknown")
    url = _with_query(tls_postgres.url, sslmode="verify-full", sslrootcert=str(tls_postgres.ca))
    async with AsyncPostgreSQLManager(url, max_connections=2) as manager:
        assert await _ssl_of_own_backend(manager) is True


async def test_postgres_verify_full_with_a_wrong_ca_is_a_connection_error(
    pki: PKI, tls_postgres: TLSPostgres
) -> None:
    url = _with_query(tls_postgres.url, sslmode="verify-full", sslrootcert=str(pki.other_ca))
    manager = AsyncPostgreSQLManager(url, max_connections=2)
    try:
        result = await manager.execute_query("SELECT 1")
    finally:
        await manager.close()
    assert not result.success
    assert result.error_type == "connection_error"
    assert result.error is not None
    assert "certificate verify failed" in result.error
