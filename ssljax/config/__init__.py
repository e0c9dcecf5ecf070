"""Config machinery shared by every method: the defaults, the blocks configs/ builds from, and the
checks that refuse a bad value before anything compiles."""
