"""Training prompt set: synthetic generation requests, collection, merge with dedup, decontamination."""
