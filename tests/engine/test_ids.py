from tripwire.engine.ids import new_request_id


def test_request_ids_are_unique_and_path_safe():
    ids = [new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("req-") and i.replace("-", "").isalnum() for i in ids)
    assert new_request_id("w").startswith("w-")
