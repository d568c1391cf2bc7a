"""Data lake and MLOps platform for Rakuten France product-type classification."""

__version__ = "0.1.0"
