"""The field corpus: measure the static checker's precision on real MLX servers, with defaults.

    python -m tripwire.tools.field fetch    # pip download --no-deps the pinned packages (manifest.toml), unpack sources
    python -m tripwire.tools.field check    # run the checker with defaults from an empty directory, judge every finding

`corpus` downloads and unpacks, `verdicts` reads/validates the checked-in judgements (`verdicts.jsonl`),
`measure` runs the checker and matches its findings against the verdicts, `cli` prints the result.
"""
