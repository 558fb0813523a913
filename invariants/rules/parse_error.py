from tripwire.invariants.core import Rule


class ParseError(Rule):
    name = "parse-error"
    code = "TW001"
    severity = "error"
    meta = True
    always_applicable = True
    rationale = (
        "A file the checker cannot decode or parse (syntax error, bad source encoding, NUL bytes) cannot be "
        "proven free of any bug shape: every invariant is silently unchecked there. The checker never imports "
        "or executes code, so it reports the file with a location instead of crashing or skipping it quietly. "
        "Files no enabled rule could match (byte prefilter) are not parsed unless `parse-all = true`."
    )
    valid = ["x = 1\n"]
    invalid = [
        "def f(:\n    pass\n",
        "x = 'a\x00b'\n",
        "# -*- coding: not-a-codec -*-\nx = 1\n",
    ]
    sample_options = {}
