"""One module per PEFT method; each builds the adapter placed in an ``AdaptedLayer``."""
