"""The error response's headers (engine/server/errors.py, issue 13 item 6; the server group's random mutation
sample): a retryable error carries ONE Retry-After, the one computed from its retry_after (whole seconds, rounded
up), even when the error already carries a `Retry-After` of its own; the request id likewise replaces an
`X-Request-Id` the error carries. Two headers of one name would leave the client to pick one. (Only a header
spelled as the server spells it is replaced; no error the server raises carries either header.)"""

from __future__ import annotations

from tripwire.engine.server.errors import ApiError, error_response


def _values(response, name: bytes) -> list[bytes]:
    return [v for k, v in response.raw_headers if k.lower() == name]


def test_the_computed_retry_after_and_request_id_replace_headers_of_the_same_name():
    err = ApiError(503, "engine_stopped", "stopping", retry_after=2.5,
                   headers={"Retry-After": "120", "X-Request-Id": "stale", "X-A": "b"})
    r = error_response(err, request_id="req-1")
    assert _values(r, b"retry-after") == [b"3"]
    assert _values(r, b"x-request-id") == [b"req-1"]
    assert _values(r, b"x-a") == [b"b"]


def test_an_error_that_is_not_retryable_keeps_the_headers_it_carries():
    r = error_response(ApiError(405, "method_not_allowed", "no", headers={"Allow": "GET"}))
    assert _values(r, b"allow") == [b"GET"] and _values(r, b"retry-after") == []
