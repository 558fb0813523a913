from tripwire.invariants.core import Rule, Sample


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
        "def f(:  # error: syntax error: invalid syntax\n    pass\n",
        # a NUL byte: the spec form pins the finding without touching the broken line
        Sample("x = 'a\x00b'\n", expect=[(1, "source code string cannot contain null bytes")]),
        "# -*- coding: not-a-codec -*-  # error: cannot decode source: unknown encoding\nx = 1\n",
    ]
    sample_options = {}
