"""Data: ingest, Rukopys cleaning, glyph prep, MNIST decoding, synthetic glyphs, merge, split, versioning."""
