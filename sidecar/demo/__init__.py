"""Demo model server and the `demo` command."""
