"""Models: the registry of embedded models and the generation backends."""
