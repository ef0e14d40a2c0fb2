"""Subcommands of the ``prefrl`` CLI (see ``prefrl.cli``)."""
