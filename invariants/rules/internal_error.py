from tripwire.invariants.core import Rule


class InternalError(Rule):
    name = "internal-error"
    code = "TW004"
    severity = "error"
    meta = True
    always_applicable = True
    rationale = (
        "A rule raised while checking a file. The run continues (the checker never crashes on input) but "
        "exits 2, because an invariant was not checked. Please report it with the file that triggered it."
    )
    valid = ["x = 1\n"]
    invalid = []
