"""wna16-conformance: the conformance suite every wna16 backend runs.

``pytest --pyargs wna16_conformance --wna16-backend=NAME`` runs the enumerated matrix (bits x group x sym/asym x
activation dtype x act order) against a backend, measuring every output against :mod:`wna16.tolerance`. The pytest
plugin (:mod:`wna16_conformance.plugin`) is registered through the ``pytest11`` entry point; the checks themselves
(:mod:`wna16_conformance.checks`) and the case data (:mod:`wna16_conformance.data`) work without pytest.
"""

from importlib import metadata

__version__ = metadata.version("wna16-conformance")
