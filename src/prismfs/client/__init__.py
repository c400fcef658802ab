"""Cluster client library: finding the cluster, and (later) leader routing and file I/O."""
