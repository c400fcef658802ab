"""Cluster client library: finding the cluster, leader routing, chunk and file I/O, paths."""
