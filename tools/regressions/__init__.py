"""Proofs that the catalogue's detectors fire: `prove.py` applies a shape (`tripwire.catalogue`) to a copy of the
project and runs the shape's rules, tests and fuzz targets there; `pytest_verify.py` refuses a proof whose
`engine` is not the copy's."""
