"""Engine error contracts: code, HTTP status, retryability and the exact `to_dict()` body.

The server maps engine errors by `code`/`http_status` (engine/server/errors.py) and clients branch on
`code`/`retryable`/`retry_after_s`, so these values are part of the interface, not implementation details.
"""

from __future__ import annotations

import pytest

from tripwire.engine import (ConcurrentMLXEntry, ContextLengthExceeded, EngineBusy, EngineError, EngineStopped,
                    InvalidRequest, ModelLoadError)


def test_engine_busy_to_dict_carries_retry_hint_and_holder():
    holder = {"request_id": "r1", "elapsed_s": 0.5, "completion_tokens": 3, "max_tokens": 10}
    exc = EngineBusy("busy now", retry_after_s=0.25, holder=holder)
    assert str(exc) == "busy now" and exc.message == "busy now"
    assert exc.retry_after_s == 0.25 and exc.holder is holder
    assert exc.details == {"retry_after_s": 0.25, "holder": holder}
    assert exc.to_dict() == {"code": "text_generation_busy", "message": "busy now", "http_status": 503,
                             "retryable": True, "retry_after_s": 0.25, "holder": holder}


def test_engine_busy_without_holder_still_reports_the_key():
    assert EngineBusy("b", retry_after_s=0.0, holder=None).to_dict()["holder"] is None


def test_engine_stopped_defaults_to_a_one_second_retry_and_is_retryable():
    exc = EngineStopped("engine is stopping")
    assert exc.retry_after_s == 1.0
    assert exc.to_dict() == {"code": "engine_stopped", "message": "engine is stopping", "http_status": 503,
                             "retryable": True, "retry_after_s": 1.0}
    assert EngineStopped("x", retry_after_s=3.5).to_dict()["retry_after_s"] == 3.5
    assert EngineStopped("x", retry_after_s=3.5).retry_after_s == 3.5


def test_invalid_request_is_a_non_retryable_400_value_error_naming_the_field():
    exc = InvalidRequest("bad temperature", field="temperature", got=-1)
    assert isinstance(exc, ValueError) and isinstance(exc, EngineError)
    assert exc.field == "temperature"
    assert exc.to_dict() == {"code": "invalid_request", "message": "bad temperature", "http_status": 400,
                             "retryable": False, "field": "temperature", "got": -1}
    plain = InvalidRequest("no field")
    assert plain.field is None and plain.to_dict()["field"] is None


@pytest.mark.parametrize("cls, code", [(ContextLengthExceeded, "context_length_exceeded"),
                                       (ModelLoadError, "model_not_found")])
def test_invalid_request_subclasses_keep_400_and_have_their_own_code(cls, code):
    exc = cls("too long", field="messages", limit=4096)
    assert isinstance(exc, InvalidRequest) and isinstance(exc, ValueError)
    assert exc.to_dict() == {"code": code, "message": "too long", "http_status": 400, "retryable": False,
                             "field": "messages", "limit": 4096}


def test_base_engine_error_is_a_non_retryable_500_with_free_form_details():
    exc = EngineError("boom", step=3)
    assert exc.details == {"step": 3}
    assert exc.to_dict() == {"code": "engine_error", "message": "boom", "http_status": 500, "retryable": False,
                             "step": 3}
    assert EngineError("bare").to_dict() == {"code": "engine_error", "message": "bare", "http_status": 500,
                                             "retryable": False}


def test_concurrent_mlx_entry_is_a_runtime_error_not_an_engine_error():
    # It is a programming error (MLX off the worker), never mapped to a client-facing code.
    assert issubclass(ConcurrentMLXEntry, RuntimeError) and not issubclass(ConcurrentMLXEntry, EngineError)
