"""The application: composes the service (settings, store, engine, HTTP apps) and holds the command line."""
