"""Data: download/generate the official layout (data/raw) and prepare training arrays."""
