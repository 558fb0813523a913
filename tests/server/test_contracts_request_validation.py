"""Request validation's field naming where a field is missing (engine/server/schemas.py, issue 13 item 6): a missing
field counts among the invalid ones (named first when it comes first, counted in "and N more" otherwise), also
inside the branch of a union that matches what the client sent (a list of content parts)."""

from __future__ import annotations

import collections
import itertools

import pytest
from pydantic import ValidationError

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


# -- every invalid payload names one field, by exactly one error ---------------------------------------------------
SCALARS = [None, True, False, 0, 1, -1, 2, 3, 0.0, 0.5, 2.5, -0.5, 1e300, "", "x", "user", "text", "\ud800", "a\ud800b"]
LISTS = [[], [None], [1], [""], ["x"], ["x", "y"], ["\ud800"], [[]], [{}], ["x", 1], [1, "x"]]
OBJECTS = [{}, {"a": 1}, {"include_usage": True}, {"include_usage": "yes"}, {"type": "text"},
           {"type": "text", "text": "x"}]
VALUES = SCALARS + LISTS + OBJECTS  # every JSON type, valid and invalid for each field
PARTS = ([{"type": t, "text": x} for t in ["text", "image", 1, None] for x in ["x", 1, None, "\ud800", ["x"]]]
         + [{"text": "x"}, {"type": "text"}, {}, "x", 1, None, []])
CONTENTS = VALUES + [[p] for p in PARTS] + [[p, q] for p in PARTS[:8] for q in PARTS[:8]]
MESSAGES = ([{"role": r, "content": c} for r in ["user", "tool", 1, None] for c in CONTENTS]
            + [{"content": "x"}, {"role": "user"}, {}, "x", 1, None, []])
COMMON_FIELDS = ["model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop", "user", "seed",
                 "not-a-field"]


def request_grid():
    """(model, payload): every field of both request models given every value of VALUES, with and without the
    required field; pairs of fields; nested messages, content shapes and parts; prompts and one-item prompt lists."""
    for model, base, required, own in [
        (schemas.ChatCompletionRequest, {"messages": [{"role": "user", "content": "hi"}]}, "messages",
         ["max_completion_tokens"]),
        (schemas.CompletionRequest, {"prompt": "hi"}, "prompt", ["echo"]),
    ]:
        fields = COMMON_FIELDS + own + [required]
        for f in fields:
            for v in VALUES:
                yield model, {**base, f: v}
                yield model, {f: v}
        for f, g in itertools.combinations(fields, 2):
            for v in VALUES[::3]:
                for w in VALUES[1::4]:
                    yield model, {**base, f: v, g: w}
    for m in MESSAGES:
        for messages in ([m], [{"role": "user", "content": "ok"}, m], [m, m]):
            yield schemas.ChatCompletionRequest, {"messages": messages}
    for v in VALUES + [[x] for x in VALUES]:
        yield schemas.CompletionRequest, {"prompt": v}


def test_every_invalid_request_names_its_first_field_by_exactly_one_error():
    """What validate_request relies on (it reports the first location's only error, with no fallback for an empty
    error list and no chooser between union branches): pydantic reports at least one error for an invalid payload of
    either request model, and once the union branches not matching the JSON type sent are dropped, each location
    holds exactly one error. Checked over the whole grid (about 19,500 invalid payloads), each answered as a 400."""
    invalid = 0
    for model, payload in request_grid():
        try:
            model.model_validate(payload)
            continue
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
        invalid += 1
        assert errors, payload
        kept = [e for e in errors if schemas._branch_matches(payload, e["loc"])] or errors
        per_location = collections.Counter(schemas._loc(e["loc"]) for e in kept)
        assert set(per_location.values()) == {1}, (payload, kept)
        with pytest.raises(ApiError) as ei:
            schemas.validate_request(model, payload)
        first = next(iter(per_location))
        assert (ei.value.status, ei.value.code, ei.value.param) == (400, "invalid_request", first), payload
    assert invalid > 19_000
