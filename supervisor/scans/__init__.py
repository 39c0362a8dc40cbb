"""Scans that outlive the call: the store, its records, and the views a model reads."""
