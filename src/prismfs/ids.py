"""Identifier types shared by every layer.

`NewType` keeps a node id from being passed where a cluster id is expected
without costing anything at run time.
"""

from typing import NewType

NodeId = NewType("NodeId", str)
ClusterId = NewType("ClusterId", str)
