"""The leader's services, above the node's consensus: failure detection and
repair, rebalance and drains, scrub, garbage collection of shards and
orphans, and the admin service that reports on them and starts them. They
run on every node and act only while it leads."""
