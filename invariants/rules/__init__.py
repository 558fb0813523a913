"""One rule per module. See CONTRIBUTING.md, "Adding an invariant rule"."""
