"""Version of pixtral_operator (operator/ has no __init__.py so it never shadows the stdlib module `operator`)."""

__version__ = "0.1.0"
