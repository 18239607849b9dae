"""The executor: runs approved actions through their tools, once in effect."""
