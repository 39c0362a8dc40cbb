"""Ray, imported so that it never joins a cluster by itself.

Ray's API calls start or join a cluster when none is connected, whichever address its files name.
labrecon joins only the cluster `[cluster] address` names (`supervisor.cluster`), so every module of
ours takes Ray from here, and Ray reads these settings when first imported.
"""

import os

os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray

__all__ = ["ray"]
