"""The ``aexec`` command line; the entry point is :func:`aexec.cli.main.main`."""
