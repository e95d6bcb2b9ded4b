"""The reference Antenna-like server: a Django app, its web tier and its result workers.

It runs only inside processes the stack starts (``python -m contend.refserver web|worker``); the CLI
never imports it. Its behaviour follows the described Antenna behaviour; where it deviates, see
docs/refserver.md.
"""
