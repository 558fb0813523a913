"""Request validation's field naming where a field is missing (engine/server/schemas.py, issue 13 item 6): a missing
field counts among the invalid ones (named first when it comes first, counted in "and N more" otherwise), also
inside the branch of a union that matches what the client sent (a list of content parts)."""

from __future__ import annotations

import pytest

from tripwire.engine.server import schemas
from tripwire.engine.server.errors import ApiError


@pytest.mark.parametrize("model, payload, param, message", [
    (schemas.ChatCompletionRequest, {"temperature": 9}, "temperature",
     "invalid 'temperature': Input should be less than or equal to 2 (and 1 more invalid field)"),
    (schemas.CompletionRequest, {"max_tokens": 0}, "max_tokens",
     "invalid 'max_tokens': Input should be greater than or equal to 1 (and 1 more invalid field)"),
    (schemas.ChatCompletionRequest, {"messages": [{"role": "user", "content": [{"text": "x"}]}]},
     "messages.0.content.0.type", "invalid 'messages.0.content.0.type': field required"),
    (schemas.CompletionRequest, {"prompt": [""]}, "prompt.0",
     "invalid 'prompt.0': String should have at least 1 character"),
], ids=["missing-counted", "missing-prompt-counted", "missing-in-the-list-branch", "list-branch-item"])
def test_a_missing_field_is_reported_like_any_other_invalid_one(model, payload, param, message):
    with pytest.raises(ApiError) as ei:
        schemas.validate_request(model, payload)
    assert (ei.value.status, ei.value.code, ei.value.param, ei.value.message) == \
        (400, "invalid_request", param, message)
