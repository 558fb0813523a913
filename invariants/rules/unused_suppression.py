from tripwire.invariants.core import Rule


class UnusedSuppression(Rule):
    name = "unused-suppression"
    code = "TW002"
    severity = "warning"
    meta = True
    always_applicable = True
    rationale = (
        "A `# tripwire: ignore[rule] -- reason` comment that no longer suppresses anything is stale: it would "
        "silently hide the next real regression of that shape on the line (the seed's admission tripwires "
        "only work while they can still fire). Remove it."
    )
    valid = [
        "import asyncio\n\nasync def f(aw):\n"
        "    # tripwire: ignore[long-wait-for] -- startup may legitimately take a minute\n"
        "    await asyncio.wait_for(aw, timeout=60)\n",
    ]
    invalid = [
        "import asyncio\n\nasync def f(aw):\n"
        "    await asyncio.wait_for(aw, timeout=1)  # tripwire: ignore[long-wait-for] -- stale"
        "  # warning: unused suppression: no long-wait-for finding on this line\n",
    ]
