"""PASTA-LANG: asynchronous `<scope>/<async>/<promise/>` markup, its training layout and decoding rules."""
