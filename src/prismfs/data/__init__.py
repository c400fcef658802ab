"""The data plane: chunk codec, layouts, placement, shard stores."""
