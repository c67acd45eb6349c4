"""CLI handlers of the training-side verbs (train, evaluate, compare, config); light imports only."""
