"""Keys and module paths, scoped hooks, the model adapter and targets."""
