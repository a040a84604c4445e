"""Small shared helpers: atomic writes, hashing, logging, seeding, device selection, environment."""
