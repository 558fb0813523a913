"""Package layout: the repository's top-level folders are installed beneath the one import name `tripwire`.

The checkout keeps `engine/`, `invariants/`, `fuzz/`, `tools/` at its root; an installed wheel holds
`tripwire/engine/`, `tripwire/invariants/`, ... so `pip install tripwire` never puts a package named `engine`,
`fuzz` or `tools` on a user's `sys.path`. Everything else (metadata, extras, entry points) is in pyproject.toml.
"""

from setuptools import find_packages, setup

PARTS = ("engine", "invariants", "fuzz", "tools", "sanitizer")

# tripwire/ itself holds what sits below all four parts (the bug-shape catalogue).
packages = ["tripwire"] + [f"tripwire.{sub}" for sub in find_packages("tripwire")]
package_dir = {"tripwire": "tripwire"}
for part in PARTS:
    package_dir[f"tripwire.{part}"] = part
    packages += [f"tripwire.{part}"] + [f"tripwire.{part}.{sub}" for sub in find_packages(part)]

setup(packages=packages, package_dir=package_dir)
