"""Which per-call header values an API manager masks in what upstreams echo."""

from __future__ import annotations

from iogate.backends.http.headers import request_secrets as _request_secrets


def test_credential_headers_are_masked_but_not_the_idempotency_key() -> None:
    # A job sends a new Idempotency-Key with every call: it is no credential,
    # and treating it as one compiled a new mask per call (80 calls/s).
    secrets = _request_secrets(
        {"Idempotency-Key": "iogate-job-1", "X-Api-Key": "s3cret", "Accept": "x"}
    )
    assert secrets == ("s3cret",)
    assert _request_secrets({"idempotency-key": "k"}) == ()
    assert _request_secrets({"Authorization": "Bearer t0ken"}) == ("Bearer t0ken", "t0ken")
