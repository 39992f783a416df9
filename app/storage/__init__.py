"""Redis: the keys, the packed lead record, the lead store and the model registry. The only package that
imports a Redis client."""
