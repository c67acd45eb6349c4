"""toolchain: train -> compress -> serve for BERT-family encoders adapted to a domain."""
__version__ = "0.1.0"
