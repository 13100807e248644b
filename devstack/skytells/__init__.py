"""A Skytells simulator: the API Studio uses, signed callbacks, and a CDN serving real PNGs."""
