"""Reading sources lazily and writing sharded checkpoints."""
