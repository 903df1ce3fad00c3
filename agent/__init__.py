"""EdgeFleet agent: the light side that runs on every edge device.

Importing this package must stay cheap: no torch, openvino, tensorflow, nncf, flask,
sqlmodel, fleet or compiler at import time.
"""

__version__ = "0.1.0"
