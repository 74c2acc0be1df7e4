"""Example data that ships inside the reqcheck package (`reqcheck demo` reads it from here when installed)."""
