"""hopelab: take HOPE (Nested Learning) apart."""
__version__ = "0.1.0"
