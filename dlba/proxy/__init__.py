"""The proxy's Twisted glue: client and back-end connections, exchanges, the service."""
