"""The store contract suite: one set of cases for every backend."""
