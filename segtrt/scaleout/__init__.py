"""Scale-out on Ray: the batch job's cases on long-lived actors across GPUs and machines (``--ray``).

Needs the optional extra ``segtrt[ray]``; nothing here is imported on the one-machine path
(segtrt.batch imports this package only when ``--ray`` is given).
"""

from segtrt.scaleout.workers import RayWorkers

__all__ = ["RayWorkers"]
