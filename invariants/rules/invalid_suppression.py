from tripwire.invariants.core import Rule


class InvalidSuppression(Rule):
    name = "invalid-suppression"
    code = "TW003"
    severity = "error"
    meta = True
    always_applicable = True
    rationale = (
        "Suppressions must name the rule and give a reason (`# tripwire: ignore[rule] -- reason`), so a "
        "reviewer can judge whether the exception still holds. A suppression without a reason, or naming an "
        "unknown rule, does not suppress anything and is reported."
    )
    valid = [
        "import asyncio\n\nasync def f(aw):\n"
        "    await asyncio.wait_for(aw, timeout=60)  # tripwire: ignore[long-wait-for] -- model load\n",
    ]
    invalid = [
        "import asyncio\n\nasync def f(aw):\n"
        "    await asyncio.wait_for(aw, timeout=60)  # tripwire: ignore[long-wait-for]"
        "  # error: suppression without a reason  # error[long-wait-for]: waits up to 60s\n",
        "x = 1  # tripwire: ignore[no-such-rule] -- typo  # error: suppression names unknown rule 'no-such-rule'\n",
        "x = 1  # tripwire: ignore -- which rule?  # error: suppression must name the rule(s)\n",
    ]
